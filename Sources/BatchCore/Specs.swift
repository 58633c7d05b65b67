/// A job as submitted: the `Job` object of `SubmitJob`, in the API's field names (PascalCase on the wire).
///
/// Enumerated fields are kept as the strings the user sent, so that validation can name a bad value and the field
/// it is in; ``JobSpec/validate(knownEnvs:)`` checks them.
public struct JobSpec: Codable, Sendable, Hashable {
    public var jobName: String?
    public var jobDescription: String?
    /// 0–100, higher first; inherited by the job's instances. Default 0.
    public var priority: Int?
    public var tasks: [TaskSpec]
    public var dependences: [Dependence]?
    public var notifications: [Notification]?
    /// `PRE_TASK_SUCCEED` (default), `PRE_TASK_AT_LEAST_PARTLY_SUCCEED` or `PRE_TASK_FINISHED`.
    public var taskExecutionDependOn: String?
    public var stateIfCreateCvmFailed: String?
    public var tags: [Tag]?

    public init(
        jobName: String? = nil, jobDescription: String? = nil, priority: Int? = nil, tasks: [TaskSpec],
        dependences: [Dependence]? = nil, notifications: [Notification]? = nil, taskExecutionDependOn: String? = nil,
        stateIfCreateCvmFailed: String? = nil, tags: [Tag]? = nil
    ) {
        self.jobName = jobName
        self.jobDescription = jobDescription
        self.priority = priority
        self.tasks = tasks
        self.dependences = dependences
        self.notifications = notifications
        self.taskExecutionDependOn = taskExecutionDependOn
        self.stateIfCreateCvmFailed = stateIfCreateCvmFailed
        self.tags = tags
    }
}

/// One step of a job: what to run, where, and how many instances.
public struct TaskSpec: Codable, Sendable, Hashable {
    public var taskName: String
    /// Parallel instances, told apart by `BATCH_TASK_INSTANCE_INDEX`. Default 1.
    public var taskInstanceNum: Int?
    public var application: Application
    /// A named compute environment; exactly one of `EnvId` and `ComputeEnv`.
    public var envId: String?
    /// An anonymous environment made for this task and removed after.
    public var computeEnv: AnonymousComputeEnv?
    public var redirectInfo: RedirectInfo?
    public var redirectLocalInfo: RedirectLocalInfo?
    public var inputMappings: [InputMapping]?
    public var outputMappings: [OutputMapping]?
    public var envVars: [EnvVar]?
    public var authentications: [Authentication]?
    /// `TERMINATE` (default), `INTERRUPT` or `FAST_INTERRUPT`.
    public var failedAction: String?
    /// Retries of a failed instance. Default 0.
    public var maxRetryCount: Int?
    /// Seconds an instance may run. Default 86400.
    public var timeout: Int?
    /// Most instances of this task running at once. Default unlimited.
    public var maxConcurrentNum: Int?
    public var restartComputeNode: Bool?
    public var resourceMaxRetryCount: Int?

    public init(
        taskName: String, taskInstanceNum: Int? = nil, application: Application, envId: String? = nil,
        computeEnv: AnonymousComputeEnv? = nil, envVars: [EnvVar]? = nil, maxRetryCount: Int? = nil,
        timeout: Int? = nil
    ) {
        self.taskName = taskName
        self.taskInstanceNum = taskInstanceNum
        self.application = application
        self.envId = envId
        self.computeEnv = computeEnv
        self.envVars = envVars
        self.maxRetryCount = maxRetryCount
        self.timeout = timeout
    }

    public static let defaultTimeout = 86_400
    public var instanceCount: Int { taskInstanceNum ?? 1 }
}

/// What an instance runs.
public struct Application: Codable, Sendable, Hashable {
    /// `LOCAL` (the command exists on the node) or `PACKAGE` (a `.tar.gz` fetched from `PackagePath`).
    public var deliveryForm: String
    public var command: String?
    public var commands: [TaskCommandLine]?
    public var packagePath: String?
    public var docker: Docker?

    public init(deliveryForm: String = "LOCAL", command: String? = nil, packagePath: String? = nil) {
        self.deliveryForm = deliveryForm
        self.command = command
        self.packagePath = packagePath
    }
}

/// One line of `Commands` (the API's `CommandLine`).
public struct TaskCommandLine: Codable, Sendable, Hashable {
    public var command: String
}

public struct Docker: Codable, Sendable, Hashable {
    public var image: String
    public var user: String?
    public var password: String?
    public var server: String?
    public var maxRetryCount: Int?
    public var delayOnRetry: Int?
    public var dockerRunOption: String?
}

public struct RedirectInfo: Codable, Sendable, Hashable {
    public var stdoutRedirectPath: String?
    public var stderrRedirectPath: String?
    public var stdoutRedirectFileName: String?
    public var stderrRedirectFileName: String?
}

public struct RedirectLocalInfo: Codable, Sendable, Hashable {
    public var stdoutLocalPath: String?
    public var stderrLocalPath: String?
    public var stdoutLocalFileName: String?
    public var stderrLocalFileName: String?
}

public struct InputMapping: Codable, Sendable, Hashable {
    public var sourcePath: String
    public var destinationPath: String
    public var mountOptionParameter: String?
    public var mountType: String?
}

public struct OutputMapping: Codable, Sendable, Hashable {
    public var sourcePath: String
    public var destinationPath: String
    public var outputMappingOption: OutputMappingOption?
}

public struct OutputMappingOption: Codable, Sendable, Hashable {
    public var workspace: String?
}

public struct EnvVar: Codable, Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

public struct Authentication: Codable, Sendable, Hashable {
    public var scene: String
    public var secretId: String
    public var secretKey: String
}

public struct Dependence: Codable, Sendable, Hashable {
    public var startTask: String
    public var endTask: String

    public init(startTask: String, endTask: String) {
        self.startTask = startTask
        self.endTask = endTask
    }
}

public struct Notification: Codable, Sendable, Hashable {
    public var topicName: String
    public var eventConfigs: [EventConfig]
}

public struct EventConfig: Codable, Sendable, Hashable {
    public var eventName: String
    public var eventVars: [EventVar]?
}

public struct EventVar: Codable, Sendable, Hashable {
    public var name: String
    public var value: String
}

public struct Tag: Codable, Sendable, Hashable {
    public var key: String
    public var value: String
}

/// An environment made for one task: `EnvType` and the node spec in `EnvData`.
public struct AnonymousComputeEnv: Codable, Sendable, Hashable {
    public var envType: String?
    public var envData: EnvData?
}

/// The node spec of an environment. Only the fields this service uses are typed; others are accepted and ignored.
public struct EnvData: Codable, Sendable, Hashable {
    public var instanceType: String?
    public var instanceTypes: [String]?
    public var imageId: String?

    public init(instanceType: String? = nil) { self.instanceType = instanceType }
}

/// A named compute environment as `CreateComputeEnv` takes it.
public struct NamedComputeEnv: Codable, Sendable, Hashable {
    public var envName: String
    public var envDescription: String?
    /// `MANAGED` (the default here).
    public var envType: String?
    public var envData: EnvData?
    /// Nodes to keep; at most 2000.
    public var desiredComputeNodeCount: Int
    public var tags: [Tag]?

    public init(envName: String, desiredComputeNodeCount: Int, envType: String? = "MANAGED") {
        self.envName = envName
        self.desiredComputeNodeCount = desiredComputeNodeCount
        self.envType = envType
    }
}
