import Foundation

// What the Describe actions return, with the API's field names.

/// Counts of instances (or tasks) per state (`TaskInstanceMetrics`, `TaskMetrics`).
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

/// Where a job or environment is (`Placement`); here the installation's zone.
public struct PlacementView: Codable, Sendable, Hashable {
    public var zone: String?
    public init(zone: String?) { self.zone = zone }
}

/// One task in `DescribeJob`'s `TaskSet`.
public struct TaskView: Codable, Sendable, Hashable {
    public var taskName: String
    public var taskState: ExecutionState
    public var createTime: Date
    public var endTime: Date?
    /// Ours: why the task is in its state (blocked by a predecessor, terminated).
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
    public var runningTime: Date?
    public var endTime: Date?
    /// Ours: attempts so far: 1 for the first run, +1 per retry.
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
        self.runningTime = launchTime
        self.endTime = endTime
        self.attempt = attempt
    }
}

/// `DescribeTaskLogs`' entries: the end of each stream (at most 2048 bytes, base64).
public struct TaskInstanceLog: Codable, Sendable, Hashable {
    /// The most of each stream `DescribeTaskLogs` returns: its last 2 KiB.
    public static let tailSize = 2048
    public var taskInstanceIndex: Int
    public var stdoutLog: String?
    public var stderrLog: String?

    public init(taskInstanceIndex: Int, stdoutLog: String?, stderrLog: String?) {
        self.taskInstanceIndex = taskInstanceIndex
        self.stdoutLog = stdoutLog
        self.stderrLog = stderrLog
    }
}

/// What `DescribeJob` returns.
public struct JobView: Codable, Sendable, Hashable {
    public var jobId: JobID
    public var jobName: String?
    public var jobDescription: String?
    public var zone: String?
    public var priority: Int
    public var jobState: ExecutionState
    public var createTime: Date
    public var endTime: Date?
    public var stateReason: String?
    public var taskSet: [TaskView]
    public var dependenceSet: [Dependence]
    public var taskMetrics: StateMetrics
    public var taskInstanceMetrics: StateMetrics
    public var tags: [Tag]
    /// `TERMINATE` while a termination is under way.
    public var nextAction: String?

    public init(
        jobId: JobID, jobName: String?, jobDescription: String?, zone: String?, priority: Int,
        jobState: ExecutionState, createTime: Date, endTime: Date?, stateReason: String?, taskSet: [TaskView],
        dependenceSet: [Dependence], taskMetrics: StateMetrics, taskInstanceMetrics: StateMetrics, tags: [Tag],
        nextAction: String?
    ) {
        self.jobId = jobId
        self.jobName = jobName
        self.jobDescription = jobDescription
        self.zone = zone
        self.priority = priority
        self.jobState = jobState
        self.createTime = createTime
        self.endTime = endTime
        self.stateReason = stateReason
        self.taskSet = taskSet
        self.dependenceSet = dependenceSet
        self.taskMetrics = taskMetrics
        self.taskInstanceMetrics = taskInstanceMetrics
        self.tags = tags
        self.nextAction = nextAction
    }
}

/// One job in `DescribeJobs`' `JobSet`.
public struct JobSummaryView: Codable, Sendable, Hashable {
    public var jobId: JobID
    public var jobName: String?
    public var jobState: ExecutionState
    public var priority: Int
    public var placement: PlacementView
    public var createTime: Date
    public var endTime: Date?
    public var taskMetrics: StateMetrics
    public var tags: [Tag]

    public init(
        jobId: JobID, jobName: String?, jobState: ExecutionState, priority: Int, placement: PlacementView,
        createTime: Date, endTime: Date?, taskMetrics: StateMetrics, tags: [Tag]
    ) {
        self.jobId = jobId
        self.jobName = jobName
        self.jobState = jobState
        self.priority = priority
        self.placement = placement
        self.createTime = createTime
        self.endTime = endTime
        self.taskMetrics = taskMetrics
        self.tags = tags
    }
}

/// One template in `DescribeTaskTemplates`' `TaskTemplateSet`.
public struct TaskTemplateView: Codable, Sendable, Hashable {
    public var taskTemplateId: TaskTemplateID
    public var taskTemplateName: String
    public var taskTemplateDescription: String?
    public var taskTemplateInfo: TaskSpec
    public var createTime: Date
    public var tags: [Tag]

    public init(
        taskTemplateId: TaskTemplateID, taskTemplateName: String, taskTemplateDescription: String?,
        taskTemplateInfo: TaskSpec, createTime: Date, tags: [Tag]
    ) {
        self.taskTemplateId = taskTemplateId
        self.taskTemplateName = taskTemplateName
        self.taskTemplateDescription = taskTemplateDescription
        self.taskTemplateInfo = taskTemplateInfo
        self.createTime = createTime
        self.tags = tags
    }
}

/// Counts of an environment's nodes per state (`ComputeNodeMetrics`).
public struct ComputeNodeMetrics: Codable, Sendable, Hashable {
    public var submittedCount = 0
    public var creatingCount = 0
    public var creationFailedCount = 0
    public var createdCount = 0
    public var runningCount = 0
    public var deletingCount = 0
    public var abnormalCount = 0

    public init(states: [String]) {
        for state in states {
            switch ComputeNodeState(rawValue: state) {
            case .pending, .submitted: submittedCount += 1
            case .creating: creatingCount += 1
            case .creationFailed: creationFailedCount += 1
            case .created: createdCount += 1
            case .running: runningCount += 1
            case .deleting: deletingCount += 1
            case .abnormal: abnormalCount += 1
            case nil: break
            }
        }
    }
}

/// One node (`ComputeNode`).
public struct ComputeNodeView: Codable, Sendable, Hashable {
    public var computeNodeId: NodeID
    public var computeNodeInstanceId: String?
    public var computeNodeState: String
    public var cpu: Int
    public var mem: Int
    public var resourceCreatedTime: Date
    public var taskInstanceNumAvailable: Int
    public var agentVersion: String?
    public var privateIpAddresses: [String]
    public var resourceType: String
    /// `BATCH_CREATED` or `USER_ATTACHED`.
    public var resourceOrigin: String

    public init(
        computeNodeId: NodeID, computeNodeInstanceId: String?, computeNodeState: String, cpu: Int, mem: Int,
        resourceCreatedTime: Date, taskInstanceNumAvailable: Int, privateIpAddresses: [String], resourceOrigin: String
    ) {
        self.computeNodeId = computeNodeId
        self.computeNodeInstanceId = computeNodeInstanceId
        self.computeNodeState = computeNodeState
        self.cpu = cpu
        self.mem = mem
        self.resourceCreatedTime = resourceCreatedTime
        self.taskInstanceNumAvailable = taskInstanceNumAvailable
        self.agentVersion = "batch-executor/1"
        self.privateIpAddresses = privateIpAddresses
        self.resourceType = "CVM"
        self.resourceOrigin = resourceOrigin
    }

}

/// One environment in `DescribeComputeEnvs`, or `DescribeComputeEnv` (which adds its nodes).
public struct ComputeEnvView: Codable, Sendable, Hashable {
    public var envId: EnvID
    public var envName: String
    public var envDescription: String?
    public var placement: PlacementView
    public var createTime: Date
    public var computeNodeMetrics: ComputeNodeMetrics
    public var envType: String
    public var desiredComputeNodeCount: Int
    public var resourceType: String
    /// `DELETING` while the environment is being deleted.
    public var nextAction: String?
    public var attachedComputeNodeCount: Int
    public var tags: [Tag]
    /// Only in `DescribeComputeEnv`.
    public var computeNodeSet: [ComputeNodeView]?

    public init(
        envId: EnvID, envName: String, envDescription: String?, zone: String?, createTime: Date, envType: String,
        desiredComputeNodeCount: Int, nextAction: String?, tags: [Tag], nodes: [ComputeNodeView],
        includeNodes: Bool
    ) {
        self.envId = envId
        self.envName = envName
        self.envDescription = envDescription
        self.placement = PlacementView(zone: zone)
        self.createTime = createTime
        self.computeNodeMetrics = ComputeNodeMetrics(states: nodes.map(\.computeNodeState))
        self.envType = envType
        self.desiredComputeNodeCount = desiredComputeNodeCount
        self.resourceType = "CVM"
        self.nextAction = nextAction
        self.attachedComputeNodeCount = nodes.filter { $0.resourceOrigin == "USER_ATTACHED" }.count
        self.tags = tags
        self.computeNodeSet = includeNodes ? nodes : nil
    }
}

/// One scale event of an environment (`Activity`).
public struct ActivityView: Codable, Sendable, Hashable {
    public var activityId: String
    public var computeNodeId: String?
    /// `create` or `destroy`.
    public var computeNodeActivityType: String
    public var envId: EnvID
    public var cause: String?
    /// `SUBMITTED`, `PROCESSING`, `SUCCEED` or `FAILED`.
    public var activityState: String
    public var stateReason: String?
    public var startTime: Date
    public var endTime: Date?
    public var instanceId: String?

    public init(
        activityId: String, computeNodeId: String?, computeNodeActivityType: String, envId: EnvID, cause: String?,
        activityState: String, stateReason: String?, startTime: Date, endTime: Date?, instanceId: String?
    ) {
        self.activityId = activityId
        self.computeNodeId = computeNodeId
        self.computeNodeActivityType = computeNodeActivityType
        self.envId = envId
        self.cause = cause
        self.activityState = activityState
        self.stateReason = stateReason
        self.startTime = startTime
        self.endTime = endTime
        self.instanceId = instanceId
    }
}

extension TaskSpec {
    /// The task as a Describe action shows it: environment variable values, storage keys and registry passwords
    /// replaced by `******` (only the request that set them ever carried them).
    public var redacted: TaskSpec {
        var task = self
        task.envVars = envVars?.map { EnvVar(name: $0.name, value: Redaction.mask) }
        task.authentications = authentications?.map {
            Authentication(scene: $0.scene, secretId: $0.secretId, secretKey: Redaction.mask)
        }
        if task.application?.docker?.password != nil { task.application?.docker?.password = Redaction.mask }
        return task
    }
}

extension NamedComputeEnv {
    /// The environment as a Describe action shows it, secrets masked.
    public var redacted: NamedComputeEnv {
        var env = self
        env.authentications = authentications?.map {
            Authentication(scene: $0.scene, secretId: $0.secretId, secretKey: Redaction.mask)
        }
        if env.envData?.loginSettings?.password != nil { env.envData?.loginSettings?.password = Redaction.mask }
        return env
    }
}

public enum Redaction {
    public static let mask = "******"
}
