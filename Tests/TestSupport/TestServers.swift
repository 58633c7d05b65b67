import AsyncHTTPClient
import Foundation
import Logging
import Messaging
import NIOCore
import NIOFoundationCompat
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The real RabbitMQ and PostgreSQL that integration tests use: started by `scripts/servers start`, found through
/// `BATCH_AMQP_URL`, `BATCH_RABBITMQ_MANAGEMENT_URL` and `BATCH_DATABASE_URL` (defaults match the script).
public enum TestServers {
    public struct Missing: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    public static let amqpURLString =
        ProcessInfo.processInfo.environment["BATCH_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"
    public static let managementURL =
        ProcessInfo.processInfo.environment["BATCH_RABBITMQ_MANAGEMENT_URL"] ?? "http://guest:guest@127.0.0.1:15672/"
    public static let databaseURLString =
        ProcessInfo.processInfo.environment["BATCH_DATABASE_URL"] ?? "postgres://batch:batch@127.0.0.1:55432/batch"

    /// The repository's root directory (for `scripts/servers` and the built executables).
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The broker's URL, after checking that it accepts TCP connections; otherwise a clear error.
    public static func rabbitMQ() throws -> AMQPURL {
        let url = try AMQPURL(amqpURLString)
        guard canConnect(host: url.host, port: url.port) else {
            throw Missing(
                description:
                    "RabbitMQ is not reachable at \(url.host):\(url.port); start it with `scripts/servers start`")
        }
        return url
    }

    /// The broker's TLS URL (`BATCH_AMQPS_URL`, which `scripts/servers env` prints with its CA file), after
    /// checking that it accepts TCP connections; otherwise a clear error.
    public static func rabbitMQOverTLS() throws -> AMQPURL {
        guard let string = ProcessInfo.processInfo.environment["BATCH_AMQPS_URL"] else {
            throw Missing(description: "BATCH_AMQPS_URL is not set: eval \"$(scripts/servers env)\"")
        }
        let url = try AMQPURL(string)
        guard canConnect(host: url.host, port: url.port) else {
            throw Missing(
                description:
                    "RabbitMQ's TLS port is not reachable at \(url.host):\(url.port); start it with "
                    + "`scripts/servers start`")
        }
        return url
    }

    /// PostgreSQL's URL, after checking that it accepts TCP connections; otherwise a clear error.
    public static func postgreSQL() throws -> URLComponents {
        guard let url = URLComponents(string: databaseURLString), let host = url.host else {
            throw Missing(description: "BATCH_DATABASE_URL is not a postgres:// URL")
        }
        guard canConnect(host: host, port: url.port ?? 5432) else {
            throw Missing(
                description:
                    "PostgreSQL is not reachable at \(host):\(url.port ?? 5432); start it with `scripts/servers start`")
        }
        return url
    }

    /// The S3-compatible object store `scripts/servers start` runs (moto, checking signatures), with the key pair
    /// it made: from `BATCH_S3_ENDPOINT`, `BATCH_S3_ACCESS_KEY_ID` and `BATCH_S3_SECRET_ACCESS_KEY`.
    public static func objectStore() throws -> (endpoint: URL, accessKeyID: String, secretAccessKey: String) {
        let environment = ProcessInfo.processInfo.environment
        guard let endpointString = environment["BATCH_S3_ENDPOINT"], let endpoint = URL(string: endpointString),
            let key = environment["BATCH_S3_ACCESS_KEY_ID"], let secret = environment["BATCH_S3_SECRET_ACCESS_KEY"]
        else {
            throw Missing(
                description:
                    "no object store configured: run `scripts/servers start` and `eval \"$(scripts/servers env)\"` "
                    + "(BATCH_S3_ENDPOINT, BATCH_S3_ACCESS_KEY_ID, BATCH_S3_SECRET_ACCESS_KEY)")
        }
        guard canConnect(host: endpoint.host ?? "127.0.0.1", port: endpoint.port ?? 80) else {
            throw Missing(
                description:
                    "the object store is not reachable at \(endpointString); start it with `scripts/servers start`")
        }
        return (endpoint, key, secret)
    }

    public static func uniqueName(_ prefix: String) -> String {
        "\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
    }

    static func canConnect(host: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else { return false }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return result == 0
    }
}

/// The RabbitMQ management API, for what tests need to see or break from outside a client.
public enum RabbitManagement {
    /// The management API's answer to a request was not a success.
    public struct Refusal: Error, CustomStringConvertible {
        public var description: String
    }

    struct Connection: Decodable {
        var name: String
        var client_properties: [String: JSONValue]?
    }

    enum JSONValue: Decodable {
        case string(String)
        case other
        init(from decoder: any Decoder) throws {
            if let string = try? decoder.singleValueContainer().decode(String.self) {
                self = .string(string)
            } else {
                self = .other
            }
        }
    }

    /// Closes, from the broker's side, every connection whose `connection_name` is `connectionName`, waiting up to
    /// 20 s for the management API to list it (its statistics lag behind new connections). Returns how many closed.
    @discardableResult
    public static func closeConnections(named connectionName: String) async throws -> Int {
        for _ in 0..<100 {
            let closed = try await closeListedConnections(named: connectionName)
            if closed > 0 { return closed }
            try await Task.sleep(for: .milliseconds(200))
        }
        return 0
    }

    static func closeListedConnections(named connectionName: String) async throws -> Int {
        let connections: [Connection] = try await get("api/connections?columns=name,client_properties")
        var closed = 0
        for connection in connections {
            guard case .string(let name)? = connection.client_properties?["connection_name"], name == connectionName
            else { continue }
            let encoded = connection.name.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            var request = try request("api/connections/\(encoded)")
            request.method = .DELETE
            let response = try await send(request)
            if response.status.code < 300 { closed += 1 }
        }
        return closed
    }

    /// Creates a vhost and gives the management user every permission on it.
    public static func createVhost(_ name: String) async throws {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var create = try request("api/vhosts/\(encoded)")
        create.method = .PUT
        let created = try await send(create)
        guard created.status.code < 300 else {
            throw TestServers.Missing(description: "cannot create vhost \(name): HTTP \(created.status.code)")
        }
        let user = URLComponents(string: TestServers.managementURL)?.user ?? "guest"
        var permissions = try request("api/permissions/\(encoded)/\(user)")
        permissions.method = .PUT
        permissions.headers.add(name: "Content-Type", value: "application/json")
        permissions.body = .bytes(ByteBuffer(string: #"{"configure":".*","write":".*","read":".*"}"#))
        let response = try await send(permissions)
        guard response.status.code < 300 else {
            throw TestServers.Missing(
                description: "cannot set permissions on vhost \(name): HTTP \(response.status.code)")
        }
    }

    /// Gives each service's broker user (``Topology/roles``, made by `scripts/servers`) its permissions on `vhost`.
    public static func grantRoles(vhost: String) async throws {
        let encoded = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        for role in Topology.roles {
            let status = try await put(
                "api/permissions/\(encoded)/\(role.user)",
                ["configure": role.configure, "write": role.write, "read": role.read])
            guard status < 300 else {
                throw TestServers.Missing(
                    description: "cannot give \(role.user) its permissions on vhost \(vhost) (HTTP \(status)): "
                        + "scripts/servers start makes the services' broker users")
            }
            guard let events = role.eventsWrite else { continue }
            let topic = try await put(
                "api/topic-permissions/\(encoded)/\(role.user)",
                ["exchange": Topology.eventsExchange, "write": events, "read": "^$"])
            guard topic < 300 else {
                throw TestServers.Missing(description: "cannot set \(role.user)'s topic permissions: HTTP \(topic)")
            }
        }
    }

    /// PUTs `object` as JSON to the management API's `path`; returns the answer's status.
    static func put(_ path: String, _ object: [String: String]) async throws -> UInt {
        var request = try request(path)
        request.method = .PUT
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: object)))
        return try await send(request).status.code
    }

    /// The permissions the broker holds for `user` on `vhost`: configure, write, read, and its topic permission's
    /// write on `batch.events` (nil for none).
    public static func permissions(of user: String, vhost: String) async throws -> (
        configure: String, write: String, read: String, eventsWrite: String?
    )? {
        let encoded = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let permissions: [String: String]? = try? await get("api/permissions/\(encoded)/\(user)")
        guard let permissions else { return nil }
        let topics: [[String: String]] = (try? await get("api/topic-permissions/\(encoded)/\(user)")) ?? []
        return (
            permissions["configure"] ?? "", permissions["write"] ?? "", permissions["read"] ?? "",
            topics.first { $0["exchange"] == Topology.eventsExchange }?["write"]
        )
    }

    /// The users of the connections open to `vhost`.
    public static func connectionUsers(vhost: String) async throws -> Set<String> {
        let encoded = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        struct Connection: Decodable { var user: String }
        let connections: [Connection] = try await get("api/vhosts/\(encoded)/connections")
        return Set(connections.map(\.user))
    }

    /// Deletes the broker users of environments' nodes (`batch-node-…`) that have permissions on `vhost`: users
    /// outlive a vhost.
    public static func deleteNodeUsers(vhost: String) async throws {
        let encoded = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        struct Permission: Decodable { var user: String }
        let permissions: [Permission] = try await get("api/vhosts/\(encoded)/permissions")
        for user in permissions.map(\.user) where user.hasPrefix("batch-node-") {
            var request = try request("api/users/\(user)")
            request.method = .DELETE
            _ = try await send(request)
        }
    }

    public static func deleteVhost(_ name: String) async throws {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var request = try request("api/vhosts/\(encoded)")
        request.method = .DELETE
        _ = try await send(request)
    }

    /// Publishes a raw message (a string body) to `exchange` in `vhost`, as a broken client would; true when the
    /// broker routed it to a queue.
    public static func publish(
        vhost: String, exchange: String, routingKey: String, type: String, body: String
    ) async throws -> Bool {
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var request = try request("api/exchanges/\(encodedVhost)/\(exchange)/publish")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        let message: [String: Any] = [
            "properties": ["type": type, "delivery_mode": 2], "routing_key": routingKey, "payload": body,
            "payload_encoding": "string",
        ]
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: message)))
        let response = try await send(request)
        let answer = try await response.body.collect(upTo: 1 << 20)
        guard response.status.code < 300,
            let object = try JSONSerialization.jsonObject(with: Data(buffer: answer)) as? [String: Any]
        else { throw TestServers.Missing(description: "cannot publish to \(exchange): HTTP \(response.status.code)") }
        return object["routed"] as? Bool ?? false
    }

    /// The bodies of up to `count` messages waiting in `queue` of `vhost`, left in the queue.
    public static func peek(vhost: String, queue: String, count: Int = 100) async throws -> [String] {
        try await peekMessages(vhost: vhost, queue: queue, count: count).map(\.body)
    }

    /// Up to `count` messages waiting in `queue` of `vhost`, oldest first, with the routing keys they were published
    /// with; left in the queue.
    public static func peekMessages(vhost: String, queue: String, count: Int = 100) async throws -> [(
        routingKey: String, body: String
    )] {
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let encodedQueue = queue.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var request = try request("api/queues/\(encodedVhost)/\(encodedQueue)/get")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(
            ByteBuffer(string: #"{"count":\#(count),"ackmode":"ack_requeue_true","encoding":"auto"}"#))
        let response = try await send(request)
        let answer = try await response.body.collect(upTo: 16 << 20)
        guard response.status.code < 300,
            let messages = try JSONSerialization.jsonObject(with: Data(buffer: answer)) as? [[String: Any]]
        else { throw TestServers.Missing(description: "cannot read queue \(queue): HTTP \(response.status.code)") }
        return messages.compactMap { message in
            guard let body = message["payload"] as? String, let key = message["routing_key"] as? String else {
                return nil
            }
            return (key, body)
        }
    }

    /// Declares a queue in `vhost` (not durable) and binds it to `exchange` with `routingKey`: a test's copy of the
    /// messages routed there.
    public static func bindQueue(vhost: String, queue: String, exchange: String, routingKey: String) async throws {
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let encodedQueue = queue.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var declare = try request("api/queues/\(encodedVhost)/\(encodedQueue)")
        declare.method = .PUT
        declare.headers.add(name: "Content-Type", value: "application/json")
        declare.body = .bytes(ByteBuffer(string: #"{"durable":false,"auto_delete":false}"#))
        let declared = try await send(declare)
        var bind = try request("api/bindings/\(encodedVhost)/e/\(exchange)/q/\(encodedQueue)")
        bind.method = .POST
        bind.headers.add(name: "Content-Type", value: "application/json")
        bind.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: ["routing_key": routingKey])))
        let bound = try await send(bind)
        guard declared.status.code < 300, bound.status.code < 300 else {
            throw TestServers.Missing(
                description: "cannot bind \(queue) to \(exchange): HTTP \(declared.status.code), \(bound.status.code)")
        }
    }

    /// Deletes queues a test made.
    public static func deleteQueues(_ names: [String]) async throws {
        for name in names {
            let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            var request = try request("api/queues/%2F/\(encoded)")
            request.method = .DELETE
            _ = try await send(request)
        }
    }

    static func get<T: Decodable>(_ path: String) async throws -> T {
        let response = try await send(try request(path))
        let body = try await response.body.collect(upTo: 16 << 20)
        guard response.status.code < 300 else {
            throw Refusal(description: "the management API answered GET \(path) with HTTP \(response.status.code)")
        }
        return try JSONDecoder().decode(T.self, from: Data(buffer: body))
    }

    /// Sends a request to the management API. The API answers slowly, or with a 5xx, while the broker is busy (many
    /// test stacks making and removing vhosts at once): a request is sent again until it gets an answer below 500 or
    /// two minutes have passed. (A message published twice that way is one more poison message in a queue: the tests
    /// that publish look for theirs, not for a count.)
    static func send(_ request: HTTPClientRequest) async throws -> HTTPClientResponse {
        let end = ContinuousClock.now + .seconds(120)
        while true {
            do {
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                if response.status.code < 500 || ContinuousClock.now >= end { return response }
            } catch  where ContinuousClock.now < end && !(error is CancellationError) {
                // A timeout or a refused connection: the next attempt may get through.
            }
            try await Task.sleep(for: .milliseconds(500))
        }
    }

    static func request(_ path: String) throws -> HTTPClientRequest {
        guard let base = URLComponents(string: TestServers.managementURL), let host = base.host else {
            throw TestServers.Missing(description: "BATCH_RABBITMQ_MANAGEMENT_URL is not an http:// URL")
        }
        var request = HTTPClientRequest(url: "http://\(host):\(base.port ?? 15672)/\(path)")
        let credentials = "\(base.user ?? "guest"):\(base.password ?? "guest")"
        request.headers.add(name: "Authorization", value: "Basic \(Data(credentials.utf8).base64EncodedString())")
        // Uncompressed: a long list of connections compresses so well that the client's decompression ratio limit
        // refuses it.
        request.headers.add(name: "Accept-Encoding", value: "identity")
        return request
    }
}

extension Logger {
    /// A logger for tests: warnings and worse, to stderr.
    public static func test(_ label: String, level: Logger.Level = .warning) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel =
            ProcessInfo.processInfo.environment["BATCH_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
            ?? level
        return logger
    }
}

extension TestServers {
    /// What a program printed and how it ended.
    public struct ProgramResult: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs a program to its end and returns its exit status (posix_spawn and waitpid: Foundation's `Process`
    /// sometimes never notices the end of a script that leaves daemons behind).
    public static func runProgram(_ path: String, _ arguments: [String]) async -> Int32 {
        (try? await run(path, arguments, environment: nil, capture: false).status) ?? -1
    }

    /// Runs a program with `environment` (the test's own when nil) and returns its status and output. The program
    /// runs in a process group of its own, which gets SIGKILL when the calling task is cancelled (a test past its
    /// time limit): a stuck program fails its test instead of hanging the run.
    public static func run(
        _ path: String, _ arguments: [String], environment: [String: String]?, capture: Bool = true
    ) async throws -> ProgramResult {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueName("run"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let out = directory.appendingPathComponent("stdout").path
        let err = directory.appendingPathComponent("stderr").path
        // The child's pid while it runs (0 before, -1 once it is reaped): what cancellation kills.
        let child = Mutex<pid_t>(0)
        let status: Int32 = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    var actions = posix_spawn_file_actions_t()
                    posix_spawn_file_actions_init(&actions)
                    defer { posix_spawn_file_actions_destroy(&actions) }
                    // Its own process group may not read a terminal: stdin is empty.
                    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
                    if capture {
                        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                        posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                    }
                    var attributes = posix_spawnattr_t()
                    posix_spawnattr_init(&attributes)
                    defer { posix_spawnattr_destroy(&attributes) }
                    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
                    posix_spawnattr_setpgroup(&attributes, 0)
                    let argv = ([path] + arguments).map { strdup($0) } + [nil]
                    let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
                    defer {
                        argv.forEach { free($0) }
                        envp?.forEach { free($0) }
                    }
                    let spawned: Int32 = child.withLock { child in
                        guard child == 0 else { return ECANCELED }
                        var pid: pid_t = 0
                        let spawned =
                            if let envp { posix_spawn(&pid, path, &actions, &attributes, argv, envp) } else {
                                posix_spawn(&pid, path, &actions, &attributes, argv, environ)
                            }
                        if spawned == 0 { child = pid }
                        return spawned
                    }
                    guard spawned == 0 else {
                        continuation.resume(returning: -1)
                        return
                    }
                    let pid = child.withLock { $0 }
                    var status: Int32 = 0
                    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
                    child.withLock { $0 = -1 }
                    continuation.resume(returning: (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
                }
            }
        } onCancel: {
            child.withLock { child in
                if child > 0 { _ = kill(-child, SIGKILL) } else if child == 0 { child = -1 }
            }
        }
        func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        return ProgramResult(status: status, stdout: capture ? read(out) : "", stderr: capture ? read(err) : "")
    }

    /// A tool `scripts/python-env` installs, found through `variable` (set by `scripts/test`) or under
    /// `.batch/venv/bin`; a clear error when it is not installed.
    public static func pythonTool(_ variable: String, name: String) throws -> String {
        let path =
            ProcessInfo.processInfo.environment[variable]
            ?? repositoryRoot.appendingPathComponent(".batch/venv/bin/\(name)").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw Missing(description: "\(name) is not installed at \(path); run `scripts/python-env`")
        }
        return path
    }
}
