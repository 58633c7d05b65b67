import Foundation

/// Counts of instances (or tasks) per state, as the API shows them (`TaskInstanceMetrics`, `TaskMetrics`).
public struct StateMetrics: Codable, Sendable, Hashable {
    public var submittedCount = 0
    public var pendingCount = 0
    public var runnableCount = 0
    public var startingCount = 0
    public var runningCount = 0
    public var succeedCount = 0
    public var failedInterruptedCount = 0
    public var failedCount = 0

    public init(_ counts: StateCounts = StateCounts()) {
        submittedCount = counts[.submitted]
        pendingCount = counts[.pending]
        runnableCount = counts[.runnable]
        startingCount = counts[.starting]
        runningCount = counts[.running]
        succeedCount = counts[.succeed]
        failedInterruptedCount = counts[.failedInterrupted]
        failedCount = counts[.failed]
    }
}

/// One task in `DescribeJob`'s `TaskSet`.
public struct TaskView: Codable, Sendable, Hashable {
    public var taskName: String
    public var taskState: ExecutionState
    public var createTime: Date
    public var endTime: Date?
    public var stateReason: String?

    public init(taskName: String, taskState: ExecutionState, createTime: Date, endTime: Date?, stateReason: String?) {
        self.taskName = taskName
        self.taskState = taskState
        self.createTime = createTime
        self.endTime = endTime
        self.stateReason = stateReason
    }
}

/// One instance in `DescribeTask`'s `TaskInstanceSet`.
public struct TaskInstanceView: Codable, Sendable, Hashable {
    public var taskInstanceIndex: Int
    public var taskInstanceState: ExecutionState
    public var exitCode: Int?
    public var stateReason: String?
    public var computeNodeInstanceId: String?
    public var createTime: Date
    public var launchTime: Date?
    public var endTime: Date?
    /// Attempts so far (ours): 1 for the first run, +1 per retry.
    public var attempt: Int

    public init(
        taskInstanceIndex: Int, taskInstanceState: ExecutionState, exitCode: Int?, stateReason: String?,
        computeNodeInstanceId: String?, createTime: Date, launchTime: Date?, endTime: Date?, attempt: Int
    ) {
        self.taskInstanceIndex = taskInstanceIndex
        self.taskInstanceState = taskInstanceState
        self.exitCode = exitCode
        self.stateReason = stateReason
        self.computeNodeInstanceId = computeNodeInstanceId
        self.createTime = createTime
        self.launchTime = launchTime
        self.endTime = endTime
        self.attempt = attempt
    }
}

/// What `DescribeJob` returns.
public struct JobView: Codable, Sendable, Hashable {
    public var jobId: JobID
    public var jobName: String?
    public var jobDescription: String?
    public var priority: Int
    public var jobState: ExecutionState
    public var createTime: Date
    public var endTime: Date?
    public var stateReason: String?
    public var taskSet: [TaskView]
    public var dependenceSet: [Dependence]
    public var taskMetrics: StateMetrics
    public var taskInstanceMetrics: StateMetrics

    public init(
        jobId: JobID, jobName: String?, jobDescription: String?, priority: Int, jobState: ExecutionState,
        createTime: Date, endTime: Date?, stateReason: String?, taskSet: [TaskView], dependenceSet: [Dependence],
        taskMetrics: StateMetrics, taskInstanceMetrics: StateMetrics
    ) {
        self.jobId = jobId
        self.jobName = jobName
        self.jobDescription = jobDescription
        self.priority = priority
        self.jobState = jobState
        self.createTime = createTime
        self.endTime = endTime
        self.stateReason = stateReason
        self.taskSet = taskSet
        self.dependenceSet = dependenceSet
        self.taskMetrics = taskMetrics
        self.taskInstanceMetrics = taskInstanceMetrics
    }
}

/// What `DescribeComputeEnv` returns about one environment.
public struct ComputeEnvView: Codable, Sendable, Hashable {
    public var envId: EnvID
    public var envName: String
    public var envDescription: String?
    public var envType: String
    public var desiredComputeNodeCount: Int
    public var createTime: Date
    public var computeNodeSet: [ComputeNodeView]

    public init(
        envId: EnvID, envName: String, envDescription: String?, envType: String, desiredComputeNodeCount: Int,
        createTime: Date, computeNodeSet: [ComputeNodeView]
    ) {
        self.envId = envId
        self.envName = envName
        self.envDescription = envDescription
        self.envType = envType
        self.desiredComputeNodeCount = desiredComputeNodeCount
        self.createTime = createTime
        self.computeNodeSet = computeNodeSet
    }
}

public struct ComputeNodeView: Codable, Sendable, Hashable {
    public var computeNodeId: NodeID
    public var computeNodeState: String
    public var taskInstanceNumAvailable: Int
    public var resourceCreatedTime: Date

    public init(
        computeNodeId: NodeID, computeNodeState: String, taskInstanceNumAvailable: Int, resourceCreatedTime: Date
    ) {
        self.computeNodeId = computeNodeId
        self.computeNodeState = computeNodeState
        self.taskInstanceNumAvailable = taskInstanceNumAvailable
        self.resourceCreatedTime = resourceCreatedTime
    }
}
