import Testing

@testable import BatchCore

func task(
    _ name: String, instances: Int? = nil, env: String? = "env-abcdefgh", command: String? = "true",
    configure: (inout TaskSpec) -> Void = { _ in }
) -> TaskSpec {
    var spec = TaskSpec(
        taskName: name, taskInstanceNum: instances, application: Application(deliveryForm: "LOCAL", command: command),
        envId: env)
    configure(&spec)
    return spec
}

func job(_ tasks: [TaskSpec], configure: (inout JobSpec) -> Void = { _ in }) -> JobSpec {
    var spec = JobSpec(tasks: tasks)
    configure(&spec)
    return spec
}

/// One invalid job: the code and field its problem must carry.
struct InvalidCase: Sendable, CustomTestStringConvertible {
    var name: String
    var job: JobSpec
    var code: String
    var field: String
    var testDescription: String { name }
}

let invalidJobs: [InvalidCase] = [
    InvalidCase(
        name: "job name too long", job: job([task("a")]) { $0.jobName = String(repeating: "j", count: 61) },
        code: "InvalidParameter.JobNameTooLong", field: "Job.JobName"),
    InvalidCase(
        name: "description too long", job: job([task("a")]) { $0.jobDescription = String(repeating: "d", count: 201) },
        code: "InvalidParameter.JobDescriptionTooLong", field: "Job.JobDescription"),
    InvalidCase(name: "no tasks", job: job([]), code: "MissingParameter", field: "Job.Tasks"),
    InvalidCase(
        name: "duplicate task names", job: job([task("a"), task("a")]), code: "InvalidParameter.TaskName",
        field: "Job.Tasks[1].TaskName"),
    InvalidCase(
        name: "task name too long", job: job([task(String(repeating: "t", count: 61))]),
        code: "InvalidParameter.TaskNameTooLong", field: "Job.Tasks[0].TaskName"),
    InvalidCase(
        name: "task name with a space", job: job([task("a b")]), code: "InvalidParameter.TaskName",
        field: "Job.Tasks[0].TaskName"),
    InvalidCase(
        name: "zero instances", job: job([task("a", instances: 0)]), code: "InvalidParameterValue.TaskInstanceNum",
        field: "Job.Tasks[0].TaskInstanceNum"),
    InvalidCase(
        name: "too many instances", job: job([task("a", instances: 100_001)]),
        code: "InvalidParameterValue.TaskInstanceNum", field: "Job.Tasks[0].TaskInstanceNum"),
    InvalidCase(
        name: "neither EnvId nor ComputeEnv", job: job([task("a", env: nil)]),
        code: "AllowedOneAttributeInEnvIdAndComputeEnv", field: "Job.Tasks[0].EnvId"),
    InvalidCase(
        name: "both EnvId and ComputeEnv", job: job([task("a") { $0.computeEnv = AnonymousComputeEnv() }]),
        code: "AllowedOneAttributeInEnvIdAndComputeEnv", field: "Job.Tasks[0].EnvId"),
    InvalidCase(
        name: "malformed EnvId", job: job([task("a", env: "cluster-1")]), code: "InvalidParameter.EnvIdMalformed",
        field: "Job.Tasks[0].EnvId"),
    InvalidCase(
        name: "no command", job: job([task("a", command: nil)]), code: "MissingParameter",
        field: "Job.Tasks[0].Application.Command"),
    InvalidCase(
        name: "no application", job: job([task("a") { $0.application = nil }]), code: "MissingParameter",
        field: "Job.Tasks[0].Application"),
    InvalidCase(
        name: "unknown delivery form", job: job([task("a") { $0.application?.deliveryForm = "REMOTE" }]),
        code: "InvalidParameterValue", field: "Job.Tasks[0].Application.DeliveryForm"),
    InvalidCase(
        name: "package without a path", job: job([task("a") { $0.application?.deliveryForm = "PACKAGE" }]),
        code: "MissingParameter", field: "Job.Tasks[0].Application.PackagePath"),
    InvalidCase(
        name: "negative MaxRetryCount", job: job([task("a") { $0.maxRetryCount = -1 }]),
        code: "InvalidParameterValue.MaxRetryCount", field: "Job.Tasks[0].MaxRetryCount"),
    InvalidCase(
        name: "MaxRetryCount over 100", job: job([task("a") { $0.maxRetryCount = 101 }]),
        code: "InvalidParameterValue.MaxRetryCount", field: "Job.Tasks[0].MaxRetryCount"),
    InvalidCase(
        name: "negative Timeout", job: job([task("a") { $0.timeout = -5 }]), code: "InvalidParameterValue.Negative",
        field: "Job.Tasks[0].Timeout"),
    InvalidCase(
        name: "zero Timeout", job: job([task("a") { $0.timeout = 0 }]), code: "InvalidParameterValue",
        field: "Job.Tasks[0].Timeout"),
    InvalidCase(
        name: "negative MaxConcurrentNum", job: job([task("a") { $0.maxConcurrentNum = -1 }]),
        code: "InvalidParameterValue.Negative", field: "Job.Tasks[0].MaxConcurrentNum"),
    InvalidCase(
        name: "unknown FailedAction", job: job([task("a") { $0.failedAction = "RETRY" }]),
        code: "InvalidParameterValue", field: "Job.Tasks[0].FailedAction"),
    InvalidCase(
        name: "unsupported storage scheme",
        job: job([
            task("a") { $0.inputMappings = [InputMapping(sourcePath: "ftp://host/data", destinationPath: "/data")] }
        ]), code: "InvalidParameterValue.RemoteStorageSchemeType", field: "Job.Tasks[0].InputMappings[0].SourcePath"),
    InvalidCase(
        name: "storage path without a scheme",
        job: job([task("a") { $0.outputMappings = [OutputMapping(sourcePath: "/out", destinationPath: "bucket/out")] }]
        ), code: "InvalidParameterValue.RemoteStorageSchemeType",
        field: "Job.Tasks[0].OutputMappings[0].DestinationPath"),
    InvalidCase(
        name: "s3 without a bucket",
        job: job([task("a") { $0.inputMappings = [InputMapping(sourcePath: "s3:///key", destinationPath: "/data")] }]),
        code: "InvalidParameterValue.RemoteStoragePath", field: "Job.Tasks[0].InputMappings[0].SourcePath"),
    InvalidCase(
        name: "relative local path",
        job: job([task("a") { $0.inputMappings = [InputMapping(sourcePath: "s3://b/in", destinationPath: "data")] }]),
        code: "InvalidParameterValue.LocalPath", field: "Job.Tasks[0].InputMappings[0].DestinationPath"),
    InvalidCase(
        name: "local path with ..",
        job: job([
            task("a") { $0.outputMappings = [OutputMapping(sourcePath: "/work/../etc", destinationPath: "s3://b/out")] }
        ]), code: "InvalidParameterValue.LocalPath", field: "Job.Tasks[0].OutputMappings[0].SourcePath"),
    InvalidCase(
        name: "mapping onto /etc",
        job: job([task("a") { $0.inputMappings = [InputMapping(sourcePath: "s3://b/in", destinationPath: "/etc")] }]),
        code: "InvalidParameterValue.LocalPath", field: "Job.Tasks[0].InputMappings[0].DestinationPath"),
    InvalidCase(
        name: "redirect to an unsupported scheme",
        job: job([task("a") { $0.redirectInfo = RedirectInfo(stdoutRedirectPath: "http://x/logs") }]),
        code: "InvalidParameterValue.RemoteStorageSchemeType", field: "Job.Tasks[0].RedirectInfo.StdoutRedirectPath"),
    InvalidCase(
        name: "bad env var name", job: job([task("a") { $0.envVars = [EnvVar(name: "1X", value: "v")] }]),
        code: "InvalidParameterValue", field: "Job.Tasks[0].EnvVars[0].Name"),
    InvalidCase(
        name: "template reference that does not resolve", job: job([task("a") { $0.taskTemplateId = "tmpl-missing1" }]),
        code: "ResourceNotFound.TaskTemplate", field: "Job.Tasks[0].TaskTemplateId"),
    InvalidCase(
        name: "malformed template id", job: job([task("a") { $0.taskTemplateId = "template" }]),
        code: "InvalidParameter.TaskTemplateIdMalformed", field: "Job.Tasks[0].TaskTemplateId"),
    InvalidCase(
        name: "dependence on an unknown task",
        job: job([task("a")]) { $0.dependences = [Dependence(startTask: "a", endTask: "b")] },
        code: "InvalidParameterValue.DependenceNotFoundTaskName", field: "Job.Dependences[0].EndTask"),
    InvalidCase(
        name: "self dependence", job: job([task("a")]) { $0.dependences = [Dependence(startTask: "a", endTask: "a")] },
        code: "InvalidParameterValue.DependenceUnfeasible", field: "Job.Dependences[0]"),
    InvalidCase(
        name: "priority out of range", job: job([task("a")]) { $0.priority = 101 }, code: "InvalidParameterValue",
        field: "Job.Priority"),
    InvalidCase(
        name: "unknown dependency rule", job: job([task("a")]) { $0.taskExecutionDependOn = "ALWAYS" },
        code: "InvalidParameterValue", field: "Job.TaskExecutionDependOn"),
    InvalidCase(
        name: "too many tags", job: job([task("a")]) { $0.tags = (0..<11).map { Tag(key: "k\($0)", value: "v") } },
        code: "InvalidParameterValue.LimitExceeded", field: "Job.Tags"),
    InvalidCase(
        name: "duplicate notification event",
        job: job([task("a")]) {
            $0.notifications = [
                JobNotification(
                    topicName: "t",
                    eventConfigs: [EventConfig(eventName: "JOB_FAILED"), EventConfig(eventName: "JOB_FAILED")])
            ]
        }, code: "InvalidParameter.NotificationEventNameDuplicate",
        field: "Job.Notifications[0].EventConfigs[1].EventName"),
    InvalidCase(
        name: "unknown notification event",
        job: job([task("a")]) {
            $0.notifications = [
                JobNotification(topicName: "t", eventConfigs: [EventConfig(eventName: "COMPUTE_NODE_CREATED")])
            ]
        }, code: "InvalidParameterValue", field: "Job.Notifications[0].EventConfigs[0].EventName"),
    InvalidCase(
        name: "empty topic name",
        job: job([task("a")]) { $0.notifications = [JobNotification(topicName: "", eventConfigs: [])] },
        code: "InvalidParameter.NotificationTopicName", field: "Job.Notifications[0].TopicName"),
    InvalidCase(
        name: "bad exit-code rule",
        job: job([task("a") { $0.retryRules = [RetryRule(onExitCode: "9-2", action: "RETRY")] }]),
        code: "InvalidParameterValue", field: "Job.Tasks[0].RetryRules[0].OnExitCode"),
    InvalidCase(
        name: "instance types and instance type both",
        job: job([
            task("a", env: nil) {
                var data = EnvData()
                data.instanceType = "S5.LARGE8"
                data.instanceTypes = ["S5.LARGE8"]
                $0.computeEnv = AnonymousComputeEnv(envData: data)
            }
        ]), code: "InvalidParameter.InvalidParameterCombination", field: "Job.Tasks[0].ComputeEnv.EnvData"),
]

@Suite("Spec validation")
struct ValidationTests {
    @Test("a well-formed job has no problems")
    func validJob() {
        let spec = JobSpec(
            jobName: "genomics", tasks: [task("split"), task("align", instances: 20), task("merge")],
            dependences: [
                Dependence(startTask: "split", endTask: "align"), Dependence(startTask: "align", endTask: "merge"),
            ])
        #expect(spec.validate().isEmpty)
    }

    @Test("each problem names its field and carries the API's code", arguments: invalidJobs)
    func problems(_ invalid: InvalidCase) {
        let problems = invalid.job.validate()
        #expect(
            problems.contains { $0.code.rawValue == invalid.code && $0.field == invalid.field },
            "\(invalid.name): \(problems.map { "\($0.code.rawValue) \($0)" })")
    }

    @Test("a cycle is refused, naming the tasks on it")
    func cycle() {
        let spec = job([task("a"), task("b"), task("c"), task("d")]) {
            $0.dependences = [
                Dependence(startTask: "a", endTask: "b"), Dependence(startTask: "b", endTask: "c"),
                Dependence(startTask: "c", endTask: "b"), Dependence(startTask: "c", endTask: "d"),
            ]
        }
        let problems = spec.validate()
        #expect(problems.count == 1)
        #expect(problems[0].code == .dependenceUnfeasible)
        #expect(problems[0].message.contains("b -> c -> b") || problems[0].message.contains("c -> b -> c"))
    }

    @Test("every problem is reported, not only the first")
    func allProblems() {
        let spec = job([task("a", instances: 0, env: nil) { $0.timeout = -1 }]) {
            $0.jobName = String(repeating: "j", count: 61)
            $0.priority = -1
        }
        let codes = spec.validate().map(\.code)
        #expect(
            Set(codes) == [.jobNameTooLong, .negative, .taskInstanceNum, .allowedOneAttributeInEnvIdAndComputeEnv])
        #expect(codes.count == 5)
        #expect(APIError(problems: spec.validate()).code == .jobNameTooLong)
    }

    @Test("a template fills in what the task leaves out, and the task's own fields win")
    func templates() {
        var template = task("template", instances: 8, command: "align.sh")
        template.maxRetryCount = 3
        template.envVars = [EnvVar(name: "REF", value: "hg38")]
        let id = TaskTemplateID(rawValue: "tmpl-align001")
        let spec = job([
            TaskSpec(taskName: "align", taskInstanceNum: 2) { $0.taskTemplateId = id.rawValue }
        ])
        #expect(spec.validate(templates: [id: template]).isEmpty)
        let resolved = spec.resolvingTemplates([id: template]).tasks[0]
        #expect(resolved.taskName == "align")
        #expect(resolved.taskInstanceNum == 2)
        #expect(resolved.application?.command == "align.sh")
        #expect(resolved.maxRetryCount == 3)
        #expect(resolved.envId == "env-abcdefgh")
        #expect(resolved.taskTemplateId == nil)
    }

    @Test("environment and template specs name their fields too")
    func otherSpecs() {
        var env = NamedComputeEnv(envName: String(repeating: "e", count: 61), desiredComputeNodeCount: 2001)
        env.actionIfComputeNodeInactive = "REBOOT"
        #expect(
            Set(env.validate().map(\.field)) == [
                "ComputeEnv.EnvName", "ComputeEnv.DesiredComputeNodeCount", "ComputeEnv.ActionIfComputeNodeInactive",
            ])
        #expect(env.validate().contains { $0.code == .envNameTooLong })
        let template = TaskTemplateSpec(taskTemplateName: "", taskTemplateInfo: task("t", env: nil))
        #expect(template.validate().map(\.code) == [.taskTemplateName])
    }

    @Test("jobs decode from the API's PascalCase JSON and encode back")
    func pascalCaseJSON() throws {
        let json = """
            {"JobName":"demo","Priority":5,"Tasks":[{"TaskName":"hello","TaskInstanceNum":3,"EnvId":"env-abcdefgh",
             "Application":{"DeliveryForm":"LOCAL","Command":"echo hi"},"EnvVars":[{"Name":"A","Value":"1"}],
             "ComputeEnv":null,"RetryRules":[{"OnExitCode":"137","Action":"RETRY"}]}],
             "Dependences":[]}
            """
        let spec = try BatchJSON.decode(JobSpec.self, from: Array(json.utf8))
        #expect(spec.jobName == "demo")
        #expect(spec.tasks[0].taskInstanceNum == 3)
        #expect(spec.tasks[0].application?.command == "echo hi")
        #expect(spec.tasks[0].envVars == [EnvVar(name: "A", value: "1")])
        #expect(spec.tasks[0].retryRules == [RetryRule(onExitCode: "137", action: "RETRY")])
        let encoded = String(decoding: try BatchJSON.encode(spec), as: UTF8.self)
        #expect(encoded.contains("\"TaskInstanceNum\":3"))
        #expect(try BatchJSON.decode(JobSpec.self, from: Array(encoded.utf8)) == spec)
    }

    @Test("CVM settings keep the SDK's field names, acronyms included")
    func envDataJSON() throws {
        let json =
            #"{"EnvName":"e","DesiredComputeNodeCount":1,"EnvData":{"InstanceTypeOptions":{"CPU":4,"Memory":8},"SystemDisk":{"DiskType":"CLOUD_SSD","DiskSize":50}}}"#
        let env = try BatchJSON.decode(NamedComputeEnv.self, from: Array(json.utf8))
        #expect(env.envData?.instanceTypeOptions?.cpu == 4)
        #expect(env.envData?.systemDisk?.diskSize == 50)
        #expect(String(decoding: try BatchJSON.encode(env), as: UTF8.self).contains(#""CPU":4"#))
    }
}

extension TaskSpec {
    init(taskName: String, taskInstanceNum: Int?, configure: (inout TaskSpec) -> Void) {
        self.init(taskName: taskName, taskInstanceNum: taskInstanceNum)
        configure(&self)
    }
}
