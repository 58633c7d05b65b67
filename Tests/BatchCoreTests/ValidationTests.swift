import Testing

@testable import BatchCore

func task(_ name: String, instances: Int? = nil, env: String? = "env-abcdefgh", command: String? = "true") -> TaskSpec {
    TaskSpec(
        taskName: name, taskInstanceNum: instances, application: Application(deliveryForm: "LOCAL", command: command),
        envId: env)
}

@Suite("Job spec validation")
struct ValidationTests {
    @Test("a well-formed job has no problems")
    func validJob() {
        let job = JobSpec(
            jobName: "genomics", tasks: [task("split"), task("align", instances: 20), task("merge")],
            dependences: [
                Dependence(startTask: "split", endTask: "align"), Dependence(startTask: "align", endTask: "merge"),
            ])
        #expect(job.validate().isEmpty)
    }

    @Test(
        "each problem names its field and carries the API's code",
        arguments: [
            (
                JobSpec(jobName: String(repeating: "j", count: 61), tasks: [task("a")]),
                "InvalidParameter.JobNameTooLong", "Job.JobName"
            ),
            (JobSpec(tasks: []), "MissingParameter", "Job.Tasks"),
            (JobSpec(tasks: [task("a"), task("a")]), "InvalidParameterValue", "Job.Tasks[1].TaskName"),
            (
                JobSpec(tasks: [task(String(repeating: "t", count: 61))]), "InvalidParameter.TaskNameTooLong",
                "Job.Tasks[0].TaskName"
            ),
            (
                JobSpec(tasks: [task("a", instances: 0)]), "InvalidParameterValue.TaskInstanceNum",
                "Job.Tasks[0].TaskInstanceNum"
            ),
            (JobSpec(tasks: [task("a", env: nil)]), "AllowedOneAttributeInEnvIdAndComputeEnv", "Job.Tasks[0].EnvId"),
            (JobSpec(tasks: [task("a", env: "cluster-1")]), "InvalidParameter.EnvIdMalformed", "Job.Tasks[0].EnvId"),
            (JobSpec(tasks: [task("a", command: nil)]), "MissingParameter", "Job.Tasks[0].Application.Command"),
            (JobSpec(priority: 101, tasks: [task("a")]), "InvalidParameterValue", "Job.Priority"),
            (
                JobSpec(tasks: [task("a")], dependences: [Dependence(startTask: "a", endTask: "b")]),
                "InvalidParameterValue.DependenceNotFoundTaskName", "Job.Dependences[0].EndTask"
            ),
        ])
    func problems(job: JobSpec, code: String, field: String) {
        let problems = job.validate()
        #expect(problems.contains { $0.code.rawValue == code && $0.field == field }, "\(problems)")
    }

    @Test("a cycle is refused, naming the tasks on it")
    func cycle() {
        let job = JobSpec(
            tasks: [task("a"), task("b"), task("c"), task("d")],
            dependences: [
                Dependence(startTask: "a", endTask: "b"), Dependence(startTask: "b", endTask: "c"),
                Dependence(startTask: "c", endTask: "b"), Dependence(startTask: "c", endTask: "d"),
            ])
        let problems = job.validate()
        #expect(problems.count == 1)
        #expect(problems[0].code == .dependenceUnfeasible)
        #expect(problems[0].message.contains("b -> c -> b") || problems[0].message.contains("c -> b -> c"))
    }

    @Test("every problem is reported, not only the first")
    func allProblems() {
        let job = JobSpec(
            jobName: String(repeating: "j", count: 61), priority: -1, tasks: [task("a", instances: 0, env: nil)])
        #expect(job.validate().count == 4)
        #expect(APIError(problems: job.validate()).code == .jobNameTooLong)
    }

    @Test("jobs decode from the API's PascalCase JSON and encode back")
    func pascalCaseJSON() throws {
        let json = """
            {"JobName":"demo","Priority":5,"Tasks":[{"TaskName":"hello","TaskInstanceNum":3,"EnvId":"env-abcdefgh",
             "Application":{"DeliveryForm":"LOCAL","Command":"echo hi"},"EnvVars":[{"Name":"A","Value":"1"}]}],
             "Dependences":[]}
            """
        let job = try BatchJSON.decode(JobSpec.self, from: Array(json.utf8))
        #expect(job.jobName == "demo")
        #expect(job.tasks[0].taskInstanceNum == 3)
        #expect(job.tasks[0].application.command == "echo hi")
        #expect(job.tasks[0].envVars == [EnvVar(name: "A", value: "1")])
        let encoded = String(decoding: try BatchJSON.encode(job), as: UTF8.self)
        #expect(encoded.contains("\"TaskInstanceNum\":3"))
        #expect(try BatchJSON.decode(JobSpec.self, from: Array(encoded.utf8)) == job)
    }
}
