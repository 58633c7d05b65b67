import Testing

@testable import BatchCore

@Suite("Random DAGs (seeded; a failure names its seed)")
struct JobGraphPropertyTests {
    static let seeds: [UInt64] = Array(1...200)

    @Test("the topological order contains every task once and respects every edge", arguments: seeds)
    func orderRespectsEdges(seed: UInt64) throws {
        var random = SeededRandom(seed: seed)
        let count = Int.random(in: 1...60, using: &random)
        let (names, edges) = RandomDAG.make(
            tasks: count, edges: Int.random(in: 0...(count * 3), using: &random), using: &random)
        let order = try JobGraph(tasks: names, dependences: edges).topologicalOrder().get()
        #expect(order.sorted() == names.sorted(), "seed \(seed)")
        let position = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })
        for edge in edges {
            #expect(position[edge.startTask]! < position[edge.endTask]!, "seed \(seed): \(edge)")
        }
    }

    @Test("a cycle is always found, and what is reported is a real cycle", arguments: seeds)
    func cyclesAreFound(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        let count = Int.random(in: 2...40, using: &random)
        var (names, edges) = RandomDAG.make(
            tasks: count, edges: Int.random(in: 0...(count * 2), using: &random), using: &random)
        // Close a random path into a loop: a chain through k tasks plus the edge back.
        let loop = Array(names.shuffled(using: &random).prefix(Int.random(in: 2...min(count, 6), using: &random)))
        for (from, to) in zip(loop, loop.dropFirst() + [loop[0]]) {
            edges.append(Dependence(startTask: from, endTask: to))
        }
        let graph = JobGraph(tasks: names, dependences: edges)
        guard case .failure(let cycle) = graph.topologicalOrder() else {
            Issue.record("seed \(seed): no cycle found")
            return
        }
        #expect(cycle.tasks.count >= 2, "seed \(seed)")
        #expect(Set(cycle.tasks).count == cycle.tasks.count, "seed \(seed): a task repeats in \(cycle.tasks)")
        let edgeSet = Set(edges.map { "\($0.startTask)>\($0.endTask)" })
        for (from, to) in zip(cycle.tasks, cycle.tasks.dropFirst() + [cycle.tasks[0]]) {
            #expect(
                edgeSet.contains("\(from)>\(to)"), "seed \(seed): \(from) -> \(to) is not an edge of \(cycle.tasks)")
        }
        // Validation names the cycle with the same code.
        let job = JobSpec(tasks: names.map { task($0) }, dependences: edges)
        #expect(job.validate().contains { $0.code == .dependenceUnfeasible }, "seed \(seed)")
    }

    @Test(
        "readiness never releases a task before its predecessors allow it, and releases each exactly once",
        arguments: seeds)
    func readinessIsSound(seed: UInt64) throws {
        var random = SeededRandom(seed: seed)
        let count = Int.random(in: 1...50, using: &random)
        let (names, edges) = RandomDAG.make(
            tasks: count, edges: Int.random(in: 0...(count * 3), using: &random), using: &random)
        let rule = DependencyRule.allCases.randomElement(using: &random)!
        let graph = JobGraph(tasks: names, dependences: edges)
        var readiness = DagReadiness(graph: graph, rule: rule)
        var outcomes: [Int: DagReadiness.Outcome] = [:]
        var released = Set(names.indices.filter { graph.predecessorIndices[$0].isEmpty })
        var blocked = Set<Int>()
        var running = released

        func allowed(_ task: Int) -> Bool {
            graph.predecessorIndices[task].allSatisfy { predecessor in
                guard let outcome = outcomes[predecessor] else { return false }
                return readiness.accepts(outcome)
            }
        }

        while !running.isEmpty {
            let task = running.randomElement(using: &random)!
            running.remove(task)
            let outcome = [DagReadiness.Outcome.succeeded, .partlySucceeded, .failed].randomElement(using: &random)!
            outcomes[task] = outcome
            let change = readiness.finish(task, outcome)
            for next in change.released {
                #expect(allowed(next), "seed \(seed): \(names[next]) released too early")
                #expect(released.insert(next).inserted, "seed \(seed): \(names[next]) released twice")
                running.insert(next)
            }
            for next in change.blocked.map(\.task) {
                #expect(!released.contains(next), "seed \(seed): \(names[next]) blocked after release")
                blocked.insert(next)
            }
        }
        // Every task either ran or was blocked by a predecessor the rule refuses.
        #expect(released.count + blocked.count == count, "seed \(seed)")
        for task in blocked {
            #expect(
                graph.predecessorIndices[task].contains {
                    outcomes[$0].map { !readiness.accepts($0) } ?? blocked.contains($0)
                },
                "seed \(seed): \(names[task]) blocked without cause")
        }
    }

    @Test("a job advanced event by event matches the same job rebuilt from a snapshot", arguments: seeds.prefix(60))
    func incrementalMatchesSnapshot(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        let count = Int.random(in: 1...30, using: &random)
        let (names, edges) = RandomDAG.make(
            tasks: count, edges: Int.random(in: 0...(count * 2), using: &random), using: &random)
        let rule = DependencyRule.allCases.randomElement(using: &random)!
        let graph = JobGraph(tasks: names, dependences: edges)
        var live = JobProgress(graph: graph, rule: rule)
        var started = Set<String>()
        for action in live.advance() { if case .startTask(let name) = action { started.insert(name) } }
        while let name = started.randomElement(using: &random) {
            started.remove(name)
            let succeeded = Int.random(in: 0...2, using: &random)
            let failed = succeeded == 2 ? 0 : Int.random(in: 0...1, using: &random)
            var counts = StateCounts([.succeed: succeeded, .failed: failed])
            if counts.total == 0 { counts[.succeed] = 1 }
            for action in live.instancesChanged(task: name, counts: counts) {
                if case .startTask(let next) = action { started.insert(next) }
            }
            var rebuilt = JobProgress(
                state: live.state, tasks: Array(live.tasks.values), graph: graph, rule: rule)
            #expect(rebuilt.advance().isEmpty, "seed \(seed): a rebuilt snapshot has more to do")
            #expect(rebuilt.tasks == live.tasks, "seed \(seed)")
        }
        #expect(live.state.isFinal, "seed \(seed): job ended \(live.state)")
        #expect(live.tasks.values.allSatisfy { $0.state.isFinal }, "seed \(seed)")
    }
}
