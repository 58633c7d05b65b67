/// The DAG of a job's tasks: an edge from `StartTask` to `EndTask` of each `Dependence`.
///
/// Tasks are numbered in submission order; adjacency is kept as arrays of those numbers, so that walking a task's
/// successors costs in proportion to their count. Repeated edges count once.
public struct JobGraph: Sendable, Hashable {
    /// Task names in submission order.
    public let tasks: [String]
    /// Each task's number.
    public let index: [String: Int]
    /// For each task number, the numbers of the tasks that depend on it.
    public let successorIndices: [[Int]]
    /// For each task number, the numbers of the tasks it depends on.
    public let predecessorIndices: [[Int]]

    /// Builds the graph; dependences naming unknown tasks are left out (validation reports them).
    public init(tasks: [String], dependences: [Dependence]) {
        self.tasks = tasks
        var index: [String: Int] = [:]
        index.reserveCapacity(tasks.count)
        for (position, name) in tasks.enumerated() where index[name] == nil { index[name] = position }
        self.index = index
        var successors = Array(repeating: [Int](), count: tasks.count)
        var predecessors = Array(repeating: [Int](), count: tasks.count)
        var seen = Set<Int64>()
        for dependence in dependences {
            guard let from = index[dependence.startTask], let to = index[dependence.endTask] else { continue }
            guard seen.insert(Int64(from) << 32 | Int64(to)).inserted else { continue }
            successors[from].append(to)
            predecessors[to].append(from)
        }
        self.successorIndices = successors
        self.predecessorIndices = predecessors
    }

    public func successors(of task: String) -> [String] {
        index[task].map { successorIndices[$0].map { tasks[$0] } } ?? []
    }

    public func predecessors(of task: String) -> [String] {
        index[task].map { predecessorIndices[$0].map { tasks[$0] } } ?? []
    }

    /// Tasks in an order where every task comes after its predecessors, ties broken by submission order; or the
    /// tasks of one cycle, in cycle order, when there is none. O((tasks + edges) · log tasks).
    public func topologicalOrder() -> Result<[String], CycleError> {
        var remaining = predecessorIndices.map(\.count)
        var ready = MinHeap<Int>()
        for task in tasks.indices where remaining[task] == 0 { ready.push(task) }
        var order: [String] = []
        order.reserveCapacity(tasks.count)
        while let task = ready.pop() {
            order.append(tasks[task])
            for next in successorIndices[task] {
                remaining[next] -= 1
                if remaining[next] == 0 { ready.push(next) }
            }
        }
        if order.count == tasks.count { return .success(order) }
        return .failure(CycleError(tasks: findCycle(among: remaining.indices.filter { remaining[$0] > 0 })))
    }

    public struct CycleError: Error, Hashable {
        /// The tasks on one cycle, each depending on the one before it (and the first on the last).
        public var tasks: [String]
    }

    /// Every task left after Kahn's algorithm has a predecessor left too, so walking predecessors among them must
    /// come back to a task already seen: that loop is a cycle.
    private func findCycle(among candidates: [Int]) -> [String] {
        let isCandidate = Set(candidates)
        guard var current = candidates.first else { return [] }
        var path: [Int] = []
        var position: [Int: Int] = [:]
        while position[current] == nil {
            position[current] = path.count
            path.append(current)
            guard let next = predecessorIndices[current].first(where: isCandidate.contains) else {
                return path.map { tasks[$0] }
            }
            current = next
        }
        return path[position[current]!...].reversed().map { tasks[$0] }
    }
}

/// A binary min-heap.
struct MinHeap<Element: Comparable> {
    private var storage: [Element] = []

    var isEmpty: Bool { storage.isEmpty }

    mutating func push(_ element: Element) {
        storage.append(element)
        var child = storage.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard storage[child] < storage[parent] else { break }
            storage.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Element? {
        guard !storage.isEmpty else { return nil }
        storage.swapAt(0, storage.count - 1)
        let top = storage.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < storage.count, storage[left] < storage[smallest] { smallest = left }
            if right < storage.count, storage[right] < storage[smallest] { smallest = right }
            if smallest == parent { break }
            storage.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
