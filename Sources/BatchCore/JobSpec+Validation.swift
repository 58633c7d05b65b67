/// Bounds the API sets.
public enum Limits {
    public static let nameLength = 60
    public static let descriptionLength = 200
    public static let tasksPerJob = 100
    public static let instancesPerTask = 1...100_000
    public static let priority = 0...100
    public static let maxRetryCount = 0...100
    public static let resourceMaxRetryCount = 0...100
    public static let timeout = 1...(7 * 86_400)
    public static let nodesPerEnv = 0...2000
    public static let tags = 10
    /// MiB an instance may be limited to (`ComputeEnv.InstanceMemoryLimit`, ours).
    public static let instanceMemoryLimit = 16...(4 << 20)
}

/// What `TaskExecutionDependOn` says a task waits for.
public enum DependencyRule: String, Sendable, CaseIterable {
    /// Every predecessor succeeded (the default).
    case preTaskSucceed = "PRE_TASK_SUCCEED"
    /// Every predecessor finished with at least one instance succeeded.
    case preTaskAtLeastPartlySucceed = "PRE_TASK_AT_LEAST_PARTLY_SUCCEED"
    /// Every predecessor finished, however it ended.
    case preTaskFinished = "PRE_TASK_FINISHED"
}

/// What happens when an instance fails for good (no retry left).
public enum FailedAction: String, Sendable, CaseIterable {
    /// The instance ends `FAILED`; its node is freed. The default.
    case terminate = "TERMINATE"
    /// The instance ends `FAILED_INTERRUPTED` and its node is kept for inspection; other instances go on.
    case interrupt = "INTERRUPT"
    /// As `INTERRUPT`, and the task's instances not yet started never start.
    case fastInterrupt = "FAST_INTERRUPT"
}

extension JobSpec {
    public var dependencyRule: DependencyRule {
        taskExecutionDependOn.flatMap(DependencyRule.init(rawValue:)) ?? .preTaskSucceed
    }

    public var graph: JobGraph { JobGraph(tasks: tasks.map(\.taskName), dependences: dependences ?? []) }

    /// The job with each task's `TaskTemplateId` resolved: the template's fields under the task's own. A task
    /// whose template is not in `templates` keeps its reference; ``validate(templates:)`` reports it.
    public func resolvingTemplates(_ templates: [TaskTemplateID: TaskSpec]) -> JobSpec {
        var job = self
        job.tasks = tasks.map { task in
            guard let id = task.taskTemplateId, let template = templates[TaskTemplateID(rawValue: id)] else {
                return task
            }
            return task.overriding(template)
        }
        return job
    }

    /// Every problem of the spec, each naming its field; empty when the job can be accepted.
    ///
    /// `templates` are the caller's task templates; a task naming another one is refused. Validate the job as
    /// submitted (with its template references), not after ``resolvingTemplates(_:)``. `maxTasks` is the most
    /// tasks a job may have (the API's 100 unless configured otherwise). O((tasks + dependences) · log tasks).
    public func validate(templates: [TaskTemplateID: TaskSpec] = [:], maxTasks: Int = Limits.tasksPerJob)
        -> [ValidationProblem]
    {
        var list = ProblemList()
        if let name = jobName {
            list.check(!name.isEmpty, .invalidParameterValue, "Job.JobName", "must not be empty")
            list.length(name, max: Limits.nameLength, "Job.JobName", tooLong: .jobNameTooLong)
        }
        list.length(
            jobDescription, max: Limits.descriptionLength, "Job.JobDescription", tooLong: .jobDescriptionTooLong)
        list.range(priority, Limits.priority, "Job.Priority")
        list.oneOf(taskExecutionDependOn, DependencyRule.allCases.map(\.rawValue), "Job.TaskExecutionDependOn")
        list.oneOf(stateIfCreateCvmFailed, ["FAILED", "RUNNABLE"], "Job.StateIfCreateCvmFailed")
        list.oneOf(notificationTarget, ["CMQ", "TDMQ_CMQ"], "Job.NotificationTarget")
        list.tags(tags, "Job.Tags")
        list.notifications(notifications, "Job.Notifications", allowed: EventName.jobEvents)
        list.check(!tasks.isEmpty, .missingParameter, "Job.Tasks", "a job needs at least one task")
        list.check(tasks.count <= maxTasks, .limitExceededValue, "Job.Tasks", "at most \(maxTasks) tasks")

        var seen: Set<String> = []
        for (index, task) in tasks.enumerated() {
            let field = "Job.Tasks[\(index)]"
            var resolved = task
            if let id = task.taskTemplateId {
                if TaskTemplateID(validating: id) == nil {
                    list.add(.taskTemplateIdMalformed, "\(field).TaskTemplateId", "not a task template id (tmpl-…)")
                } else if let template = templates[TaskTemplateID(rawValue: id)] {
                    resolved = task.overriding(template)
                } else {
                    list.add(.taskTemplateNotFound, "\(field).TaskTemplateId", "no task template \(id)")
                }
            }
            list.append(resolved.validate(field: field, requireEnvironment: true))
            list.check(
                seen.insert(task.taskName).inserted, .taskName, "\(field).TaskName",
                "duplicate task name \"\(task.taskName.prefix(60))\"")
        }

        let names = Set(tasks.map(\.taskName))
        var edges: [Dependence] = []
        for (index, dependence) in (dependences ?? []).enumerated() {
            let field = "Job.Dependences[\(index)]"
            var known = true
            for (key, name) in [("StartTask", dependence.startTask), ("EndTask", dependence.endTask)]
            where !names.contains(name) {
                list.add(.dependenceNotFoundTaskName, "\(field).\(key)", "no task named \"\(name.prefix(60))\"")
                known = false
            }
            if dependence.startTask == dependence.endTask {
                list.add(.dependenceUnfeasible, field, "task \"\(dependence.startTask.prefix(60))\" depends on itself")
            } else if known {
                edges.append(dependence)
            }
        }
        if seen.count == tasks.count,
            case .failure(let cycle) = JobGraph(tasks: tasks.map(\.taskName), dependences: edges).topologicalOrder()
        {
            list.add(
                .dependenceUnfeasible, "Job.Dependences",
                "the dependences form a cycle: \((cycle.tasks + [cycle.tasks[0]]).joined(separator: " -> "))")
        }
        return list.problems
    }
}

extension TaskSpec {
    /// This task's fields over `template`'s: any field the task leaves out comes from the template.
    public func overriding(_ template: TaskSpec) -> TaskSpec {
        var merged = self
        merged.taskInstanceNum = taskInstanceNum ?? template.taskInstanceNum
        merged.application = application ?? template.application
        if envId == nil && computeEnv == nil {
            merged.envId = template.envId
            merged.computeEnv = template.computeEnv
        }
        merged.redirectInfo = redirectInfo ?? template.redirectInfo
        merged.redirectLocalInfo = redirectLocalInfo ?? template.redirectLocalInfo
        merged.inputMappings = inputMappings ?? template.inputMappings
        merged.outputMappings = outputMappings ?? template.outputMappings
        merged.outputMappingConfigs = outputMappingConfigs ?? template.outputMappingConfigs
        merged.envVars = envVars ?? template.envVars
        merged.authentications = authentications ?? template.authentications
        merged.failedAction = failedAction ?? template.failedAction
        merged.maxRetryCount = maxRetryCount ?? template.maxRetryCount
        merged.timeout = timeout ?? template.timeout
        merged.maxConcurrentNum = maxConcurrentNum ?? template.maxConcurrentNum
        merged.restartComputeNode = restartComputeNode ?? template.restartComputeNode
        merged.resourceMaxRetryCount = resourceMaxRetryCount ?? template.resourceMaxRetryCount
        merged.retryRules = retryRules ?? template.retryRules
        merged.taskTemplateId = nil
        return merged
    }

    /// The problems of one task, its fields under `field`. `requireEnvironment` is false for a template, whose
    /// tasks may leave the environment to the job.
    func validate(field: String, requireEnvironment: Bool) -> [ValidationProblem] {
        var list = ProblemList()
        list.check(!taskName.isEmpty, .taskName, "\(field).TaskName", "must not be empty")
        list.length(taskName, max: Limits.nameLength, "\(field).TaskName", tooLong: .taskNameTooLong)
        list.check(
            taskName.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") },
            .taskName, "\(field).TaskName", "may hold only letters, digits, - and _")
        list.range(taskInstanceNum, Limits.instancesPerTask, "\(field).TaskInstanceNum", code: .taskInstanceNum)
        switch (envId, computeEnv) {
        case (.some, .some):
            list.add(
                .allowedOneAttributeInEnvIdAndComputeEnv, "\(field).EnvId", "give only one of EnvId and ComputeEnv")
        case (nil, nil) where requireEnvironment:
            list.add(.allowedOneAttributeInEnvIdAndComputeEnv, "\(field).EnvId", "give one of EnvId and ComputeEnv")
        default:
            break
        }
        if let envId {
            list.check(
                EnvID(validating: envId) != nil, .envIdMalformed, "\(field).EnvId", "not an environment id (env-…)")
        }
        if let environment = computeEnv {
            list.oneOf(environment.envType, ["MANAGED"], "\(field).ComputeEnv.EnvType")
            list.envData(environment.envData, "\(field).ComputeEnv.EnvData")
            list.mountDataDisks(environment.mountDataDisks, "\(field).ComputeEnv.MountDataDisks")
        }
        if let application {
            list.append(application.validate(field: "\(field).Application"))
        } else {
            list.add(.missingParameter, "\(field).Application", "required")
        }
        if let redirect = redirectInfo {
            list.remote(redirect.stdoutRedirectPath, "\(field).RedirectInfo.StdoutRedirectPath")
            list.remote(redirect.stderrRedirectPath, "\(field).RedirectInfo.StderrRedirectPath")
            for (name, key) in [
                (redirect.stdoutRedirectFileName, "StdoutRedirectFileName"),
                (redirect.stderrRedirectFileName, "StderrRedirectFileName"),
            ] {
                if let refusal = name.flatMap(Isolation.redirectFileNameRefusal) {
                    list.add(.invalidParameterValue, "\(field).RedirectInfo.\(key)", refusal)
                }
            }
        }
        if let local = redirectLocalInfo {
            list.local(local.stdoutLocalPath, "\(field).RedirectLocalInfo.StdoutLocalPath")
            list.local(local.stderrLocalPath, "\(field).RedirectLocalInfo.StderrLocalPath")
        }
        list.inputMappings(inputMappings, "\(field).InputMappings")
        for (index, mapping) in (outputMappings ?? []).enumerated() {
            list.local(mapping.sourcePath, "\(field).OutputMappings[\(index)].SourcePath")
            list.remote(mapping.destinationPath, "\(field).OutputMappings[\(index)].DestinationPath")
            list.oneOf(
                mapping.outputMappingOption?.workspace, ["BATCH_WORKSPACE", "GLOBAL_WORKSPACE"],
                "\(field).OutputMappings[\(index)].OutputMappingOption.Workspace")
        }
        for (index, config) in (outputMappingConfigs ?? []).enumerated() {
            list.oneOf(config.scene, ["COS", "S3"], "\(field).OutputMappingConfigs[\(index)].Scene")
            list.range(config.workerNum, 1...64, "\(field).OutputMappingConfigs[\(index)].WorkerNum")
            list.range(config.workerPartSize, 1...5120, "\(field).OutputMappingConfigs[\(index)].WorkerPartSize")
        }
        var variables: Set<String> = []
        for (index, variable) in (envVars ?? []).enumerated() {
            let name = variable.name
            list.check(
                !name.isEmpty && name.first.map { !$0.isNumber } == true
                    && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") },
                .invalidParameterValue, "\(field).EnvVars[\(index)].Name", "not a valid environment variable name")
            list.check(
                !name.hasPrefix("BATCH_"), .invalidParameterValue, "\(field).EnvVars[\(index)].Name",
                "BATCH_ variables are set by Batch itself")
            list.check(
                variables.insert(name).inserted, .invalidParameterValue, "\(field).EnvVars[\(index)].Name",
                "\(name.prefix(60)) is given twice")
        }
        list.authentications(authentications, "\(field).Authentications")
        list.oneOf(failedAction, FailedAction.allCases.map(\.rawValue), "\(field).FailedAction")
        list.range(maxRetryCount, Limits.maxRetryCount, "\(field).MaxRetryCount", code: .maxRetryCount)
        list.range(timeout, Limits.timeout, "\(field).Timeout")
        list.range(maxConcurrentNum, 1...Limits.instancesPerTask.upperBound, "\(field).MaxConcurrentNum")
        list.range(resourceMaxRetryCount, Limits.resourceMaxRetryCount, "\(field).ResourceMaxRetryCount")
        for (index, rule) in (retryRules ?? []).enumerated() {
            list.check(
                ExitCodePattern(rule.onExitCode) != nil, .invalidParameterValue,
                "\(field).RetryRules[\(index)].OnExitCode", "must be a code (137), a range (1-3) or *")
            list.oneOf(rule.action, ["RETRY", "EXIT"], "\(field).RetryRules[\(index)].Action")
        }
        return list.problems
    }
}

extension Application {
    func validate(field: String) -> [ValidationProblem] {
        var list = ProblemList()
        list.oneOf(deliveryForm, ["LOCAL", "PACKAGE"], "\(field).DeliveryForm")
        if deliveryForm == "PACKAGE" {
            if let path = packagePath {
                list.remote(path, "\(field).PackagePath")
            } else {
                list.add(.missingParameter, "\(field).PackagePath", "required when DeliveryForm is PACKAGE")
            }
        }
        let hasCommand = !(command?.isEmpty ?? true)
        let hasCommands = !(commands?.isEmpty ?? true)
        if hasCommand && hasCommands {
            list.add(.invalidParameterCombination, "\(field).Command", "give only one of Command and Commands")
        } else if !hasCommand && !hasCommands {
            list.add(.missingParameter, "\(field).Command", "give one of Command and Commands")
        }
        for (index, line) in (commands ?? []).enumerated() {
            list.check(
                !line.command.isEmpty, .missingParameter, "\(field).Commands[\(index)].Command", "must not be empty")
        }
        if let docker {
            list.check(!docker.image.isEmpty, .missingParameter, "\(field).Docker.Image", "required")
            list.range(docker.maxRetryCount, 0...10, "\(field).Docker.MaxRetryCount")
            list.range(docker.delayOnRetry, 0...3600, "\(field).Docker.DelayOnRetry")
            if let refusal = docker.dockerRunOption.flatMap(Isolation.dockerRunOptionRefusal) {
                list.add(.invalidParameterValue, "\(field).Docker.DockerRunOption", refusal)
            }
        }
        return list.problems
    }
}

extension NamedComputeEnv {
    /// Every problem of the environment spec, each naming its field.
    public func validate() -> [ValidationProblem] {
        var list = ProblemList()
        list.check(!envName.isEmpty, .invalidParameterValue, "ComputeEnv.EnvName", "must not be empty")
        list.length(envName, max: Limits.nameLength, "ComputeEnv.EnvName", tooLong: .envNameTooLong)
        list.length(
            envDescription, max: Limits.descriptionLength, "ComputeEnv.EnvDescription", tooLong: .envDescriptionTooLong)
        list.range(desiredComputeNodeCount, Limits.nodesPerEnv, "ComputeEnv.DesiredComputeNodeCount")
        list.oneOf(envType, ["MANAGED"], "ComputeEnv.EnvType")
        list.envData(envData, "ComputeEnv.EnvData")
        list.mountDataDisks(mountDataDisks, "ComputeEnv.MountDataDisks")
        list.authentications(authentications, "ComputeEnv.Authentications")
        list.inputMappings(inputMappings, "ComputeEnv.InputMappings")
        list.notifications(notifications, "ComputeEnv.Notifications", allowed: EventName.environmentEvents)
        list.oneOf(notificationTarget, ["CMQ", "TDMQ_CMQ"], "ComputeEnv.NotificationTarget")
        list.oneOf(actionIfComputeNodeInactive, ["RECREATE", "NOTHING"], "ComputeEnv.ActionIfComputeNodeInactive")
        list.range(resourceMaxRetryCount, Limits.resourceMaxRetryCount, "ComputeEnv.ResourceMaxRetryCount")
        list.tags(tags, "ComputeEnv.Tags")
        list.range(instanceMemoryLimit, Limits.instanceMemoryLimit, "ComputeEnv.InstanceMemoryLimit")
        return list.problems
    }
}

extension TaskTemplateSpec {
    /// Every problem of the template, each naming its field. Its task may leave the environment to the job.
    public func validate() -> [ValidationProblem] {
        var list = ProblemList()
        list.check(!taskTemplateName.isEmpty, .taskTemplateName, "TaskTemplateName", "must not be empty")
        list.length(taskTemplateName, max: Limits.nameLength, "TaskTemplateName", tooLong: .taskTemplateNameTooLong)
        list.length(
            taskTemplateDescription, max: Limits.descriptionLength, "TaskTemplateDescription",
            tooLong: .taskTemplateDescriptionTooLong)
        list.check(
            taskTemplateInfo.taskTemplateId == nil, .invalidParameterValue, "TaskTemplateInfo.TaskTemplateId",
            "a template cannot start from another template")
        list.append(taskTemplateInfo.validate(field: "TaskTemplateInfo", requireEnvironment: false))
        list.tags(tags, "Tags")
        return list.problems
    }
}
