import AsyncHTTPClient
import BatchCore
import Foundation
import NIOCore
import NIOFoundationCompat
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
    let port: Int
    let environment: [String: String]
    private(set) var processes: [String: Process] = [:]
    private(set) var secretID = ""
    private(set) var secretKey = ""

    static var binDirectory: URL {
        if let path = ProcessInfo.processInfo.environment["BATCH_BIN_DIR"] {
            return URL(fileURLWithPath: path)
        }
        return TestServers.repositoryRoot.appendingPathComponent(".build/debug")
    }

    /// Starts gateway, scheduler and provisioner (which starts the executors); waits until the gateway is ready.
    static func start() async throws -> Stack {
        let amqp = try TestServers.rabbitMQ()
        let (databaseName, databaseURL) = try await TestDatabase.create()
        let vhost = TestServers.uniqueName("test.e2e")
        try await RabbitManagement.createVhost(vhost)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(vhost)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let port = Int.random(in: 20_000..<40_000)
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let environment = [
            "BATCH_AMQP_URL": "amqp://\(amqp.user):\(amqp.password)@\(amqp.host):\(amqp.port)/\(encodedVhost)",
            "BATCH_DATABASE_URL": databaseURL,
            "BATCH_MASTER_KEY": Sealer.Key.generate(id: "e2e").configurationString,
            "BATCH_GATEWAY_PORT": String(port),
            "BATCH_INSECURE_HTTP": "1",
            "BATCH_NODES_DIR": directory.appendingPathComponent("nodes").path,
            "BATCH_EXECUTOR_PATH": binDirectory.appendingPathComponent("ExecutorService").path,
            "BATCH_LOG_LEVEL": "info",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        ]
        let stack = Stack(
            directory: directory, databaseName: databaseName, vhost: vhost, port: port, environment: environment)
        do {
            try await stack.createUser()
            for service in ["APIGateway", "SchedulerService", "ProvisionerService"] {
                try stack.launch(service)
            }
            try await stack.waitUntilReady()
        } catch {
            await stack.stop()
            throw error
        }
        return stack
    }

    private init(directory: URL, databaseName: String, vhost: String, port: Int, environment: [String: String]) {
        self.directory = directory
        self.databaseName = databaseName
        self.vhost = vhost
        self.port = port
        self.environment = environment
    }

    func launch(_ service: String, arguments: [String] = []) throws {
        let process = Process()
        process.executableURL = Self.binDirectory.appendingPathComponent(service)
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = directory
        let log = directory.appendingPathComponent("\(service).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes[service] = process
    }

    /// `batchctl admin create-user`, as an operator would run it.
    private func createUser() async throws {
        let process = Process()
        process.executableURL = Self.binDirectory.appendingPathComponent("batchctl")
        process.arguments = ["admin", "create-user", "e2e-user", "--output", "json"]
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
            let object = try JSONSerialization.jsonObject(with: data) as? [String: String],
            let secretID = object["secretId"], let secretKey = object["secretKey"]
        else {
            throw StackError("batchctl admin create-user failed: \(String(decoding: data, as: UTF8.self))")
        }
        self.secretID = secretID
        self.secretKey = secretKey
    }

    private func waitUntilReady() async throws {
        for _ in 0..<600 {
            if let exited = processes.first(where: { !$0.value.isRunning }) {
                throw StackError("\(exited.key) exited during start-up:\n\(log(exited.key))")
            }
            let request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/readyz")
            if let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(2)),
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

    /// SIGTERM to every service, then removes the database, the vhost and the files.
    func stop() async {
        for process in processes.values where process.isRunning { process.terminate() }
        for process in processes.values { process.waitUntilExit() }
        try? await TestDatabase.drop(databaseName)
        try? await RabbitManagement.deleteVhost(vhost)
        try? FileManager.default.removeItem(at: directory)
    }

    // MARK: API calls

    /// Calls an action signed with the stack's user; returns the `Response` object.
    func call(_ action: String, _ body: [String: Any]) async throws -> [String: Any] {
        let payload = Array(try JSONSerialization.data(withJSONObject: body))
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/")
        request.method = .POST
        for (name, value) in TC3Signature.signedRequestHeaders(
            secretID: secretID, secretKey: secretKey, host: "127.0.0.1:\(port)", action: action, body: payload,
            timestamp: Int(Date().timeIntervalSince1970))
        {
            request.headers.add(name: name, value: value)
        }
        request.body = .bytes(payload)
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let inner = object["Response"] as? [String: Any]
        else { throw StackError("\(action): not a Batch response: \(String(decoding: data, as: UTF8.self))") }
        if let error = inner["Error"] as? [String: Any] {
            throw StackError("\(action): \(error["Code"] ?? "?"): \(error["Message"] ?? "?")")
        }
        return inner
    }

    /// Polls DescribeJob until the job is final and returns its last view. The only wait is on the job's own
    /// progress; the deadline only guards against a hang.
    func waitForJob(_ jobID: String, deadline: Duration = .seconds(180)) async throws -> [String: Any] {
        let end = ContinuousClock.now + deadline
        while ContinuousClock.now < end {
            let job = try await call("DescribeJob", ["JobId": jobID])
            if let state = job["JobState"] as? String, ["SUCCEED", "FAILED", "FAILED_INTERRUPTED"].contains(state) {
                return job
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw StackError(
            "job \(jobID) did not finish\n--- scheduler\n\(log("SchedulerService"))\n--- provisioner\n\(log("ProvisionerService"))"
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

    func createEnv(nodes: Int) async throws -> String {
        let response = try await call(
            "CreateComputeEnv", ["ComputeEnv": ["EnvName": "e2e", "DesiredComputeNodeCount": nodes]])
        return try unwrap(response["EnvId"] as? String)
    }
}

struct StackError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func unwrap<T>(_ value: T?) throws -> T {
    guard let value else { throw StackError("missing value") }
    return value
}
