/// What the scheduler knows of a job at one moment: each task's state and its instances' states.
///
/// ``advance()`` is the pure decision the scheduler carries out after every event: which tasks to start now that
/// their predecessors allow it, which can never run because a predecessor ended the wrong way, and the job's new
/// state. It changes the snapshot as the actions will change the database, so calling it again returns nothing.
public struct JobProgress: Sendable, Hashable {
    public struct TaskProgress: Sendable, Hashable {
        public var name: String
        public var state: ExecutionState
        public var instances: StateCounts

        public init(name: String, state: ExecutionState, instances: StateCounts = StateCounts()) {
            self.name = name
            self.state = state
            self.instances = instances
        }
    }

    public enum Action: Sendable, Hashable {
        /// Create the task's instances and dispatch them.
        case startTask(String)
        /// The task can never run; it ends `FAILED` with this reason and none of its instances run.
        case skipTask(String, reason: String)
        /// A task's state follows from its instances.
        case setTaskState(String, ExecutionState)
        /// The job's state changed.
        case setJobState(ExecutionState)
    }

    public private(set) var state: ExecutionState
    public private(set) var tasks: [String: TaskProgress]
    public let graph: JobGraph
    public let rule: DependencyRule

    public init(state: ExecutionState, tasks: [TaskProgress], graph: JobGraph, rule: DependencyRule) {
        self.state = state
        self.tasks = Dictionary(uniqueKeysWithValues: tasks.map { ($0.name, $0) })
        self.graph = graph
        self.rule = rule
    }

    /// Whether a task may start, must wait, or can never run, given its predecessors.
    public enum Readiness: Sendable, Hashable {
        case ready
        case waiting
        case blocked(reason: String)
    }

    public func readiness(of task: String) -> Readiness {
        var waiting = false
        for predecessor in graph.predecessors[task] ?? [] {
            guard let progress = tasks[predecessor] else { continue }
            guard progress.state.isFinal else {
                waiting = true
                continue
            }
            switch rule {
            case .preTaskSucceed where progress.state != .succeed:
                return .blocked(reason: "predecessor task \(predecessor) ended \(progress.state.rawValue)")
            case .preTaskAtLeastPartlySucceed where progress.instances[.succeed] == 0:
                return .blocked(reason: "no instance of predecessor task \(predecessor) succeeded")
            default:
                continue
            }
        }
        return waiting ? .waiting : .ready
    }

    /// Applies what follows from the current states and returns the actions that carry it out, in order.
    public mutating func advance() -> [Action] {
        guard !state.isFinal else { return [] }
        var actions: [Action] = []
        // Topological order lets a blocked task block its successors in the same pass.
        let order = (try? graph.topologicalOrder().get()) ?? graph.tasks
        for name in order {
            guard var task = tasks[name] else { continue }
            if task.state == .submitted || task.state == .pending {
                switch readiness(of: name) {
                case .ready:
                    task.state = .runnable
                    actions.append(.startTask(name))
                case .blocked(let reason):
                    task.state = .failed
                    actions.append(.skipTask(name, reason: reason))
                case .waiting:
                    if task.state == .submitted {
                        task.state = .pending
                        actions.append(.setTaskState(name, .pending))
                    }
                }
            } else if !task.state.isFinal, task.instances.total > 0 {
                let rolled = task.instances.rolledUp
                if rolled != task.state, rolled > task.state || rolled.isFinal {
                    task.state = rolled
                    actions.append(.setTaskState(name, rolled))
                }
            }
            tasks[name] = task
        }
        let jobState = Self.jobState(of: tasks.values.map(\.state))
        if jobState != state {
            state = jobState
            actions.append(.setJobState(jobState))
        }
        return actions
    }

    /// A job is final when every task is: `SUCCEED` when all succeeded, else `FAILED_INTERRUPTED` when a task
    /// kept a node for inspection, else `FAILED`. Otherwise it shows the most advanced state of a running task.
    public static func jobState(of taskStates: [ExecutionState]) -> ExecutionState {
        guard !taskStates.isEmpty else { return .submitted }
        if taskStates.allSatisfy(\.isFinal) {
            if taskStates.allSatisfy({ $0 == .succeed }) { return .succeed }
            return taskStates.contains(.failedInterrupted) ? .failedInterrupted : .failed
        }
        if taskStates.contains(.running) { return .running }
        if taskStates.contains(.starting) { return .starting }
        if taskStates.contains(.runnable) { return .runnable }
        // Tasks wait on predecessors that already finished, or all are pending.
        return taskStates.contains(where: \.isFinal) ? .running : .pending
    }
}
