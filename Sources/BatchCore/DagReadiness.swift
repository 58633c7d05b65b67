/// Which tasks of a job may start, kept up to date one finished task at a time.
///
/// Each task counts its predecessors that have not yet ended in a way `TaskExecutionDependOn` accepts. When a
/// task finishes, only its successors are visited: a count reaching zero releases the successor; an outcome the
/// rule refuses blocks it, and a blocked task blocks its own successors in turn (it will never run, so it ends the
/// way a failed task does). Cost per finished task: its successors plus the tasks the failure blocks.
public struct DagReadiness: Sendable, Hashable {
    /// How a finished task ended, as far as its successors care.
    public enum Outcome: Sendable, Hashable {
        /// Every instance succeeded.
        case succeeded
        /// Some instances succeeded, some failed.
        case partlySucceeded
        /// No instance succeeded (or the task never ran).
        case failed
    }

    public enum Status: Sendable, Hashable {
        /// Some predecessor has not finished yet.
        case waiting
        /// Every predecessor finished as the rule requires: the task may start (or has started).
        case ready
        /// The task has finished.
        case finished(Outcome)
        /// A predecessor ended the way the rule refuses: the task can never run.
        case blocked(reason: String)
    }

    /// What one finished task changed.
    public struct Change: Sendable, Hashable {
        /// A task that can never run, and why.
        public struct Blocked: Sendable, Hashable {
            public var task: Int
            public var reason: String
        }
        /// Tasks that may start now.
        public var released: [Int] = []
        /// Tasks that can never run, in the order they were blocked.
        public var blocked: [Blocked] = []
    }

    public let graph: JobGraph
    public let rule: DependencyRule
    public private(set) var status: [Status]
    private var unsatisfied: [Int]
    /// Successor visits made so far by ``finish(_:_:)``: the work readiness did, counted rather than timed.
    public private(set) var visits = 0

    /// Every task waiting, except those without predecessors, which are ready.
    public init(graph: JobGraph, rule: DependencyRule) {
        self.graph = graph
        self.rule = rule
        self.unsatisfied = graph.predecessorIndices.map(\.count)
        self.status = unsatisfied.map { $0 == 0 ? .ready : .waiting }
    }

    public func status(of task: String) -> Status? { graph.index[task].map { status[$0] } }

    /// Whether the rule lets a successor run after a predecessor ended this way.
    public func accepts(_ outcome: Outcome) -> Bool {
        switch rule {
        case .preTaskSucceed: outcome == .succeeded
        case .preTaskAtLeastPartlySucceed: outcome != .failed
        case .preTaskFinished: true
        }
    }

    /// Records that `task` finished; returns the tasks released and blocked as a result. A task that already
    /// finished or was blocked is left as it is.
    public mutating func finish(_ task: Int, _ outcome: Outcome) -> Change {
        switch status[task] {
        case .finished, .blocked: return Change()
        case .waiting, .ready: break
        }
        status[task] = .finished(outcome)
        var change = Change()
        if accepts(outcome) {
            for successor in graph.successorIndices[task] {
                visits += 1
                unsatisfied[successor] -= 1
                if unsatisfied[successor] == 0, status[successor] == .waiting {
                    status[successor] = .ready
                    change.released.append(successor)
                }
            }
        } else {
            block(successorsOf: task, because: Self.reason(graph.tasks[task], outcome), into: &change)
        }
        return change
    }

    /// Blocks the successors of `task`, and theirs, depth first with an explicit stack.
    private mutating func block(successorsOf task: Int, because reason: String, into change: inout Change) {
        var stack = [(graph.successorIndices[task], reason)]
        while var (successors, reason) = stack.popLast() {
            while let successor = successors.popLast() {
                visits += 1
                switch status[successor] {
                case .waiting, .ready:
                    status[successor] = .blocked(reason: reason)
                    change.blocked.append(Change.Blocked(task: successor, reason: reason))
                    stack.append((successors, reason))
                    successors = graph.successorIndices[successor]
                    reason = "predecessor task \(graph.tasks[successor]) cannot run"
                case .finished, .blocked:
                    continue
                }
            }
        }
    }

    /// The first predecessor `task` still waits for, if any: for "waiting for task X" reasons.
    public func firstUnfinishedPredecessor(of task: Int) -> Int? {
        graph.predecessorIndices[task].first { predecessor in
            switch status[predecessor] {
            case .waiting, .ready: true
            case .finished, .blocked: false
            }
        }
    }

    static func reason(_ predecessor: String, _ outcome: Outcome) -> String {
        switch outcome {
        case .succeeded: "predecessor task \(predecessor) succeeded"
        case .partlySucceeded: "predecessor task \(predecessor) did not fully succeed"
        case .failed: "predecessor task \(predecessor) failed"
        }
    }
}
