import AsyncHTTPClient
import BatchClient
import BatchCore
import Foundation
import Messaging
import NIOCore
import NIOFoundationCompat
import NIOSSL
import Persistence
import PostgresNIO
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The four executables started as separate processes against the real servers, isolated from other tests by a
/// database and a RabbitMQ vhost of their own; and a user with a key pair to call the API with.
final class Stack: @unchecked Sendable {
    let directory: URL
    let databaseName: String
    let vhost: String
    /// The gateway's port: it listens on one the kernel picks and writes it to a file the stack reads.
    private(set) var port = 0
    let environment: [String: String]
    private(set) var processes: [String: ServiceProcess] = [:]
    private(set) var secretID = ""
    private(set) var secretKey = ""

    /// The key `env`'s nodes hold: what an executor started by hand gets as `BATCH_NODE_KEY`.
    func nodeKey(_ env: String) throws -> NodeKey {
        try Sealer(configuration: environment["BATCH_MASTER_KEY"]).nodeKey(env: EnvID(rawValue: env))
    }

    /// The stack's environment for an executor started by hand in `env`: its broker and node key, never the master
    /// key or the database.
    func executorEnvironment(_ env: String) throws -> [String: String] {
        var executor = environment.filter {
            !["BATCH_MASTER_KEY", "BATCH_DATABASE_URL"].contains($0.key) && !$0.key.hasSuffix("_AMQP_URL")
        }
        executor["BATCH_AMQP_URL"] = environment["BATCH_EXECUTOR_AMQP_URL"]
        executor["BATCH_NODE_KEY"] = try nodeKey(env).base64
        return executor
    }

    static var binDirectory: URL {
        if let path = ProcessInfo.processInfo.environment["BATCH_BIN_DIR"] {
            return URL(fileURLWithPath: path)
        }
        return TestServers.repositoryRoot.appendingPathComponent(".build/debug")
    }

    /// Runs `body` with a started stack and always stops the stack after.
    static func run<R>(
        tls: Bool = false, settings: [String: String] = [:], _ body: (Stack) async throws -> R
    ) async throws -> R {
        let stack = try await start(tls: tls, settings: settings)
        do {
            let result = try await body(stack)
            await stack.stop()
            return result
        } catch {
            await stack.stop()
            throw error
        }
    }

    /// Starts gateway, scheduler and provisioner (which starts the executors); waits until the gateway is ready.
    /// With `tls`, the gateway serves HTTPS with the CA and certificate it makes on first start (``certificatePath``).
    /// `settings` are more environment variables for the services (quotas, limits).
    static func start(tls: Bool = false, settings: [String: String] = [:]) async throws -> Stack {
        let amqp = try TestServers.rabbitMQ()
        let (databaseName, databaseURL) = try await TestDatabase.create()
        let vhost = TestServers.uniqueName("test.e2e")
        try await RabbitManagement.createVhost(vhost)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(vhost)
        // The tests' "shared file system": instances (as the node's unprivileged user) write there.
        // The tests' storage: `file://` paths may be inside `shared` and `data` (the storage roots), nowhere else.
        for name in ["shared", "data"] {
            try FileManager.default.createDirectory(
                at: directory.appendingPathComponent(name), withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o1777])
        }
        var security = ["BATCH_INSECURE_HTTP": "1"]
        if tls {
            // The gateway makes its own CA and certificate on first start (no certificate given, no plain HTTP);
            // clients trust the CA (``certificatePath``).
            security = ["BATCH_TLS_DIRECTORY": directory.appendingPathComponent("tls").path]
        }
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        // Each service connects as its own broker user, as `scripts/servers env` sets them up, on this vhost.
        try await RabbitManagement.grantRoles(vhost: vhost)
        var roles: [String: String] = [:]
        for role in ["GATEWAY", "SCHEDULER", "PROVISIONER", "EXECUTOR"] {
            let name = "BATCH_\(role)_AMQP_URL"
            guard let url = ProcessInfo.processInfo.environment[name].flatMap({ try? AMQPURL($0) }) else {
                throw StackError("\(name) is not set: run eval \"$(scripts/servers env)\" first")
            }
            roles[name] = "amqp://\(url.user):\(url.password)@\(url.host):\(url.port)/\(encodedVhost)"
        }
        let environment = [
            // What the services fall back to, and the tests' own connections: the broker's administrator.
            "BATCH_AMQP_URL": "amqp://\(amqp.user):\(amqp.password)@\(amqp.host):\(amqp.port)/\(encodedVhost)",
            "BATCH_DATABASE_URL": databaseURL,
            "BATCH_MASTER_KEY": Sealer.Key.generate(id: "e2e").configurationString,
            "BATCH_GATEWAY_PORT": "0",
            "BATCH_GATEWAY_PORT_FILE": directory.appendingPathComponent("gateway.port").path,
            // The gateway writes an operator's key pair here on start; `batchctl admin` signs with it.
            "BATCH_OPERATOR_CREDENTIALS": directory.appendingPathComponent("operator.json").path,
            "BATCH_NODES_DIR": directory.appendingPathComponent("nodes").path,
            "BATCH_EXECUTOR_PATH": binDirectory.appendingPathComponent("ExecutorService").path,
            "BATCH_LOG_LEVEL": "info",
            // Two slots a node, as on the 2-core machine the tests were written on, whatever cores this one reports.
            "BATCH_NODE_SLOTS": "2",
            // Sandboxed instances see this directory (the tests' "shared file system") and nothing else of the node.
            "BATCH_SHARED_PATHS": directory.appendingPathComponent("shared").path,
            "BATCH_STORAGE_ROOTS": ["shared", "data"].map { directory.appendingPathComponent($0).path }
                .joined(separator: ":"),
            "BATCH_S3_ENDPOINT": ProcessInfo.processInfo.environment["BATCH_S3_ENDPOINT"] ?? "",
            // The provisioner makes each environment's nodes' broker user with it.
            "BATCH_RABBITMQ_MANAGEMENT_URL": ProcessInfo.processInfo.environment["BATCH_RABBITMQ_MANAGEMENT_URL"] ?? "",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        ].merging(roles) { $1 }.merging(security) { $1 }.merging(settings) { $1 }
        let stack = Stack(
            directory: directory, databaseName: databaseName, vhost: vhost, environment: environment,
            tls: tls)
        do {
            for service in ["APIGateway", "SchedulerService", "ProvisionerService"] {
                try stack.launch(service)
            }
            try await stack.waitUntilReady()
            try await stack.createUser()
        } catch {
            await stack.stop()
            throw error
        }
        return stack
    }

    let tls: Bool
    /// A storage root that instances (as the node's unprivileged user) may write: `file://` data goes here.
    var data: URL { directory.appendingPathComponent("data") }
    /// With `tls`, the CA the gateway made and signed its certificate with.
    var certificatePath: String { directory.appendingPathComponent("tls/ca.pem").path }
    var endpoint: String { "127.0.0.1:\(port)" }

    private init(
        directory: URL, databaseName: String, vhost: String, environment: [String: String], tls: Bool
    ) {
        self.directory = directory
        self.databaseName = databaseName
        self.vhost = vhost
        self.environment = environment
        self.tls = tls
    }

    /// An HTTP client for this stack: HTTPS accepting the stack's own certificate when `tls`.
    lazy var http: HTTPClient = {
        guard tls else { return HTTPClient.shared }
        var configuration = HTTPClient.Configuration()
        var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
        tlsConfiguration.certificateVerification = .none
        configuration.tlsConfiguration = tlsConfiguration
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    var baseURL: String { "\(tls ? "https" : "http")://\(endpoint)" }

    func launch(_ service: String, arguments: [String] = []) throws {
        processes[service] = try ServiceProcess(
            Self.binDirectory.appendingPathComponent(service).path, arguments, environment: environment,
            log: directory.appendingPathComponent("\(service).log").path)
    }

    /// A user's key pair.
    struct User: Sendable {
        var name: String
        var secretID: String
        var secretKey: String
    }

    /// `batchctl admin create-user NAME`, as an operator would run it.
    func createUser(_ name: String) async throws -> User {
        let result = try await admin(["create-user", name, "--output", "json"])
        guard result.status == 0,
            let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let secretID = object["secretId"] as? String, let secretKey = object["secretKey"] as? String
        else {
            throw StackError("batchctl admin create-user failed: \(result.stderr)")
        }
        return User(name: name, secretID: secretID, secretKey: secretKey)
    }

    /// `batchctl admin ARGUMENTS`, signed with the operator's key pair the gateway wrote.
    func admin(_ arguments: [String]) async throws -> TestServers.ProgramResult {
        try await batchctl(["admin"] + arguments, credentials: environment["BATCH_OPERATOR_CREDENTIALS"]!)
    }

    /// `batchctl ARGUMENTS` against this stack's gateway, signed with the key pair in the `credentials` file; none of
    /// the services' settings reach it.
    func batchctl(_ arguments: [String], credentials: String) async throws -> TestServers.ProgramResult {
        var client = ["BATCH_CREDENTIALS": credentials, "BATCH_ENDPOINT": baseURL, "PATH": "/usr/bin:/bin"]
        if tls { client["BATCH_CA_CERTIFICATE"] = certificatePath }
        return try await TestServers.run(
            Self.binDirectory.appendingPathComponent("batchctl").path, arguments, environment: client)
    }

    private func createUser() async throws {
        let user = try await createUser("e2e-user")
        secretID = user.secretID
        secretKey = user.secretKey
    }

    private func waitUntilReady() async throws {
        for _ in 0..<600 {
            if let exited = processes.first(where: { !$0.value.isRunning }) {
                throw StackError("\(exited.key) exited during start-up:\n\(log(exited.key))")
            }
            if port == 0 {
                let text = try? String(contentsOfFile: environment["BATCH_GATEWAY_PORT_FILE"]!, encoding: .utf8)
                port = text.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
                if port == 0 {
                    try await Task.sleep(for: .milliseconds(100))
                    continue
                }
            }
            let request = HTTPClientRequest(url: "\(baseURL)/readyz")
            if let response = try? await http.execute(request, timeout: .seconds(2)),
                response.status == .ok
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw StackError("the gateway did not become ready:\n\(log("APIGateway"))")
    }

    func log(_ service: String) -> String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("\(service).log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(30).joined(separator: "\n")
    }

    /// SIGTERM to every service (SIGKILL to those still running a minute later, so that a service stuck in its
    /// shutdown fails its test instead of hanging the run), then removes the database, the vhost and the files.
    func stop() async {
        if tls { try? await http.shutdown() }
        for process in processes.values where process.isRunning { process.signal(SIGTERM) }
        let running = Array(processes.values)
        let deadline = Task {
            try await Task.sleep(for: .seconds(60))
            for process in running { process.signal(SIGKILL) }
        }
        for process in running { await process.wait() }
        deadline.cancel()
        try? await TestDatabase.drop(databaseName)
        try? await RabbitManagement.deleteNodeUsers(vhost: vhost)
        try? await RabbitManagement.deleteVhost(vhost)
        // BATCH_KEEP_STACKS=1 keeps the logs and work dirs for a look after the run.
        if ProcessInfo.processInfo.environment["BATCH_KEEP_STACKS"] != "1" {
            try? FileManager.default.removeItem(at: directory)
        }
    }

    // MARK: API calls

    /// Calls an action signed with the stack's first user, or `user`; returns the `Response` object, or throws
    /// ``APICallError`` with the API's code.
    func call(_ action: String, _ body: [String: Any], as user: User? = nil) async throws -> [String: Any] {
        try await call(action, Array(try JSONSerialization.data(withJSONObject: body)), as: user)
    }

    /// The API client of this stack, signing with its first user.
    var client: BatchClient {
        BatchClient(
            endpoint: endpoint, https: tls, keyPair: BatchClient.KeyPair(secretID: secretID, secretKey: secretKey),
            http: http)
    }

    /// Sends `body` with exactly `headers` (no signing added); returns the HTTP status and the `Response` object.
    func send(headers: [(String, String)], body: [UInt8]) async throws -> (status: Int, response: [String: Any]) {
        try await client.send(headers: headers, body: body)
    }

    /// Calls an action with a raw body, signed with the stack's first user, or `user`; returns the `Response`
    /// object, or throws ``APICallError`` with the API's code.
    func call(_ action: String, _ payload: [UInt8], as user: User? = nil) async throws -> [String: Any] {
        do {
            return try await client.call(
                action, payload: payload, as: user.map { .init(secretID: $0.secretID, secretKey: $0.secretKey) })
        } catch BatchClient.Failure.api(let action, let code, let message, let status) {
            throw APICallError(action: action, code: code, message: message, status: status)
        } catch BatchClient.Failure.malformed(let action, let status, let body) {
            throw StackError("\(action): not a Batch response (HTTP \(status)): \(body)")
        }
    }

    /// Polls DescribeJob until the job is final and returns its last view. The only wait is on the job's own
    /// progress; the deadline only guards against a hang.
    func waitForJob(
        _ jobID: String, until states: Set<String> = ["SUCCEED", "FAILED", "FAILED_INTERRUPTED"],
        deadline: Duration = .seconds(180)
    ) async throws -> [String: Any] {
        let end = ContinuousClock.now + deadline
        while ContinuousClock.now < end {
            let job = try await call("DescribeJob", ["JobId": jobID])
            if let state = job["JobState"] as? String, states.contains(state) {
                return job
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw StackError(
            "job \(jobID) did not finish\n--- scheduler\n\(log("SchedulerService"))\n--- provisioner\n\(log("ProvisionerService"))"
                + "\n--- gateway\n\(log("APIGateway"))"
        )
    }

    /// Rows in a table of the stack's database, read directly.
    func rowCount(_ table: String) async throws -> Int {
        let key = try Sealer(configuration: environment["BATCH_MASTER_KEY"]).current
        return try await TestDatabase.withDatabase(url: environment["BATCH_DATABASE_URL"]!, key: key, prepare: false) {
            database in
            var count = 0
            for try await value in try await database.client.query(
                PostgresQuery(unsafe: "SELECT count(*) FROM \(table)")
            )
            .decode(Int.self) {
                count = value
            }
            return count
        }
    }

    /// The first column of a query's rows, as text, read directly from the stack's database.
    func query(_ sql: String) async throws -> [String] {
        let key = try Sealer(configuration: environment["BATCH_MASTER_KEY"]).current
        return try await TestDatabase.withDatabase(url: environment["BATCH_DATABASE_URL"]!, key: key, prepare: false) {
            database in
            var values: [String] = []
            for try await value in try await database.client.query(PostgresQuery(unsafe: sql)).decode(String.self) {
                values.append(value)
            }
            return values
        }
    }

    func createEnv(nodes: Int) async throws -> String {
        let response = try await call(
            "CreateComputeEnv", ["ComputeEnv": ["EnvName": "e2e", "DesiredComputeNodeCount": nodes]])
        return try unwrap(response["EnvId"] as? String)
    }
}

/// An API error answer: its code and message.
struct APICallError: Error, CustomStringConvertible {
    var action: String
    var code: String
    var message: String
    var status: Int
    var description: String { "\(action): \(code): \(message)" }
}

struct StackError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func unwrap<T>(_ value: T?) throws -> T {
    guard let value else { throw StackError("missing value") }
    return value
}

extension Stack {
    /// The stdout of each instance of a task, by index.
    func stdout(_ jobID: String, _ task: String) async throws -> [Int: String] {
        let logs = try await call("DescribeTaskLogs", ["JobId": jobID, "TaskName": task])
        var result: [Int: String] = [:]
        for instance in try unwrap(logs["TaskInstanceLogSet"] as? [[String: Any]]) {
            let index = instance["TaskInstanceIndex"] as? Int ?? -1
            result[index] =
                (instance["StdoutLog"] as? String).flatMap { Data(base64Encoded: $0) }.map {
                    String(decoding: $0, as: UTF8.self)
                } ?? ""
        }
        return result
    }
}
