import BatchCore
import Foundation

// Validates and orders a large job DAG, then computes readiness after every task completion, timing each phase.
// Readiness after one completion visits only that task's successors: the time per completion stays flat as the
// job grows (compare the two sizes).
//
//   swift run -c release dag-bench [--tasks N] [--edges M]

func option(_ name: String, default fallback: Int) -> Int {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count, let value = Int(arguments[index + 1])
    else { return fallback }
    return value
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func measure<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = ContinuousClock.now
    let result = try body()
    return (result, seconds(ContinuousClock.now - start))
}

func run(tasks taskCount: Int, edges edgeCount: Int) throws {
    var random = SeededRandomNumberGenerator(seed: 42)  // every run measures the same graph
    let names = (0..<taskCount).map { "task-\($0)" }
    let order = Array(0..<taskCount).shuffled(using: &random)
    var dependences: [Dependence] = []
    dependences.reserveCapacity(edgeCount)
    for _ in 0..<edgeCount {
        let a = Int.random(in: 0..<taskCount, using: &random)
        var b = Int.random(in: 0..<taskCount, using: &random)
        if a == b { b = (b + 1) % taskCount }
        let (from, to) = order[a] < order[b] ? (a, b) : (b, a)
        dependences.append(Dependence(startTask: names[from], endTask: names[to]))
    }
    let job = JobSpec(
        jobName: "bench",
        tasks: names.map {
            TaskSpec(
                taskName: $0, taskInstanceNum: 1, application: Application(deliveryForm: "LOCAL", command: "true"),
                envId: "env-benchmrk")
        },
        dependences: dependences)

    let (problems, validation) = measure { job.validate(maxTasks: taskCount) }
    guard problems.isEmpty else {
        throw NSError(domain: "bench", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(problems[0])"])
    }
    let (graph, building) = measure { job.graph }
    let (topological, ordering) = try measure { try graph.topologicalOrder().get() }

    // Run the job: start what is ready, finish tasks one at a time in a ready order, each with all instances
    // succeeded, and let JobProgress release successors.
    var progress = JobProgress(graph: graph, rule: .preTaskSucceed)
    var ready: [String] = []
    for action in progress.advance() { if case .startTask(let name) = action { ready.append(name) } }
    var completions = 0
    var released = 0
    var slowest = 0.0
    var mostVisits = (visits: 0, successors: 0)
    let done = StateCounts([.succeed: 1])
    let (_, readiness) = measure {
        while let task = ready.popLast() {
            let start = ContinuousClock.now
            let visitsBefore = progress.readiness.visits
            let actions = progress.instancesChanged(task: task, counts: done)
            slowest = max(slowest, seconds(ContinuousClock.now - start))
            let visited = progress.readiness.visits - visitsBefore
            if visited > mostVisits.visits { mostVisits = (visited, graph.successors(of: task).count) }
            completions += 1
            for action in actions {
                if case .startTask(let name) = action {
                    ready.append(name)
                    released += 1
                }
            }
        }
    }
    precondition(progress.state == .succeed && completions == taskCount, "the job did not finish")
    let uniqueEdges = graph.successorIndices.reduce(0) { $0 + $1.count }
    print(
        String(
            format: """
                %d tasks, %d edges (%d distinct), topological order of %d tasks
                  validate                 %8.1f ms
                  build graph              %8.1f ms
                  topological order        %8.1f ms
                  readiness, %d completions %8.1f ms total, %.2f µs per completion (slowest %.1f µs), %.2f µs per edge
                  successor visits         %d in all = %.2f per completion = edges / tasks; at most %d (a task with %d successors)
                """, taskCount, edgeCount, uniqueEdges, topological.count, validation * 1000, building * 1000,
            ordering * 1000, completions, readiness * 1000, readiness / Double(completions) * 1e6, slowest * 1e6,
            readiness / Double(max(uniqueEdges, 1)) * 1e6, progress.readiness.visits,
            Double(progress.readiness.visits) / Double(completions), mostVisits.visits, mostVisits.successors))
}

let tasks = option("--tasks", default: 10_000)
let edges = option("--edges", default: 50_000)
try run(tasks: tasks, edges: edges)
try run(tasks: tasks * 10, edges: edges * 10)
