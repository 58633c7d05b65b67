import AsyncHTTPClient
import BatchCore
import Foundation
import Logging
import Messaging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// One broker user per compute environment for its nodes (`batch-node-<env id>`, ``Topology/nodeRole(env:)``): it
/// consumes that environment's work queue and its nodes' queues and nothing else, so a node cannot take, delay or
/// read another environment's work. Made through RabbitMQ's management API (`BATCH_RABBITMQ_MANAGEMENT_URL`, a user
/// that may manage users) when the provisioner first sees the environment, with the environment's node key's
/// `brokerPassword`; removed with the environment. A node the provisioner starts gets its URL; a host attached by
/// hand derives the password from its node key.
actor BrokerUsers {
    let management: URL
    let authorization: String
    /// The broker the nodes connect to: its host, port and vhost (its user and password are replaced).
    let broker: AMQPURL
    let sealer: @Sendable (EnvID) -> NodeKey
    let logger: Logger
    private var made: Set<EnvID> = []

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// nil when `management` names no user and password (the provisioner then gives its nodes the executors'
    /// shared user).
    init?(management: String, broker: AMQPURL, keys: @escaping @Sendable (EnvID) -> NodeKey, logger: Logger) {
        guard var components = URLComponents(string: management), let user = components.user,
            let password = components.password
        else { return nil }
        components.user = nil
        components.password = nil
        guard let url = components.url else { return nil }
        self.management = url
        self.authorization = "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
        self.broker = broker
        self.sealer = keys
        self.logger = logger
    }

    /// The URL `env`'s nodes connect with, once its user exists with its permissions.
    func nodeURL(_ env: EnvID) async throws -> String {
        try await ensure(env)
        var url = broker
        url.user = Topology.nodeUser(env: env.rawValue)
        url.password = sealer(env).brokerPassword
        return url.string
    }

    /// Makes (again) `env`'s nodes' user with its permissions on the nodes' vhost; once per environment for the
    /// provisioner's life.
    func ensure(_ env: EnvID) async throws {
        guard !made.contains(env) else { return }
        let role = Topology.nodeRole(env: env.rawValue)
        let vhost = broker.vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? broker.vhost
        try await send(.PUT, "api/users/\(role.user)", ["password": sealer(env).brokerPassword, "tags": ""])
        try await send(
            .PUT, "api/permissions/\(vhost)/\(role.user)",
            ["configure": role.configure, "write": role.write, "read": role.read])
        if let events = role.eventsWrite {
            try await send(
                .PUT, "api/topic-permissions/\(vhost)/\(role.user)",
                ["exchange": Topology.eventsExchange, "write": events, "read": "^$"])
        }
        made.insert(env)
        logger.info(
            "broker user of the environment's nodes made", metadata: ["env.id": "\(env)", "user": "\(role.user)"])
    }

    /// Removes `env`'s nodes' user (its connections close with it).
    func remove(_ env: EnvID) async {
        made.remove(env)
        do {
            try await send(.DELETE, "api/users/\(Topology.nodeUser(env: env.rawValue))", nil, missingIsFine: true)
        } catch {
            logger.warning("broker user of a deleted environment not removed", metadata: ["error": "\(error)"])
        }
    }

    private func send(
        _ method: HTTPMethod, _ path: String, _ body: [String: String]?, missingIsFine: Bool = false
    ) async throws {
        let base =
            management.absoluteString.hasSuffix("/") ? management.absoluteString : management.absoluteString + "/"
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "Authorization", value: authorization)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let status = response.status.code
        guard status < 300 || (missingIsFine && status == 404) else {
            throw Failure(description: "the broker's management API answered \(method) \(path) with HTTP \(status)")
        }
    }
}
