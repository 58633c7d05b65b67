/// Bounds the API sets on a job.
public enum Limits {
    public static let jobNameLength = 60
    public static let descriptionLength = 200
    public static let taskNameLength = 60
    public static let tasksPerJob = 100
    public static let instancesPerTask = 1...10_000
    public static let priority = 0...100
    public static let maxRetryCount = 0...100
    public static let timeout = 1...(7 * 86_400)
    public static let nodesPerEnv = 0...2000
    public static let tags = 10
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

public enum FailedAction: String, Sendable, CaseIterable {
    case terminate = "TERMINATE"
    case interrupt = "INTERRUPT"
    case fastInterrupt = "FAST_INTERRUPT"
}

extension JobSpec {
    public var dependencyRule: DependencyRule {
        taskExecutionDependOn.flatMap(DependencyRule.init(rawValue:)) ?? .preTaskSucceed
    }

    public var graph: JobGraph { JobGraph(tasks: tasks.map(\.taskName), dependences: dependences ?? []) }

    /// Every problem of the spec, each naming its field; empty when the job can be accepted.
    public func validate() -> [ValidationProblem] {
        var problems: [ValidationProblem] = []
        func check(_ condition: Bool, _ code: APIError.Code, _ field: String, _ message: @autoclosure () -> String) {
            if !condition { problems.append(ValidationProblem(code, field, message())) }
        }
        if let name = jobName {
            check(!name.isEmpty, .invalidParameterValue, "Job.JobName", "must not be empty")
            check(
                name.count <= Limits.jobNameLength, .jobNameTooLong, "Job.JobName",
                "longer than \(Limits.jobNameLength) characters")
        }
        if let description = jobDescription {
            check(
                description.count <= Limits.descriptionLength, .invalidParameterValue, "Job.JobDescription",
                "longer than \(Limits.descriptionLength) characters")
        }
        if let priority {
            check(Limits.priority.contains(priority), .invalidParameterValue, "Job.Priority", "must be 0 to 100")
        }
        if let rule = taskExecutionDependOn {
            check(
                DependencyRule(rawValue: rule) != nil, .invalidParameterValue, "Job.TaskExecutionDependOn",
                "must be one of \(DependencyRule.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        check((tags ?? []).count <= Limits.tags, .invalidParameterValue, "Job.Tags", "at most \(Limits.tags) tags")
        check(!tasks.isEmpty, .missingParameter, "Job.Tasks", "a job needs at least one task")
        check(
            tasks.count <= Limits.tasksPerJob, .invalidParameterValue, "Job.Tasks",
            "at most \(Limits.tasksPerJob) tasks")

        var seen: Set<String> = []
        for (index, task) in tasks.enumerated() {
            let field = "Job.Tasks[\(index)]"
            problems += task.validate(field: field)
            check(
                seen.insert(task.taskName).inserted, .invalidParameterValue, "\(field).TaskName",
                "duplicate task name \"\(task.taskName)\"")
        }

        let names = Set(tasks.map(\.taskName))
        for (index, dependence) in (dependences ?? []).enumerated() {
            let field = "Job.Dependences[\(index)]"
            for (key, name) in [("StartTask", dependence.startTask), ("EndTask", dependence.endTask)] {
                check(
                    names.contains(name), .dependenceNotFoundTaskName, "\(field).\(key)",
                    "no task named \"\(name)\"")
            }
            check(
                dependence.startTask != dependence.endTask, .dependenceUnfeasible, field,
                "task \"\(dependence.startTask)\" depends on itself")
        }
        let knownDependences = (dependences ?? []).filter {
            names.contains($0.startTask) && names.contains($0.endTask) && $0.startTask != $0.endTask
        }
        if seen.count == tasks.count,
            case .failure(let cycle) = JobGraph(tasks: tasks.map(\.taskName), dependences: knownDependences)
                .topologicalOrder()
        {
            problems.append(
                ValidationProblem(
                    .dependenceUnfeasible, "Job.Dependences",
                    "the dependences form a cycle: \((cycle.tasks + [cycle.tasks[0]]).joined(separator: " -> "))"))
        }
        return problems
    }
}

extension TaskSpec {
    func validate(field: String) -> [ValidationProblem] {
        var problems: [ValidationProblem] = []
        func check(_ condition: Bool, _ code: APIError.Code, _ name: String, _ message: @autoclosure () -> String) {
            if !condition { problems.append(ValidationProblem(code, "\(field).\(name)", message())) }
        }
        check(!taskName.isEmpty, .invalidParameterValue, "TaskName", "must not be empty")
        check(
            taskName.count <= Limits.taskNameLength, .taskNameTooLong, "TaskName",
            "longer than \(Limits.taskNameLength) characters")
        check(
            taskName.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") },
            .invalidParameterValue, "TaskName", "may hold only letters, digits, - and _")
        if let count = taskInstanceNum {
            check(
                Limits.instancesPerTask.contains(count), .taskInstanceNum, "TaskInstanceNum",
                "must be \(Limits.instancesPerTask.lowerBound) to \(Limits.instancesPerTask.upperBound)")
        }
        switch (envId, computeEnv) {
        case (nil, nil), (.some, .some):
            check(false, .allowedOneAttributeInEnvIdAndComputeEnv, "EnvId", "give exactly one of EnvId and ComputeEnv")
        case (let envId?, nil):
            check(EnvID(validating: envId) != nil, .envIdMalformed, "EnvId", "not an environment id (env-…)")
        case (nil, .some):
            break
        }
        if let retries = maxRetryCount {
            check(
                Limits.maxRetryCount.contains(retries), .maxRetryCount, "MaxRetryCount",
                "must be \(Limits.maxRetryCount.lowerBound) to \(Limits.maxRetryCount.upperBound)")
        }
        if let timeout {
            check(
                Limits.timeout.contains(timeout), .invalidParameterValue, "Timeout",
                "must be \(Limits.timeout.lowerBound) to \(Limits.timeout.upperBound) seconds")
        }
        if let concurrency = maxConcurrentNum {
            check(concurrency >= 1, .invalidParameterValue, "MaxConcurrentNum", "must be at least 1")
        }
        if let action = failedAction {
            check(
                FailedAction(rawValue: action) != nil, .invalidParameterValue, "FailedAction",
                "must be one of \(FailedAction.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        problems += application.validate(field: "\(field).Application")
        for (index, variable) in (envVars ?? []).enumerated() {
            let name = variable.name
            check(
                !name.isEmpty && name.first.map { !$0.isNumber } == true
                    && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") },
                .invalidParameterValue, "EnvVars[\(index)].Name", "not a valid environment variable name")
        }
        return problems
    }
}

extension Application {
    func validate(field: String) -> [ValidationProblem] {
        var problems: [ValidationProblem] = []
        switch deliveryForm {
        case "LOCAL":
            break
        case "PACKAGE":
            if packagePath?.isEmpty ?? true {
                problems.append(
                    ValidationProblem(
                        .missingParameter, "\(field).PackagePath", "required when DeliveryForm is PACKAGE"))
            }
        default:
            problems.append(
                ValidationProblem(.invalidParameterValue, "\(field).DeliveryForm", "must be LOCAL or PACKAGE"))
        }
        let hasCommand = !(command?.isEmpty ?? true)
        let hasCommands = !(commands?.isEmpty ?? true)
        if hasCommand == hasCommands {
            problems.append(
                ValidationProblem(
                    hasCommand ? .invalidParameter : .missingParameter, "\(field).Command",
                    "give exactly one of Command and Commands"))
        }
        return problems
    }
}

extension NamedComputeEnv {
    /// Every problem of the environment spec, each naming its field.
    public func validate() -> [ValidationProblem] {
        var problems: [ValidationProblem] = []
        if envName.isEmpty || envName.count > Limits.jobNameLength {
            problems.append(
                ValidationProblem(.invalidParameterValue, "ComputeEnv.EnvName", "must be 1 to 60 characters"))
        }
        if !Limits.nodesPerEnv.contains(desiredComputeNodeCount) {
            problems.append(
                ValidationProblem(
                    .invalidParameterValue, "ComputeEnv.DesiredComputeNodeCount",
                    "must be \(Limits.nodesPerEnv.lowerBound) to \(Limits.nodesPerEnv.upperBound)"))
        }
        if let type = envType, type != "MANAGED" {
            problems.append(
                ValidationProblem(.invalidParameterValue, "ComputeEnv.EnvType", "only MANAGED is supported"))
        }
        return problems
    }
}
