/// A job as submitted: the `Job` object of `SubmitJob`, in the API's field names (PascalCase on the wire).
///
/// Enumerated fields are kept as the strings the user sent, so that validation can name a bad value and the field
/// it is in; ``JobSpec/validate(templates:)`` checks them.
public struct JobSpec: Codable, Sendable, Hashable {
    /// At most 60 characters.
    public var jobName: String?
    /// At most 200 characters.
    public var jobDescription: String?
    /// 0–100, higher first; inherited by the job's instances. Default 0.
    public var priority: Int?
    /// 1 to 100 tasks, names unique in the job.
    public var tasks: [TaskSpec]
    public var dependences: [Dependence]?
    public var notifications: [JobNotification]?
    /// `CMQ` or `TDMQ_CMQ` on Tencent Cloud; here notifications go to AMQP topics, and the field is accepted as is.
    public var notificationTarget: String?
    /// `PRE_TASK_SUCCEED` (default), `PRE_TASK_AT_LEAST_PARTLY_SUCCEED` or `PRE_TASK_FINISHED`.
    public var taskExecutionDependOn: String?
    /// `FAILED` (default) or `RUNNABLE`: what a task does when its anonymous nodes cannot be created.
    public var stateIfCreateCvmFailed: String?
    /// At most 10.
    public var tags: [Tag]?

    public init(
        jobName: String? = nil, jobDescription: String? = nil, priority: Int? = nil, tasks: [TaskSpec],
        dependences: [Dependence]? = nil, notifications: [JobNotification]? = nil,
        taskExecutionDependOn: String? = nil, stateIfCreateCvmFailed: String? = nil, tags: [Tag]? = nil
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

    public static let defaultPriority = 0
}

/// One step of a job: what to run, where, and how many instances.
public struct TaskSpec: Codable, Sendable, Hashable {
    /// Unique in the job; at most 60 letters, digits, `-` and `_`.
    public var taskName: String
    /// Parallel instances, told apart by `BATCH_TASK_INSTANCE_INDEX`. Default 1, at most 10,000.
    public var taskInstanceNum: Int?
    /// What to run. Required, unless it comes from the task template.
    public var application: Application?
    /// A named compute environment; exactly one of `EnvId` and `ComputeEnv`.
    public var envId: String?
    /// An anonymous environment made for this task and removed after.
    public var computeEnv: AnonymousComputeEnv?
    public var redirectInfo: RedirectInfo?
    public var redirectLocalInfo: RedirectLocalInfo?
    public var inputMappings: [InputMapping]?
    public var outputMappings: [OutputMapping]?
    public var outputMappingConfigs: [OutputMappingConfig]?
    public var envVars: [EnvVar]?
    public var authentications: [Authentication]?
    /// `TERMINATE` (default), `INTERRUPT` or `FAST_INTERRUPT`.
    public var failedAction: String?
    /// Retries of a failed instance. Default 0, at most 100.
    public var maxRetryCount: Int?
    /// Seconds an instance may run after it starts. Default 86400.
    public var timeout: Int?
    /// Most instances of this task running at once. Default unlimited.
    public var maxConcurrentNum: Int?
    /// Restart the node after the task (named environments).
    public var restartComputeNode: Bool?
    /// Retries of creating the task's nodes. Default 0, at most 100.
    public var resourceMaxRetryCount: Int?
    /// Ours: a task template this task starts from; the task's own fields override the template's.
    public var taskTemplateId: String?
    /// Ours: what to do with a failed instance by its exit code, tried in order before `MaxRetryCount` applies
    /// (as AWS Batch's `evaluateOnExit`).
    public var retryRules: [RetryRule]?

    public init(
        taskName: String, taskInstanceNum: Int? = nil, application: Application? = nil, envId: String? = nil,
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
    /// `LOCAL` (the command exists on the node, or in the image) or `PACKAGE` (a `.tar.gz` fetched from
    /// `PackagePath` and unpacked into the work dir).
    public var deliveryForm: String
    /// The command line (loosely coupled instances); exactly one of `Command` and `Commands`.
    public var command: String?
    /// Command lines run one after another (tightly coupled).
    public var commands: [TaskCommandLine]?
    /// Where the package is, for `PACKAGE`: `file://…` or `s3://bucket/key`.
    public var packagePath: String?
    /// Run the command in this image through the node's container runtime.
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

    public init(command: String) { self.command = command }
}

/// A container image to run the application in.
public struct Docker: Codable, Sendable, Hashable {
    public var image: String
    /// Registry credentials; sealed with the task.
    public var user: String?
    public var password: String?
    public var server: String?
    /// Pull retries. Default 0.
    public var maxRetryCount: Int?
    /// Seconds between pull retries.
    public var delayOnRetry: Int?
    public var dockerRunOption: String?

    public init(image: String) { self.image = image }
}

/// Where stdout and stderr go in storage after an instance ends. Paths and names may hold `${BATCH_JOB_ID}`,
/// `${BATCH_TASK_NAME}` and `${BATCH_TASK_INSTANCE_INDEX}`.
public struct RedirectInfo: Codable, Sendable, Hashable {
    public var stdoutRedirectPath: String?
    public var stderrRedirectPath: String?
    public var stdoutRedirectFileName: String?
    public var stderrRedirectFileName: String?

    public init(stdoutRedirectPath: String? = nil, stderrRedirectPath: String? = nil) {
        self.stdoutRedirectPath = stdoutRedirectPath
        self.stderrRedirectPath = stderrRedirectPath
    }
}

/// Where stdout and stderr are written on the node while the instance runs.
public struct RedirectLocalInfo: Codable, Sendable, Hashable {
    public var stdoutLocalPath: String?
    public var stderrLocalPath: String?
    public var stdoutLocalFileName: String?
    public var stderrLocalFileName: String?

    public init() {}
}

/// Remote storage fetched to a local path before the instance runs.
public struct InputMapping: Codable, Sendable, Hashable {
    /// `file:///shared/path` or `s3://bucket/prefix` (`cos://` is read as S3).
    public var sourcePath: String
    /// An absolute path in the instance.
    public var destinationPath: String
    public var mountOptionParameter: String?
    /// `COSFS` or `GooseFS-Lite` on Tencent Cloud; accepted and ignored here (inputs are copied).
    public var mountType: String?

    public init(sourcePath: String, destinationPath: String) {
        self.sourcePath = sourcePath
        self.destinationPath = destinationPath
    }
}

/// A local path uploaded to remote storage after the instance ends.
public struct OutputMapping: Codable, Sendable, Hashable {
    /// An absolute path in the instance.
    public var sourcePath: String
    /// `file:///shared/path` or `s3://bucket/prefix`.
    public var destinationPath: String
    public var outputMappingOption: OutputMappingOption?

    public init(sourcePath: String, destinationPath: String) {
        self.sourcePath = sourcePath
        self.destinationPath = destinationPath
    }
}

public struct OutputMappingOption: Codable, Sendable, Hashable {
    /// `BATCH_WORKSPACE` (default: isolated per job) or `GLOBAL_WORKSPACE`.
    public var workspace: String?
}

/// An environment variable every instance of the task sees. Values are sealed in the database.
public struct EnvVar: Codable, Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// Storage credentials. The key is sealed in the database and never shown again.
public struct Authentication: Codable, Sendable, Hashable {
    /// `COS` on Tencent Cloud; here also `S3`.
    public var scene: String
    public var secretId: String
    public var secretKey: String

    public init(scene: String, secretId: String, secretKey: String) {
        self.scene = scene
        self.secretId = secretId
        self.secretKey = secretKey
    }
}

/// `EndTask` runs after `StartTask`, as `TaskExecutionDependOn` says.
public struct Dependence: Codable, Sendable, Hashable {
    public var startTask: String
    public var endTask: String

    public init(startTask: String, endTask: String) {
        self.startTask = startTask
        self.endTask = endTask
    }
}

/// Which events of a job go to which topic (the API's `Notification`).
public struct JobNotification: Codable, Sendable, Hashable {
    public var topicName: String
    public var eventConfigs: [EventConfig]

    public init(topicName: String, eventConfigs: [EventConfig]) {
        self.topicName = topicName
        self.eventConfigs = eventConfigs
    }
}

public struct EventConfig: Codable, Sendable, Hashable {
    /// One of ``EventName``.
    public var eventName: String
    public var eventVars: [EventVar]?

    public init(eventName: String, eventVars: [EventVar]? = nil) {
        self.eventName = eventName
        self.eventVars = eventVars
    }
}

public struct EventVar: Codable, Sendable, Hashable {
    public var name: String
    public var value: String
}

public struct Tag: Codable, Sendable, Hashable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// An environment made for one task and removed after it.
public struct AnonymousComputeEnv: Codable, Sendable, Hashable {
    /// `MANAGED`.
    public var envType: String?
    public var envData: EnvData?
    public var mountDataDisks: [MountDataDisk]?
    public var agentRunningMode: AgentRunningMode?

    public init(envType: String? = "MANAGED", envData: EnvData? = nil) {
        self.envType = envType
        self.envData = envData
    }
}

/// A named compute environment as `CreateComputeEnv` takes it.
public struct NamedComputeEnv: Codable, Sendable, Hashable {
    /// At most 60 characters.
    public var envName: String
    /// Nodes to keep; 0 to 2000.
    public var desiredComputeNodeCount: Int
    /// At most 200 characters.
    public var envDescription: String?
    /// `MANAGED` (the default and only type supported).
    public var envType: String?
    public var envData: EnvData?
    public var mountDataDisks: [MountDataDisk]?
    /// Storage credentials for every task in the environment; sealed.
    public var authentications: [Authentication]?
    /// Storage mapped into every node.
    public var inputMappings: [InputMapping]?
    public var agentRunningMode: AgentRunningMode?
    public var notifications: [JobNotification]?
    public var notificationTarget: String?
    /// `RECREATE` (default) or `NOTHING`: what to do with a node that stops answering.
    public var actionIfComputeNodeInactive: String?
    /// Retries of creating a node. Default 7, at most 100.
    public var resourceMaxRetryCount: Int?
    /// At most 10.
    public var tags: [Tag]?
    /// Ours: run each instance in a sandbox (default true); false for trusted work where launch cost matters.
    public var sandbox: Bool?
    /// Ours: sandboxed instances may open connections out of the node (default false: no network at all), through a
    /// user-mode network stack that never reaches the node's loopback or private addresses (docs/security.md).
    public var egress: Bool?
    /// Ours: the memory, in MiB, each instance on the environment's nodes may use (default the node's memory divided
    /// by its slots). An instance over it is killed and ends `FAILED` saying so.
    public var instanceMemoryLimit: Int?

    public init(envName: String, desiredComputeNodeCount: Int, envType: String? = "MANAGED") {
        self.envName = envName
        self.desiredComputeNodeCount = desiredComputeNodeCount
        self.envType = envType
    }

    public static let defaultResourceMaxRetryCount = 7
}

/// A saved task that later jobs can name (`CreateTaskTemplate`).
public struct TaskTemplateSpec: Codable, Sendable, Hashable {
    /// At most 60 characters.
    public var taskTemplateName: String
    /// The task; a job's task naming this template overrides any of its fields.
    public var taskTemplateInfo: TaskSpec
    /// At most 200 characters.
    public var taskTemplateDescription: String?
    public var tags: [Tag]?

    public init(taskTemplateName: String, taskTemplateInfo: TaskSpec, taskTemplateDescription: String? = nil) {
        self.taskTemplateName = taskTemplateName
        self.taskTemplateInfo = taskTemplateInfo
        self.taskTemplateDescription = taskTemplateDescription
    }
}

/// Ours: what a failed instance's exit code means (as AWS Batch's `evaluateOnExit`). The first rule whose pattern
/// matches decides; without a match, `MaxRetryCount` applies.
public struct RetryRule: Codable, Sendable, Hashable {
    /// Exit codes this rule matches: `"137"`, `"1-3"`, or `"*"` for any.
    public var onExitCode: String
    /// `RETRY` (retry while attempts remain) or `EXIT` (fail now, whatever `MaxRetryCount` says).
    public var action: String

    public init(onExitCode: String, action: String) {
        self.onExitCode = onExitCode
        self.action = action
    }
}

extension Application {
    /// The shell script an instance runs: `Command`, or the `Commands` lines one after another, stopping at the
    /// first that fails.
    public var script: String {
        if let command, !command.isEmpty { return command }
        return (["set -e"] + (commands ?? []).map(\.command)).joined(separator: "\n")
    }
}
