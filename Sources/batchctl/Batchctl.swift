import ArgumentParser
import AsyncHTTPClient
import BatchClient
import BatchCore
import Foundation
import Logging
import Synchronization

/// The command-line client: API calls signed with a user's key pair, and administration.
@main
struct Batchctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batchctl",
        abstract: "Command-line client for Batch.",
        discussion: """
            Examples:
              batchctl admin create-user alice
              batchctl submit examples/render/job.json --set Tasks[0].EnvId=env-ab12cd34 --wait
              batchctl jobs; batchctl tasks job-ab12cd34; batchctl logs job-ab12cd34 render 7 -f
              batchctl call DescribeJob '{"JobId": "job-ab12cd34"}'
            The key pair and the gateway come from --secret-id/--secret-key/--endpoint, a profile named with
            --profile, BATCH_SECRET_ID, BATCH_SECRET_KEY and BATCH_ENDPOINT, the profile BATCH_PROFILE names or
            [default] in ~/.config/batch/config (batchctl configure writes it), or .batch/credentials (JSON:
            secretId, secretKey, endpoint).
            """,
        version: BatchRelease.version,
        subcommands: [
            Submit.self, Jobs.self, Describe.self, Tasks.self, Instances.self, Watch.self, Logs.self, Why.self,
            Graph.self, Terminate.self, Retry.self, Delete.self, Envs.self, Templates.self, Queues.self, Admin.self,
            Call.self, Configure.self,
        ])

    /// Prints one line on stderr and exits non-zero, as every failing batchctl command does.
    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("batchctl: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

// MARK: - admin

/// Users, key pairs, quotas and node keys through the gateway's admin actions, signed with an operator's key pair.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage users, key pairs, quotas and node keys (admin actions; needs an operator's key pair).",
        discussion: """
            Example: BATCH_CREDENTIALS=.batch/operator.json batchctl admin create-user alice --output json
            The operator's key pair is the file the gateway writes on first start (APIGateway \
            --operator-credentials FILE), given as BATCH_CREDENTIALS or --secret-id/--secret-key.
            """,
        subcommands: [
            CreateUser.self, DisableUser.self, EnableUser.self, SetQuota.self, KeyPairs.self, AddKeyPair.self,
            RevokeKeyPair.self, NodeKeyCommand.self,
        ])

    struct CreateUser: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a user and a key pair; prints the SecretId and the SecretKey (shown only here).",
            discussion: "Example: batchctl admin create-user alice")

        @Argument(help: "The user's name: letters, digits, - _ . @")
        var name: String

        @Flag(help: "The user is an operator too: may call the admin actions.")
        var `operator` = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let created = await client.gateway.call(
                "CreateUser", AdminAPI.CreateUserRequest(userName: name, operator: `operator`),
                returning: AdminAPI.CreateUserResponse.self)
            switch client.output {
            case .text:
                print("UserId:    \(created.userId)\nSecretId:  \(created.secretId)\nSecretKey: \(created.secretKey)")
            case .json:
                let object: [String: Any] = [
                    "userId": created.userId, "name": created.userName, "secretId": created.secretId,
                    "secretKey": created.secretKey, "operator": created.operator,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }

    struct NodeKeyCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node-key",
            abstract: "Print the key an environment's nodes hold: what an executor started by hand needs.",
            discussion: """
                Example: batchctl admin node-key env-ab12cd34 > node.key
                         ExecutorService --env-id env-ab12cd34 --node-key-file node.key \\
                           --amqp-url amqp://batch-node-env-ab12cd34@broker:5672/
                The node derives its broker user's password from the key. Keep it like a password: it lets a machine
                take the environment's work and read its run messages.
                """)

        @Argument(help: "The compute environment's id.")
        var envId: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let answer = await client.gateway.call(
                "DescribeComputeEnvNodeKey", AdminAPI.NodeKeyRequest(envId: envId),
                returning: AdminAPI.NodeKeyResponse.self)
            print(answer.nodeKey)
        }
    }

    struct DisableUser: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a user: every key pair of theirs is refused from now on.",
            discussion: "Example: batchctl admin disable-user alice")

        @Argument var name: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = await client.gateway.call(
                "DisableUser", AdminAPI.UserNameRequest(userName: name), returning: AdminAPI.Empty.self)
        }
    }

    struct EnableUser: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enable a disabled user again.", discussion: "Example: batchctl admin enable-user alice")

        @Argument var name: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = await client.gateway.call(
                "EnableUser", AdminAPI.UserNameRequest(userName: name), returning: AdminAPI.Empty.self)
        }
    }

    struct KeyPairs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "key-pairs",
            abstract: "List a user's key pairs (never their secrets), active and revoked.",
            discussion: "Example: batchctl admin key-pairs alice")

        @Argument var name: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let response = await client.gateway.call("DescribeUserKeyPairs", ["UserName": name])
            client.show(response) {
                printTable(
                    ["SECRET ID", "STATUS", "CREATED"],
                    response.objects("KeyPairs").map {
                        [$0.string("SecretId"), $0.string("Status"), $0.string("CreatedTime")]
                    })
            }
        }
    }

    struct AddKeyPair: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-key-pair",
            abstract: "Give a user another key pair; prints its SecretId and SecretKey (shown only here).",
            discussion: """
                Example: batchctl admin add-key-pair alice
                To rotate a key pair: add one, move the user's clients to it, revoke the old one.
                """)

        @Argument var name: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let created = await client.gateway.call(
                "CreateUserKeyPair", AdminAPI.UserNameRequest(userName: name),
                returning: AdminAPI.KeyPairResponse.self)
            switch client.output {
            case .text:
                print("SecretId:  \(created.secretId)\nSecretKey: \(created.secretKey)")
            case .json:
                let object = ["name": created.userName, "secretId": created.secretId, "secretKey": created.secretKey]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }

    struct RevokeKeyPair: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke-key-pair",
            abstract: "Revoke one of a user's key pairs for good: refused by every gateway within seconds.",
            discussion: "Example: batchctl admin revoke-key-pair alice AKID…")

        @Argument var name: String
        @Argument(help: "The SecretId of the key pair.")
        var secretId: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = await client.gateway.call(
                "RevokeUserKeyPair", AdminAPI.RevokeKeyPairRequest(userName: name, secretId: secretId),
                returning: AdminAPI.Empty.self)
        }
    }

    struct SetQuota: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-quota",
            abstract: "Set a user's quotas over the gateway's defaults; 0 returns one to the default.",
            discussion: "Example: batchctl admin set-quota snakemake --jobs 20000")

        @Argument var name: String
        @Option(help: "Jobs the user may keep (ended ones count until deleted or past the retention).")
        var jobs: Int?
        @Option(help: "Task templates the user may keep.")
        var templates: Int?
        @Option(help: "Compute environments the user may keep.")
        var envs: Int?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = AdminAPI.ModifyUserQuotaRequest(
                userName: name, jobQuota: jobs, taskTemplateQuota: templates, computeEnvQuota: envs)
            _ = await client.gateway.call("ModifyUserQuota", request, returning: AdminAPI.Empty.self)
        }
    }
}

// MARK: - call

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call an API action with a JSON body and print the JSON response.",
        discussion: """
            Example: batchctl call SubmitJob @job.json
            The key pair comes from --secret-id/--secret-key, BATCH_SECRET_ID/BATCH_SECRET_KEY, or
            .batch/credentials (JSON with secretId, secretKey, endpoint).
            """)

    @Argument(help: "The action, e.g. DescribeJob")
    var action: String

    @Argument(help: "The request body: JSON, or @FILE to read it from a file (default {})")
    var body: String = "{}"

    @OptionGroup var client: ClientOptions

    func run() async throws {
        var payload = Array(body.utf8)
        if body.hasPrefix("@") {
            guard let data = FileManager.default.contents(atPath: String(body.dropFirst())) else {
                Batchctl.fail("cannot read \(body.dropFirst())")
            }
            payload = Array(data)
        }
        guard (try? JSONSerialization.jsonObject(with: Data(payload))) is [String: Any] else {
            Batchctl.fail("the request body is not a JSON object")
        }
        let inner = await client.gateway.call(action, payload)
        let pretty = try JSONSerialization.data(withJSONObject: inner, options: [.prettyPrinted, .sortedKeys])
        print(String(decoding: pretty, as: UTF8.self))
    }
}

/// Follows a job to its end, printing each task's progress whenever it changes.
struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job to its end: each task's state and instance counts, printed as they change.",
        discussion: "Example: batchctl watch job-ab12cd34    (exits 0 when the job succeeds, 1 otherwise)")

    @Argument(help: "The job id")
    var jobId: String
    @OptionGroup var client: ClientOptions

    func run() async throws { try await Self.follow(jobId, gateway: client.gateway) }

    static func follow(_ jobId: String, gateway: Gateway) async throws {
        let start = ContinuousClock.now
        var last = ""
        while true {
            let job = await gateway.call("DescribeJob", ["JobId": jobId])
            let state = job["JobState"] as? String ?? "?"
            var lines: [String] = []
            for task in job["TaskSet"] as? [[String: Any]] ?? [] {
                let name = task["TaskName"] as? String ?? "?"
                let view = await gateway.call("DescribeTask", ["JobId": jobId, "TaskName": name, "Limit": 1])
                let metrics = view["TaskInstanceMetrics"] as? [String: Any] ?? [:]
                func count(_ key: String) -> Int { metrics[key] as? Int ?? 0 }
                let total = view["TaskInstanceTotalCount"] as? Int ?? 0
                let done = count("SucceedCount")
                let failed = count("FailedCount") + count("FailedInterruptedCount")
                let running = count("RunningCount") + count("StartingCount")
                let waiting = count("SubmittedCount") + count("PendingCount") + count("RunnableCount")
                lines.append(
                    Self.line(
                        name, state: task["TaskState"] as? String ?? "?", done: done, running: running,
                        waiting: waiting, failed: failed, total: max(total, done + running + waiting + failed)))
            }
            let block = lines.joined(separator: "\n")
            if block != last {
                let seconds = Double((ContinuousClock.now - start).components.seconds)
                print(String(format: "[%5.0f s] job %@ %@\n", seconds, jobId, state) + block)
                fflush(nil)
                last = block
            }
            switch state {
            case "SUCCEED":
                print("job \(jobId) SUCCEED")
                return
            case "FAILED", "FAILED_INTERRUPTED":
                Batchctl.fail("job \(jobId) \(state): \(job["StateReason"] as? String ?? "a task failed")")
            default:
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// `  align   RUNNING  [#####=====..........]  1/4 done, 2 running, 1 waiting, 0 failed`
    static func line(
        _ name: String, state: String, done: Int, running: Int, waiting: Int, failed: Int, total: Int
    ) -> String {
        let width = 20
        let cells = total == 0 ? 0 : width
        let full = total == 0 ? 0 : done * cells / total
        let busy = total == 0 ? 0 : min(cells - full, (running + failed) * cells / total)
        let bar =
            String(repeating: "#", count: full) + String(repeating: "=", count: busy)
            + String(repeating: ".", count: width - full - busy)
        let padded = name.padding(toLength: max(12, name.count), withPad: " ", startingAt: 0)
        let shownState = state.padding(toLength: 18, withPad: " ", startingAt: 0)
        return
            "  \(padded) \(shownState) [\(bar)] \(done)/\(total) done, \(running) running, \(waiting) waiting, "
            + "\(failed) failed"
    }
}

/// Prints an instance's stdout (or stderr) from its node, following it while it runs with `-f`.
struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an instance's output, while it runs or after; -f follows it until it ends.",
        discussion: "Example: batchctl logs job-ab12cd34 render 7 -f")

    @Argument(help: "The job id")
    var jobId: String
    @Argument(help: "The task name")
    var taskName: String
    @Argument(help: "The instance index (default 0)")
    var index: Int = 0
    @Flag(help: "Print stderr instead of stdout")
    var stderr = false
    @Flag(name: .shortAndLong, help: "Follow: keep printing new output until the instance ends")
    var follow = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let gateway = client.gateway
        var offset = 0
        while true {
            let body: [String: Any] = [
                "JobId": jobId, "TaskName": taskName, "TaskInstanceIndex": index,
                "Stream": stderr ? "stderr" : "stdout", "Offset": offset, "Limit": 1 << 20,
            ]
            let response = await gateway.call(
                "GetTaskInstanceLog", Array(try JSONSerialization.data(withJSONObject: body)))
            let data = (response["Log"] as? String).flatMap { Data(base64Encoded: $0) } ?? Data()
            FileHandle.standardOutput.write(data)
            // Only the kept tail: the node that ran it is gone.
            guard response["Source"] as? String == "NODE" else { return }
            offset = response["NextOffset"] as? Int ?? offset
            if data.isEmpty {
                guard follow, response["Running"] as? Bool == true else { return }
                // Nothing new yet: ask again shortly (the node keeps all the output; nothing is missed).
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}

/// Calls the gateway's API with a signed request; any failure ends the program with one line on stderr.
struct Gateway {
    var credentials: Credentials

    /// HTTP clients by CA file, made once and kept for the process's life (AsyncHTTPClient requires a client to be
    /// shut down before it goes).
    private static let clients = Mutex<[String: HTTPClient]>([:])

    var client: BatchClient {
        let http: HTTPClient
        do {
            http = try Self.clients.withLock { clients in
                guard let path = credentials.caCertificate else { return HTTPClient.shared }
                if let made = clients[path] { return made }
                let made = try BatchClient.httpClient(caCertificate: path)
                clients[path] = made
                return made
            }
        } catch {
            Batchctl.fail("--ca-certificate \(credentials.caCertificate ?? ""): \(error)")
        }
        let keyPair = credentials.secretID.flatMap { id in
            credentials.secretKey.map { BatchClient.KeyPair(secretID: id, secretKey: $0) }
        }
        return BatchClient(endpoint: credentials.host, https: credentials.https, keyPair: keyPair, http: http)
    }

    /// The `Response` object of a successful call with a JSON body.
    func call(_ action: String, _ body: [String: Any]) async -> [String: Any] {
        guard let payload = try? JSONSerialization.data(withJSONObject: body) else {
            Batchctl.fail("\(action): the request cannot be encoded as JSON")
        }
        return await call(action, Array(payload))
    }

    /// A typed call: `request` encoded with the API's field names, the `Response` object decoded as `Response`.
    func call<Request: Encodable, Response: Decodable>(
        _ action: String, _ request: Request, returning: Response.Type
    ) async -> Response {
        guard credentials.secretID != nil, credentials.secretKey != nil else {
            Batchctl.fail("no key pair: give --secret-id and --secret-key, or a profile (batchctl configure)")
        }
        do {
            return try await client.call(action, request, returning: Response.self)
        } catch let error as DecodingError {
            Batchctl.fail("\(action): the gateway's answer does not read as expected: \(error)")
        } catch {
            Batchctl.fail("\(error)")
        }
    }

    /// The `Response` object of a successful call.
    func call(_ action: String, _ payload: [UInt8]) async -> [String: Any] {
        guard credentials.secretID != nil, credentials.secretKey != nil else {
            Batchctl.fail("no key pair: give --secret-id and --secret-key, or a profile (batchctl configure)")
        }
        do {
            return try await client.call(action, payload: payload)
        } catch {
            Batchctl.fail("\(error)")
        }
    }
}

/// A key pair and the gateway to use, from options, environment variables, or `.batch/credentials`.
struct Credentials {
    /// `host:port`, or `https://host:port` (`http://` is the default).
    var endpoint: String
    var secretID: String?
    var secretKey: String?
    /// A PEM file of the CA (or certificate) the gateway's certificate must chain to; the system's roots when nil.
    var caCertificate: String?

    var https: Bool { endpoint.hasPrefix("https://") }
    var host: String {
        for scheme in ["https://", "http://"] where endpoint.hasPrefix(scheme) {
            return String(endpoint.dropFirst(scheme.count).prefix { $0 != "/" })
        }
        return endpoint
    }

    /// Each setting from the first that has it: the option; the profile `--profile` names; the environment
    /// variable; the profile `BATCH_PROFILE` names, or `[default]` (``ProfileFile``); the JSON file
    /// `BATCH_CREDENTIALS` (default `.batch/credentials`). A profile named but not in the file is refused.
    static func load(
        endpoint: String?, secretID: String?, secretKey: String?, caCertificate: String? = nil, profile: String? = nil
    ) -> Credentials {
        let environment = ProcessInfo.processInfo.environment
        var file: [String: String] = [:]
        if let data = FileManager.default.contents(atPath: environment["BATCH_CREDENTIALS"] ?? ".batch/credentials"),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        {
            file = object.compactMapValues { $0 as? String }
        }
        let profiles: ProfileFile
        do {
            profiles = try ProfileFile.load()
        } catch let error as ValidationError {
            Batchctl.fail(error.message)
        } catch {
            Batchctl.fail("\(error)")
        }
        let named = profile ?? environment["BATCH_PROFILE"].flatMap { $0.isEmpty ? nil : $0 }
        var settings = profiles.profiles["default"] ?? [:]
        if let named {
            guard let found = profiles.profiles[named] else {
                Batchctl.fail(
                    "profile \(named) is not in \(profiles.path): write it with batchctl configure --profile \(named)")
            }
            settings = found
        }
        func pick(_ option: String?, _ variable: String, _ key: String, _ legacy: String) -> String? {
            option ?? (profile != nil ? settings[key] : nil) ?? environment[variable] ?? settings[key] ?? file[legacy]
        }
        return Credentials(
            endpoint: pick(endpoint, "BATCH_ENDPOINT", "endpoint", "endpoint") ?? "127.0.0.1:8080",
            secretID: pick(secretID, "BATCH_SECRET_ID", "secret_id", "secretId"),
            secretKey: pick(secretKey, "BATCH_SECRET_KEY", "secret_key", "secretKey"),
            caCertificate: pick(caCertificate, "BATCH_CA_CERTIFICATE", "ca_certificate", "caCertificate"))
    }
}

extension String {
    /// The URL with its password replaced by `***`.
    var redactingPassword: String {
        guard var components = URLComponents(string: self), components.password != nil else { return self }
        components.password = "***"
        return components.string ?? self
    }
}
