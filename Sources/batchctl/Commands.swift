import ArgumentParser
import AsyncHTTPClient
import BatchCore
import Foundation
import NIOFoundationCompat
import Yams

/// Where the gateway is and which key pair signs: options, then `BATCH_*` variables, then `.batch/credentials`.
struct ClientOptions: ParsableArguments {
    @Option(
        help: """
            The gateway: host:port, or https://host:port (BATCH_ENDPOINT, default from .batch/credentials or \
            127.0.0.1:8080)
            """)
    var endpoint: String?
    @Option(help: "A PEM file of the CA that signed the gateway's certificate (BATCH_CA_CERTIFICATE)")
    var caCertificate: String?
    @Option(help: "The key pair's SecretId (BATCH_SECRET_ID)")
    var secretId: String?
    @Option(help: "The key pair's SecretKey (BATCH_SECRET_KEY)")
    var secretKey: String?
    @Option(help: "A profile of ~/.config/batch/config (BATCH_PROFILE; written by batchctl configure)")
    var profile: String?
    @Option(help: "text (tables) or json (the API's answer, for scripts)")
    var output: OutputFormat = .text

    var gateway: Gateway {
        Gateway(
            credentials: Credentials.load(
                endpoint: endpoint, secretID: secretId, secretKey: secretKey, caCertificate: caCertificate,
                profile: profile))
    }

    /// Prints the answer as JSON with `--output json`; otherwise runs `text`.
    func show(_ response: [String: Any], text: () -> Void) {
        guard output == .json else { return text() }
        printJSON(response)
    }
}

func printJSON(_ object: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    print(String(decoding: data, as: UTF8.self))
}

/// Left-aligned columns, a header row first.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in
        ([header[column]] + rows.map { column < $0.count ? $0[column] : "" }).map(\.count).max() ?? 0
    }
    for row in [header] + rows {
        let cells = row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }
        print(cells.joined(separator: "  "))
    }
}

extension [String: Any] {
    func string(_ key: String) -> String { self[key].map { "\($0)" } ?? "-" }
    func int(_ key: String) -> Int { self[key] as? Int ?? 0 }
    func objects(_ key: String) -> [[String: Any]] { self[key] as? [[String: Any]] ?? [] }
}

// MARK: - submit

struct Submit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a job from a YAML or JSON file in the API's field names.",
        discussion: """
            The file holds the Job object (or {"Job": …}). --set overrides a field by its path.
            Example: batchctl submit examples/render/job.yaml --set Tasks[0].TaskInstanceNum=10 --wait
            """)

    @Argument(help: "The job file: .yaml, .yml or .json")
    var file: String
    @Option(name: .customLong("set"), help: "PATH=VALUE, e.g. JobName=nightly or Tasks[1].EnvId=env-ab12cd34")
    var overrides: [String] = []
    @Flag(help: "Follow the job to its end (as `watch`); exit 1 unless it succeeds")
    var wait = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var job = try JobFile.load(file)
        for assignment in overrides {
            guard let equals = assignment.firstIndex(of: "=") else {
                Batchctl.fail("--set \(assignment): expected PATH=VALUE")
            }
            let value = String(assignment[assignment.index(after: equals)...])
            let parsed =
                (try? JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)) ?? value
            do {
                try JobFile.set(&job, path: String(assignment[..<equals]), to: parsed)
            } catch {
                Batchctl.fail("--set \(assignment): \(error)")
            }
        }
        let response = await client.gateway.call("SubmitJob", ["Job": job])
        let jobID = response.string("JobId")
        client.show(response) { print(jobID) }
        if wait { try await Watch.follow(jobID, gateway: client.gateway) }
    }
}

/// Job files: YAML (a superset of JSON) read with Yams; a problem is reported with its line.
enum JobFile {
    struct PathError: Error, CustomStringConvertible {
        var description: String
    }

    static func load(_ path: String) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else { Batchctl.fail("cannot read \(path)") }
        let text = String(decoding: data, as: UTF8.self)
        let object: Any?
        do {
            object = try Yams.load(yaml: text)
        } catch let error as YamlError {
            Batchctl.fail("\(path): \(describe(error))")
        } catch {
            Batchctl.fail("\(path): \(error)")
        }
        guard var job = object as? [String: Any] else {
            Batchctl.fail("\(path): expected a mapping of the Job's fields (JobName, Tasks, …)")
        }
        if let inner = job["Job"] as? [String: Any], job.count == 1 { job = inner }
        return job
    }

    /// `line N, column M: problem`.
    static func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _):
            "line \(mark.line), column \(mark.column): \(problem)" + (context.map { " (\($0.text))" } ?? "")
        case .composer(let context, let problem, let mark, _):
            "line \(mark.line), column \(mark.column): \(problem)" + (context.map { " (\($0.text))" } ?? "")
        default:
            "\(error)"
        }
    }

    /// Sets `Tasks[1].EnvId`-style paths, creating mappings on the way.
    static func set(_ object: inout [String: Any], path: String, to value: Any) throws {
        var steps: [Either] = []
        for part in path.split(separator: ".") {
            var name = Substring(part)
            var indexes: [Int] = []
            while let open = name.lastIndex(of: "["), name.hasSuffix("]") {
                guard let index = Int(name[name.index(after: open)..<name.index(before: name.endIndex)]) else {
                    throw PathError(description: "\(part) has an index that is not a number")
                }
                indexes.insert(index, at: 0)
                name = name[..<open]
            }
            steps.append(.key(String(name)))
            steps += indexes.map(Either.index)
        }
        guard !steps.isEmpty else { throw PathError(description: "the path is empty") }
        let root: Any = object
        guard let updated = try assign(root, steps[...], value) as? [String: Any] else {
            throw PathError(description: "the job is not a mapping")
        }
        object = updated
    }

    enum Either {
        case key(String)
        case index(Int)
    }

    private static func assign(_ node: Any?, _ steps: ArraySlice<Either>, _ value: Any) throws -> Any {
        guard let step = steps.first else { return value }
        switch step {
        case .key(let key):
            var mapping = node as? [String: Any] ?? [:]
            mapping[key] = try assign(mapping[key], steps.dropFirst(), value)
            return mapping
        case .index(let index):
            guard var list = node as? [Any], list.indices.contains(index) else {
                throw PathError(description: "there is no element \(index)")
            }
            list[index] = try assign(list[index], steps.dropFirst(), value)
            return list
        }
    }
}

// MARK: - reading jobs

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List jobs, newest first.", discussion: "Example: batchctl jobs --state RUNNING")

    @Option(help: "Only jobs in this state (RUNNING, SUCCEED, FAILED, …)")
    var state: String?
    @Option(help: "At most this many (1–100)")
    var limit = 20
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var body: [String: Any] = ["Limit": limit]
        if let state { body["Filters"] = [["Name": "job-state", "Values": [state]]] }
        let response = await client.gateway.call("DescribeJobs", body)
        client.show(response) {
            printTable(
                ["JOB", "NAME", "STATE", "CREATED", "TASKS DONE"],
                response.objects("JobSet").map { job in
                    let metrics = job["TaskMetrics"] as? [String: Any] ?? [:]
                    let total = metrics.values.compactMap { $0 as? Int }.reduce(0, +)
                    return [
                        job.string("JobId"), job.string("JobName"), job.string("JobState"), job.string("CreateTime"),
                        "\(metrics.int("SucceedCount"))/\(total)",
                    ]
                })
        }
    }
}

struct Describe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A job: its state, why, and its tasks.", discussion: "Example: batchctl describe job-ab12cd34")

    @Argument(help: "The job id")
    var jobId: String
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let job = await client.gateway.call("DescribeJob", ["JobId": jobId])
        client.show(job) {
            print("job      \(job.string("JobId")) (\(job.string("JobName")))")
            print("state    \(job.string("JobState"))" + (job["StateReason"].map { ": \($0)" } ?? ""))
            print("created  \(job.string("CreateTime"))" + (job["EndTime"].map { ", ended \($0)" } ?? ""))
            print("priority \(job.string("Priority"))")
            print("")
            printTable(
                ["TASK", "STATE", "REASON"],
                job.objects("TaskSet").map {
                    [$0.string("TaskName"), $0.string("TaskState"), $0["StateReason"].map { "\($0)" } ?? ""]
                })
        }
    }
}

struct Tasks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A job's tasks with their instances' counts by state.",
        discussion: "Example: batchctl tasks job-ab12cd34")

    @Argument(help: "The job id")
    var jobId: String
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let gateway = client.gateway
        let job = await gateway.call("DescribeJob", ["JobId": jobId])
        var views: [[String: Any]] = []
        for task in job.objects("TaskSet") {
            views.append(
                await gateway.call("DescribeTask", ["JobId": jobId, "TaskName": task.string("TaskName"), "Limit": 1]))
        }
        client.show(["TaskSet": views]) {
            printTable(
                ["TASK", "STATE", "INSTANCES", "SUCCEED", "RUNNING", "WAITING", "FAILED"],
                views.map { view in
                    let m = view["TaskInstanceMetrics"] as? [String: Any] ?? [:]
                    return [
                        view.string("TaskName"), view.string("TaskState"), "\(view.int("TaskInstanceTotalCount"))",
                        "\(m.int("SucceedCount"))", "\(m.int("RunningCount") + m.int("StartingCount"))",
                        "\(m.int("SubmittedCount") + m.int("PendingCount") + m.int("RunnableCount"))",
                        "\(m.int("FailedCount") + m.int("FailedInterruptedCount"))",
                    ]
                })
        }
    }
}

struct Instances: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A task's instances: state, exit code, node, reason.",
        discussion: "Example: batchctl instances job-ab12cd34 align --state FAILED")

    @Argument(help: "The job id")
    var jobId: String
    @Argument(help: "The task name")
    var taskName: String
    @Option(help: "Only instances in this state")
    var state: String?
    @Option(help: "At most this many (1–1000)")
    var limit = 100
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var body: [String: Any] = ["JobId": jobId, "TaskName": taskName, "Limit": limit]
        if let state { body["Filters"] = [["Name": "task-instance-state", "Values": [state]]] }
        let view = await client.gateway.call("DescribeTask", body)
        client.show(view) {
            printTable(
                ["INDEX", "STATE", "EXIT", "NODE", "REASON"],
                view.objects("TaskInstanceSet").map {
                    [
                        $0.string("TaskInstanceIndex"), $0.string("TaskInstanceState"), $0.string("ExitCode"),
                        $0.string("ComputeNodeInstanceId"), $0["StateReason"].map { "\($0)" } ?? "",
                    ]
                })
        }
    }
}

struct Why: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Why a job, a task or an instance is where it is, in plain words.",
        discussion: "Example: batchctl why job-ab12cd34 align 3")

    @Argument(help: "The job id")
    var jobId: String
    @Argument(help: "A task name")
    var taskName: String?
    @Argument(help: "An instance index")
    var index: Int?
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let gateway = client.gateway
        let job = await gateway.call("DescribeJob", ["JobId": jobId])
        var lines: [String] = []
        if taskName == nil {
            lines.append("job \(jobId) is \(job.string("JobState"))" + (job["StateReason"].map { ": \($0)" } ?? "."))
        }
        for task in job.objects("TaskSet") where taskName == nil || task.string("TaskName") == taskName {
            let name = task.string("TaskName")
            let state = task.string("TaskState")
            lines.append("task \(name) is \(state)" + (task["StateReason"].map { ": \($0)" } ?? "."))
            guard taskName != nil || !["SUCCEED"].contains(state) else { continue }
            let view = await gateway.call("DescribeTask", ["JobId": jobId, "TaskName": name, "Limit": 1000])
            let instances = view.objects("TaskInstanceSet").filter {
                index == nil ? $0.string("TaskInstanceState") != "SUCCEED" : $0.int("TaskInstanceIndex") == index
            }
            // Instances that wait for the same reason are said once.
            var groups: [(String, [String])] = []
            for instance in instances {
                let key = "\(instance.string("TaskInstanceState"))" + (instance["StateReason"].map { ": \($0)" } ?? "")
                if let at = groups.firstIndex(where: { $0.0 == key }) {
                    groups[at].1.append(instance.string("TaskInstanceIndex"))
                } else {
                    groups.append((key, [instance.string("TaskInstanceIndex")]))
                }
            }
            for (reason, indexes) in groups {
                let which =
                    indexes.count > 5
                    ? "\(indexes.prefix(5).joined(separator: ", ")) and \(indexes.count - 5) more"
                    : indexes.joined(separator: ", ")
                lines.append("  instance\(indexes.count == 1 ? "" : "s") \(which): \(reason)")
            }
            if index != nil && instances.isEmpty {
                Batchctl.fail("task \(name) has no instance \(index!)")
            }
        }
        if let taskName, !job.objects("TaskSet").contains(where: { $0.string("TaskName") == taskName }) {
            Batchctl.fail("job \(jobId) has no task \(taskName)")
        }
        client.show(["Lines": lines]) { lines.forEach { print($0) } }
    }
}

// MARK: - changing jobs

struct Terminate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a job: instances not started never start, running ones are killed.",
        discussion: "Example: batchctl terminate job-ab12cd34")
    @Argument(help: "The job id") var jobId: String
    @OptionGroup var client: ClientOptions
    func run() async throws {
        client.show(await client.gateway.call("TerminateJob", ["JobId": jobId])) { print("terminating \(jobId)") }
    }
}

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run again what failed in jobs, in DAG order.", discussion: "Example: batchctl retry job-ab12cd34")
    @Argument(help: "The job ids") var jobIds: [String]
    @OptionGroup var client: ClientOptions
    func run() async throws {
        client.show(await client.gateway.call("RetryJobs", ["JobIds": jobIds])) {
            print("retrying \(jobIds.joined(separator: ", "))")
        }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete a finished job.", discussion: "Example: batchctl delete job-ab12cd34")
    @Argument(help: "The job id") var jobId: String
    @OptionGroup var client: ClientOptions
    func run() async throws {
        client.show(await client.gateway.call("DeleteJob", ["JobId": jobId])) { print("deleted \(jobId)") }
    }
}

// MARK: - graph

struct Graph: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "A job's DAG in Graphviz DOT, each task coloured by its state (SVG with --svg when dot is installed).",
        discussion: "Example: batchctl graph job-ab12cd34 --svg dag.svg")

    @Argument(help: "The job id") var jobId: String
    @Option(help: "Also render an SVG to this file with Graphviz's dot") var svg: String?
    @OptionGroup var client: ClientOptions

    static let colours = [
        "SUCCEED": "palegreen", "RUNNING": "lightskyblue", "STARTING": "lightskyblue", "FAILED": "salmon",
        "FAILED_INTERRUPTED": "salmon", "RUNNABLE": "lightyellow", "PENDING": "white", "SUBMITTED": "white",
    ]

    func run() async throws {
        let job = await client.gateway.call("DescribeJob", ["JobId": jobId])
        func quoted(_ text: String) -> String {
            "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        var dot = ["digraph \(quoted(jobId)) {", "  rankdir=LR;", "  node [shape=box, style=\"rounded,filled\"];"]
        for task in job.objects("TaskSet") {
            let state = task.string("TaskState")
            dot.append(
                "  \(quoted(task.string("TaskName"))) [label=\(quoted("\(task.string("TaskName"))\n\(state)")), "
                    + "fillcolor=\(Self.colours[state] ?? "white")];")
        }
        for edge in job.objects("DependenceSet") {
            dot.append("  \(quoted(edge.string("StartTask"))) -> \(quoted(edge.string("EndTask")));")
        }
        dot.append("}")
        let text = dot.joined(separator: "\n") + "\n"
        print(text, terminator: "")
        guard let svg else { return }
        let graphviz = ["/usr/bin/dot", "/usr/local/bin/dot"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let graphviz else { Batchctl.fail("--svg needs Graphviz's dot (apt-get install graphviz)") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: graphviz)
        process.arguments = ["-Tsvg", "-o", svg]
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { Batchctl.fail("dot could not render \(svg)") }
    }
}

// MARK: - environments and templates

struct Envs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute environments: list, create, scale, describe (with nodes), delete.",
        discussion: "Example: batchctl envs create render-farm --nodes 4; batchctl envs scale env-ab12cd34 8",
        subcommands: [List.self, Create.self, Scale.self, DescribeEnv.self, DeleteEnv.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List compute environments.", discussion: "Example: batchctl envs list --output json")
        @OptionGroup var client: ClientOptions
        func run() async throws {
            let response = await client.gateway.call("DescribeComputeEnvs", ["Limit": 100])
            client.show(response) {
                printTable(
                    ["ENV", "NAME", "DESIRED", "RUNNING", "NEXT ACTION"],
                    response.objects("ComputeEnvSet").map {
                        let m = $0["ComputeNodeMetrics"] as? [String: Any] ?? [:]
                        return [
                            $0.string("EnvId"), $0.string("EnvName"), $0.string("DesiredComputeNodeCount"),
                            "\(m.int("RunningCount"))", $0["NextAction"].map { "\($0)" } ?? "",
                        ]
                    })
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a compute environment.", discussion: "Example: batchctl envs create farm --nodes 4")
        @Argument(help: "Its name") var name: String
        @Option(help: "Nodes to keep") var nodes = 1
        @Flag(help: "Run its instances without a sandbox (trusted work)") var noSandbox = false
        @OptionGroup var client: ClientOptions
        func run() async throws {
            var env: [String: Any] = ["EnvName": name, "DesiredComputeNodeCount": nodes]
            if noSandbox { env["Sandbox"] = false }
            let response = await client.gateway.call("CreateComputeEnv", ["ComputeEnv": env])
            client.show(response) { print(response.string("EnvId")) }
        }
    }

    struct Scale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set an environment's node count (busy nodes drain before they go).",
            discussion: "Example: batchctl envs scale env-ab12cd34 8")
        @Argument(help: "The environment id") var envId: String
        @Argument(help: "Nodes to keep") var nodes: Int
        @OptionGroup var client: ClientOptions
        func run() async throws {
            let response = await client.gateway.call(
                "ModifyComputeEnv", ["EnvId": envId, "DesiredComputeNodeCount": nodes])
            client.show(response) { print("\(envId) scaled to \(nodes) nodes") }
        }
    }

    struct DescribeEnv: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "describe", abstract: "An environment and its nodes.",
            discussion: "Example: batchctl envs describe env-ab12cd34")
        @Argument(help: "The environment id") var envId: String
        @OptionGroup var client: ClientOptions
        func run() async throws {
            let env = await client.gateway.call("DescribeComputeEnv", ["EnvId": envId])
            client.show(env) {
                print("env      \(env.string("EnvId")) (\(env.string("EnvName")))")
                print("desired  \(env.string("DesiredComputeNodeCount")) nodes")
                print("")
                printTable(
                    ["NODE", "STATE", "FREE SLOTS", "ORIGIN", "INSTANCE"],
                    env.objects("ComputeNodeSet").map {
                        [
                            $0.string("ComputeNodeId"), $0.string("ComputeNodeState"),
                            $0.string("TaskInstanceNumAvailable"), $0.string("ResourceOrigin"),
                            $0.string("ComputeNodeInstanceId"),
                        ]
                    })
            }
        }
    }

    struct DeleteEnv: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "delete", abstract: "Delete an environment (its nodes drain first).",
            discussion: "Example: batchctl envs delete env-ab12cd34")
        @Argument(help: "The environment id") var envId: String
        @OptionGroup var client: ClientOptions
        func run() async throws {
            client.show(await client.gateway.call("DeleteComputeEnv", ["EnvId": envId])) { print("deleting \(envId)") }
        }
    }
}

struct Templates: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Task templates: list, create from a YAML or JSON file of a Task, delete.",
        discussion: "Example: batchctl templates create renderer task.yaml",
        subcommands: [List.self, Create.self, DeleteTemplate.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List task templates.", discussion: "Example: batchctl templates list")
        @OptionGroup var client: ClientOptions
        func run() async throws {
            let response = await client.gateway.call("DescribeTaskTemplates", ["Limit": 100])
            client.show(response) {
                printTable(
                    ["TEMPLATE", "NAME", "CREATED"],
                    response.objects("TaskTemplateSet").map {
                        [$0.string("TaskTemplateId"), $0.string("TaskTemplateName"), $0.string("CreateTime")]
                    })
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a task template from a file holding a Task.",
            discussion: "Example: batchctl templates create renderer task.yaml")
        @Argument(help: "Its name") var name: String
        @Argument(help: "The Task: .yaml, .yml or .json") var file: String
        @OptionGroup var client: ClientOptions
        func run() async throws {
            let task = try JobFile.load(file)
            let response = await client.gateway.call(
                "CreateTaskTemplate", ["TaskTemplateName": name, "TaskTemplateInfo": task])
            client.show(response) { print(response.string("TaskTemplateId")) }
        }
    }

    struct DeleteTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "delete", abstract: "Delete task templates.",
            discussion: "Example: batchctl templates delete tpl-ab12cd34")
        @Argument(help: "The template ids") var templateIds: [String]
        @OptionGroup var client: ClientOptions
        func run() async throws {
            client.show(await client.gateway.call("DeleteTaskTemplates", ["TaskTemplateIds": templateIds])) {
                print("deleted \(templateIds.joined(separator: ", "))")
            }
        }
    }
}

// MARK: - queues

struct Queues: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each queue's depth, consumers and rates, from RabbitMQ's management API.",
        discussion: """
            Example: batchctl queues
            The management API is BATCH_RABBITMQ_MANAGEMENT_URL, with a user and password; the virtual host is the
            one of BATCH_AMQP_URL (default /).
            """)

    @Option(help: "The management API's URL, with user and password (BATCH_RABBITMQ_MANAGEMENT_URL)")
    var management: String = ProcessInfo.processInfo.environment["BATCH_RABBITMQ_MANAGEMENT_URL"] ?? ""
    @Option(help: "The virtual host (default: BATCH_AMQP_URL's, else /)")
    var vhost: String?
    @Option(help: "text or json")
    var output: OutputFormat = .text

    func run() async throws {
        guard !management.isEmpty else {
            Batchctl.fail("no management URL: set BATCH_RABBITMQ_MANAGEMENT_URL or --management")
        }
        guard var components = URLComponents(string: management), let host = components.host else {
            Batchctl.fail("--management \(management.redactingPassword) is not a URL")
        }
        guard let user = components.user, let password = components.password else {
            Batchctl.fail("--management must name a user and a password (BATCH_RABBITMQ_MANAGEMENT_URL)")
        }
        components.user = nil
        components.password = nil
        let amqpVhost = ProcessInfo.processInfo.environment["BATCH_AMQP_URL"].flatMap { URLComponents(string: $0) }
            .map {
                $0.path.isEmpty || $0.path == "/" ? "/" : String($0.path.dropFirst()).removingPercentEncoding ?? "/"
            }
        let virtualHost = vhost ?? amqpVhost ?? "/"
        let encoded = virtualHost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? virtualHost
        var request = HTTPClientRequest(
            url: "\(components.scheme ?? "http")://\(host):\(components.port ?? 15672)/api/queues/\(encoded)")
        request.headers.add(
            name: "Authorization", value: "Basic " + Data("\(user):\(password)".utf8).base64EncodedString())
        // Uncompressed: a long list of queues compresses past the client's decompression ratio limit.
        request.headers.add(name: "Accept-Encoding", value: "identity")
        let data: Data
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
            guard response.status == .ok else {
                Batchctl.fail("the management API answered \(response.status.code) for virtual host \(virtualHost)")
            }
        } catch {
            Batchctl.fail("cannot reach RabbitMQ's management API at \(host): \(error)")
        }
        guard let queues = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
            Batchctl.fail("the management API's answer is not a list of queues")
        }
        guard output == .text else { return printJSON(queues) }
        func rate(_ queue: [String: Any], _ key: String) -> String {
            let stats = queue["message_stats"] as? [String: Any]
            let details = stats?["\(key)_details"] as? [String: Any]
            return String(format: "%.1f", details?["rate"] as? Double ?? 0)
        }
        printTable(
            ["QUEUE", "READY", "UNACKED", "CONSUMERS", "IN/s", "ACKED/s"],
            queues.map {
                [
                    $0.string("name"), "\($0.int("messages_ready"))", "\($0.int("messages_unacknowledged"))",
                    "\($0.int("consumers"))", rate($0, "publish"), rate($0, "ack"),
                ]
            })
    }
}
