/// The state machine of one job: its tasks' states, their instances' state counts, and which tasks may run.
///
/// Task states follow from their instances (``StateCounts/rolledUp``) once the task started; before that a task is
/// `SUBMITTED`, then `PENDING` while it waits for predecessors, `RUNNABLE` when released, or `FAILED` when a
/// predecessor ended the way `TaskExecutionDependOn` refuses. The job's state follows from its tasks'
/// (``jobState(of:)``), except that a job once `RUNNING` stays so until it ends.
///
/// Legal task transitions: `SUBMITTED → PENDING → RUNNABLE → STARTING → RUNNING → SUCCEED | FAILED |
/// FAILED_INTERRUPTED`, `SUBMITTED | PENDING → FAILED` (blocked, or terminated), and, on `RetryJobs`, a final
/// task back to `PENDING`. Events return the ``Action``s the scheduler carries out; a snapshot loaded from the
/// database and one kept in memory give the same answers.
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
        /// Create the task's instances and make them runnable.
        case startTask(String)
        /// The task can never run; it ends `FAILED` with this reason and none of its instances run.
        case skipTask(String, reason: String)
        /// A task's state follows from its instances (or it now waits for predecessors).
        case setTaskState(String, ExecutionState)
        /// The job's state changed.
        case setJobState(ExecutionState)
    }

    public private(set) var state: ExecutionState
    public let graph: JobGraph
    public let rule: DependencyRule
    private var taskStates: [ExecutionState]
    private var instanceCounts: [StateCounts]
    private var taskCounts: StateCounts
    public private(set) var readiness: DagReadiness
    /// Task indices in topological order (submission order if there is a cycle, which validation refuses).
    private let order: [Int]

    /// A job as loaded from the database. Final tasks are replayed into the readiness counters in topological
    /// order: O(tasks + edges).
    public init(state: ExecutionState, tasks: [TaskProgress], graph: JobGraph, rule: DependencyRule) {
        self.state = state
        self.graph = graph
        self.rule = rule
        var states = Array(repeating: ExecutionState.submitted, count: graph.tasks.count)
        var counts = Array(repeating: StateCounts(), count: graph.tasks.count)
        for task in tasks {
            guard let index = graph.index[task.name] else { continue }
            states[index] = task.state
            counts[index] = task.instances
        }
        self.taskStates = states
        self.instanceCounts = counts
        self.taskCounts = StateCounts(Dictionary(states.map { ($0, 1) }, uniquingKeysWith: +))
        let order = ((try? graph.topologicalOrder().get()) ?? graph.tasks).map { graph.index[$0]! }
        var readiness = DagReadiness(graph: graph, rule: rule)
        for index in order where states[index].isFinal {
            _ = readiness.finish(index, Self.outcome(states[index], counts[index]))
        }
        self.order = order
        self.readiness = readiness
    }

    /// A new job: every task `SUBMITTED`, no instances.
    public init(graph: JobGraph, rule: DependencyRule) {
        self.init(state: .submitted, tasks: [], graph: graph, rule: rule)
    }

    public var tasks: [String: TaskProgress] {
        Dictionary(
            uniqueKeysWithValues: graph.tasks.indices.map {
                (
                    graph.tasks[$0],
                    TaskProgress(name: graph.tasks[$0], state: taskStates[$0], instances: instanceCounts[$0])
                )
            })
    }

    public func task(_ name: String) -> TaskProgress? {
        graph.index[name].map { TaskProgress(name: name, state: taskStates[$0], instances: instanceCounts[$0]) }
    }

    /// How many tasks are in each state.
    public var taskStateCounts: StateCounts { taskCounts }

    // MARK: Events

    /// Applies everything that follows from the current states: releases ready tasks, blocks those that can never
    /// run, rolls started tasks up from their instances, and sets the job's state. O(tasks); for a job loaded from
    /// the database. Calling it again returns nothing.
    public mutating func advance() -> [Action] {
        guard !state.isFinal else { return [] }
        var actions: [Action] = []
        for index in order {
            let name = graph.tasks[index]
            if taskStates[index] == .submitted || taskStates[index] == .pending {
                switch readiness.status[index] {
                case .ready:
                    setTask(index, .runnable)
                    actions.append(.startTask(name))
                case .blocked(let reason):
                    setTask(index, .failed)
                    actions.append(.skipTask(name, reason: reason))
                case .waiting, .finished:
                    if taskStates[index] == .submitted {
                        setTask(index, .pending)
                        actions.append(.setTaskState(name, .pending))
                    }
                }
            } else if !taskStates[index].isFinal, instanceCounts[index].total > 0 {
                actions += rollUp(index)
            }
        }
        actions += updateJobState()
        return actions
    }

    /// A task's instances now have `counts`: rolls the task up, and when it finishes releases or blocks its
    /// successors. Costs in proportion to the finished task's successors (and those its failure blocks).
    public mutating func instancesChanged(task name: String, counts: StateCounts) -> [Action] {
        guard let index = graph.index[name], !taskStates[index].isFinal else { return [] }
        instanceCounts[index] = counts
        var actions = rollUp(index)
        actions += updateJobState()
        return actions
    }

    /// Ends every task that has not finished: those not started end `FAILED` with `reason`; started ones are
    /// left to their instances, which the caller terminates. Returns the tasks that never started.
    public mutating func terminate(reason: String) -> [Action] {
        var actions: [Action] = []
        for index in graph.tasks.indices where taskStates[index] == .submitted || taskStates[index] == .pending {
            setTask(index, .failed)
            actions.append(.skipTask(graph.tasks[index], reason: reason))
        }
        actions += updateJobState()
        return actions
    }

    /// `RetryJobs`: tasks that did not succeed go back to `PENDING` with their failed instances to be run again;
    /// readiness is recomputed, and tasks whose predecessors all succeeded are started again, in DAG order.
    /// Only a `FAILED` job can be retried; otherwise nothing happens.
    public mutating func retry() -> [Action] {
        guard state == .failed || state == .failedInterrupted else { return [] }
        var actions: [Action] = []
        for index in graph.tasks.indices where taskStates[index].isFinal && taskStates[index] != .succeed {
            setTask(index, .pending)
            instanceCounts[index][.failed] = 0
            instanceCounts[index][.failedInterrupted] = 0
            actions.append(.setTaskState(graph.tasks[index], .pending))
        }
        state = .pending
        actions.append(.setJobState(.pending))
        readiness = DagReadiness(graph: graph, rule: rule)
        for index in order where taskStates[index] == .succeed { _ = readiness.finish(index, .succeeded) }
        return actions + advance()
    }

    // MARK: Internals

    private mutating func setTask(_ index: Int, _ state: ExecutionState) {
        taskCounts[taskStates[index]] -= 1
        taskStates[index] = state
        taskCounts[state] += 1
    }

    private mutating func rollUp(_ index: Int) -> [Action] {
        let rolled = instanceCounts[index].rolledUp
        let current = taskStates[index]
        guard rolled != current, rolled > current || rolled.isFinal else { return [] }
        var actions: [Action] = []
        // Instances that ran and ended between two looks (reports handled in one batch) still ran: the task (and
        // a job not yet running) passes through RUNNING, so that its subscribers hear TASK_RUNNING before its end.
        if rolled.isFinal, current < .running, instanceCounts[index][.succeed] > 0 {
            setTask(index, .running)
            actions.append(.setTaskState(graph.tasks[index], .running))
            actions += updateJobState()
        }
        setTask(index, rolled)
        actions.append(.setTaskState(graph.tasks[index], rolled))
        if rolled.isFinal {
            let change = readiness.finish(index, Self.outcome(rolled, instanceCounts[index]))
            for released in change.released
            where taskStates[released] == .submitted || taskStates[released] == .pending {
                setTask(released, .runnable)
                actions.append(.startTask(graph.tasks[released]))
            }
            for blocked in change.blocked where !taskStates[blocked.task].isFinal {
                setTask(blocked.task, .failed)
                actions.append(.skipTask(graph.tasks[blocked.task], reason: blocked.reason))
            }
        }
        return actions
    }

    private mutating func updateJobState() -> [Action] {
        var next = Self.jobState(taskCounts)
        // A job that runs stays RUNNING until it ends: between one task's end and the next one's start it is not
        // waiting to start again (and its subscribers hear JOB_RUNNING once). RetryJobs starts it over at PENDING.
        if state == .running, !next.isFinal { next = .running }
        guard next != state else { return [] }
        state = next
        return [.setJobState(next)]
    }

    static func outcome(_ state: ExecutionState, _ counts: StateCounts) -> DagReadiness.Outcome {
        if state == .succeed { return .succeeded }
        return counts[.succeed] > 0 ? .partlySucceeded : .failed
    }

    /// A job is final when every task is: `SUCCEED` when all succeeded, else `FAILED_INTERRUPTED` when a task
    /// kept a node for inspection, else `FAILED`. Otherwise it shows the most advanced state of a running task.
    public static func jobState(of taskStates: [ExecutionState]) -> ExecutionState {
        jobState(StateCounts(Dictionary(taskStates.map { ($0, 1) }, uniquingKeysWith: +)))
    }

    static func jobState(_ counts: StateCounts) -> ExecutionState {
        let total = counts.total
        guard total > 0 else { return .submitted }
        if counts.finished == total {
            if counts[.succeed] == total { return .succeed }
            return counts[.failedInterrupted] > 0 ? .failedInterrupted : .failed
        }
        if counts[.running] > 0 { return .running }
        if counts[.starting] > 0 { return .starting }
        if counts[.runnable] > 0 { return .runnable }
        // Tasks wait on predecessors that already finished, or all are still pending.
        return counts.finished > 0 ? .running : (counts[.submitted] == total ? .submitted : .pending)
    }
}
