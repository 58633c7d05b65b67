/// The DAG of a job's tasks: edges from `StartTask` to `EndTask` of each `Dependence`.
public struct JobGraph: Sendable, Hashable {
    /// Task names in submission order.
    public let tasks: [String]
    public let predecessors: [String: [String]]
    public let successors: [String: [String]]

    public init(tasks: [String], dependences: [Dependence]) {
        self.tasks = tasks
        var predecessors: [String: [String]] = [:]
        var successors: [String: [String]] = [:]
        for dependence in dependences {
            predecessors[dependence.endTask, default: []].append(dependence.startTask)
            successors[dependence.startTask, default: []].append(dependence.endTask)
        }
        self.predecessors = predecessors
        self.successors = successors
    }

    /// Tasks in an order where every task comes after its predecessors (ties in submission order), or the
    /// tasks of one cycle, in cycle order, when there is none.
    public func topologicalOrder() -> Result<[String], CycleError> {
        var remaining = Dictionary(uniqueKeysWithValues: tasks.map { ($0, Set(predecessors[$0] ?? []).count) })
        var order: [String] = []
        var ready = tasks.filter { remaining[$0] == 0 }
        while !ready.isEmpty {
            let task = ready.removeFirst()
            order.append(task)
            for next in Set(successors[task] ?? []).sorted(by: { index(of: $0) < index(of: $1) }) {
                remaining[next]! -= 1
                if remaining[next] == 0 { ready.append(next) }
            }
        }
        if order.count == tasks.count { return .success(order) }
        return .failure(CycleError(tasks: findCycle(among: Set(tasks).subtracting(order))))
    }

    public struct CycleError: Error, Hashable {
        public var tasks: [String]
    }

    private func index(of task: String) -> Int { tasks.firstIndex(of: task) ?? .max }

    /// Walks predecessors from a task that is on or behind a cycle until a task repeats.
    private func findCycle(among candidates: Set<String>) -> [String] {
        guard var current = tasks.first(where: candidates.contains) else { return [] }
        var path: [String] = []
        var seen: [String: Int] = [:]
        while seen[current] == nil {
            seen[current] = path.count
            path.append(current)
            guard let next = (predecessors[current] ?? []).first(where: candidates.contains) else { return path }
            current = next
        }
        return Array(path[seen[current]!...].reversed())
    }
}
