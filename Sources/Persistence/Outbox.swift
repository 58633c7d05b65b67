import BatchCore
import Foundation
import Logging
import Messaging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The transactional outbox: messages written in the same transaction as the state change that causes them, then
/// published by an ``OutboxRelay`` and deleted once the broker confirmed them. Bodies are sealed: a command or an
/// environment variable in a message is as secret as in its row.
public enum Outbox {
    /// Writes `messages` on `connection`, which should be inside the transaction that makes the change.
    public static func enqueue(
        _ messages: [OutgoingMessage], on connection: PostgresConnection, sealer: Sealer,
        logger: Logger
    ) async throws {
        guard !messages.isEmpty else { return }
        let bodies = try messages.map {
            try sealer.seal($0.body, context: "outbox:\($0.messageID)")
        }
        try await connection.query(
            """
            INSERT INTO outbox (exchange, routing_key, message_id, message_type, correlation_id, body_sealed, mandatory)
            SELECT * FROM unnest(\(messages.map(\.exchange))::text[], \(messages.map(\.routingKey))::text[],
                \(messages.map(\.messageID))::text[], \(messages.map { $0.type ?? "" })::text[],
                \(messages.map { $0.correlationID ?? "" })::text[], \(bodies)::text[],
                \(messages.map(\.mandatory))::boolean[])
            """, logger: logger)
    }
}

/// Wakes a relay: coalesces any number of signals into one wake-up.
public final class OutboxSignal: Sendable {
    let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() {
        (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    public func signal() { continuation.yield() }
}

/// Publishes outbox rows in id order with publisher confirms and deletes each row its confirm arrived for; a row
/// that could not be published is retried later with backoff. Several relays (one per service process) can run at
/// once: each takes its rows with `FOR UPDATE SKIP LOCKED`.
public struct OutboxRelay: Service {
    public struct Configuration: Sendable {
        /// Rows published per transaction. Default 500.
        public var batchSize = 500
        /// How often to look for rows written by other processes (or due for a retry). Default 1 s.
        public var pollInterval: Duration = .seconds(1)
        public init() {}
    }

    let database: Database
    let amqp: AMQPClient
    let configuration: Configuration
    let logger: Logger

    public init(database: Database, amqp: AMQPClient, configuration: Configuration = .init(), logger: Logger) {
        self.database = database
        self.amqp = amqp
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let signal = database.outboxSignal
        let interval = configuration.pollInterval
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    signal.signal()
                }
            }
            signal.signal()
            for await _ in signal.stream.cancelOnGracefulShutdown() {
                do {
                    while try await relayBatch() == configuration.batchSize {}
                } catch {
                    logger.warning(
                        "outbox relay failed, will retry", metadata: ["error": "\(String(reflecting: error))"])
                }
            }
            group.cancelAll()
        }
    }

    /// Publishes one batch of due rows; returns how many there were.
    @discardableResult
    public func relayBatch() async throws -> Int {
        let sealer = database.sealer
        let logger = self.logger
        let amqp = self.amqp
        let limit = configuration.batchSize
        return try await database.client.withTransaction(logger: logger) { connection in
            let rows = try await connection.query(
                """
                SELECT id, exchange, routing_key, message_id, message_type, correlation_id, body_sealed, mandatory
                FROM outbox WHERE next_attempt_at <= now() ORDER BY id LIMIT \(limit) FOR UPDATE SKIP LOCKED
                """, logger: logger)
            var ids: [Int] = []
            var messages: [OutgoingMessage] = []
            var unreadable: [Int] = []
            for try await (id, exchange, routingKey, messageID, type, correlationID, body, mandatory) in rows.decode(
                (Int, String, String, String, String?, String?, String, Bool).self)
            {
                do {
                    let bytes = try sealer.openBytes(body, context: "outbox:\(messageID)")
                    ids.append(id)
                    messages.append(
                        OutgoingMessage(
                            exchange: exchange, routingKey: routingKey, body: bytes, messageID: messageID,
                            type: type.flatMap { $0.isEmpty ? nil : $0 },
                            correlationID: correlationID.flatMap { $0.isEmpty ? nil : $0 }, mandatory: mandatory))
                } catch {
                    logger.error("outbox row does not open", metadata: ["outbox.id": "\(id)", "error": "\(error)"])
                    unreadable.append(id)
                }
            }
            guard !messages.isEmpty || !unreadable.isEmpty else { return 0 }
            let results = await amqp.publish(messages)
            var sent: [Int] = []
            var failed = unreadable
            for (id, error) in zip(ids, results) {
                if let error {
                    failed.append(id)
                    logger.warning(
                        "outbox message not published", metadata: ["outbox.id": "\(id)", "error": "\(error)"])
                } else {
                    sent.append(id)
                }
            }
            if !sent.isEmpty {
                try await connection.query("DELETE FROM outbox WHERE id = ANY(\(sent))", logger: logger)
            }
            if !failed.isEmpty {
                try await connection.query(
                    """
                    UPDATE outbox SET attempts = attempts + 1,
                        next_attempt_at = now() + least(attempts + 1, 60) * interval '1 second'
                    WHERE id = ANY(\(failed))
                    """, logger: logger)
            }
            return ids.count + unreadable.count
        }
    }
}
