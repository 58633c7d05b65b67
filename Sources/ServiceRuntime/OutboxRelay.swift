import BatchCore
import Foundation
import Logging
import Messaging
import Persistence
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Publishes outbox rows with publisher confirms and deletes each row its confirm arrived for; a row that could not
/// be published is retried later with backoff. Several relays (one per service process) can run at once: each takes
/// due rows in id order with `FOR UPDATE SKIP LOCKED`. The rows this process's transactions wrote come to it on
/// commit, already claimed (``OutboxHandoff``), and are published in commit order without being read back.
public struct OutboxRelay: Service {
    public struct Configuration: Sendable {
        /// Rows published per transaction. Default 500.
        public var batchSize = 500
        /// How often to look for rows written by other processes (or due for a retry). Default 1 s.
        public var pollInterval: Duration = .seconds(1)
        /// How long a claimed row waits before another relay publishes it again, should its relay die. Default 5 s.
        public var lease: Duration = .seconds(5)
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
        let handoff = database.outboxHandoff
        let interval = configuration.pollInterval
        handoff.open(lease: configuration.lease)
        defer { handoff.close() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    signal.signal()
                }
            }
            // Rows this process's transactions wrote already claimed, in commit order.
            group.addTask {
                while let rows = await handoff.take(maximumAge: configuration.lease / 2) {
                    do {
                        try await publish(rows.map { (id: $0.id, message: Optional($0.message)) })
                    } catch {
                        logger.warning(
                            "outbox relay failed, will retry", metadata: ["error": "\(String(reflecting: error))"])
                    }
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
    ///
    /// Rows are first claimed for ``Configuration/lease`` in a transaction of their own, then published (the lease
    /// renewed while the broker takes its time), then deleted. A relay killed after publishing leaves its rows claimed: they go out again once the lease ends
    /// (at-least-once), by which time an `instance.run` whose attempt has started or moved on is dropped instead, so
    /// a crash does not hand the same run to a second node.
    @discardableResult
    public func relayBatch() async throws -> Int {
        let sealer = database.sealer
        let logger = self.logger
        let limit = configuration.batchSize
        let lease = Int(configuration.lease.components.seconds)
        var claimed: [(id: Int, message: OutgoingMessage?, attempts: Int)] = []
        for try await (id, exchange, routingKey, messageID, type, correlationID, body, mandatory, attempts)
            in try await database.client.query(
                """
                UPDATE outbox o SET next_attempt_at = now() + \(lease) * interval '1 s', attempts = o.attempts + 1
                FROM (SELECT id FROM outbox WHERE next_attempt_at <= now() ORDER BY id LIMIT \(limit)
                    FOR UPDATE SKIP LOCKED) due
                WHERE o.id = due.id
                RETURNING o.id, o.exchange, o.routing_key, o.message_id, o.message_type, o.correlation_id,
                    o.body_sealed, o.mandatory, o.attempts
                """, logger: logger
            ).decode((Int, String, String, String, String?, String?, String, Bool, Int).self)
        {
            do {
                let bytes = try sealer.openBytes(body, context: "outbox:\(messageID)")
                let message = OutgoingMessage(
                    exchange: exchange, routingKey: routingKey, body: bytes, messageID: messageID,
                    type: type.flatMap { $0.isEmpty ? nil : $0 },
                    correlationID: correlationID.flatMap { $0.isEmpty ? nil : $0 }, mandatory: mandatory)
                claimed.append((id, message, attempts))
            } catch {
                logger.error("outbox row does not open", metadata: ["outbox.id": "\(id)", "error": "\(error)"])
                claimed.append((id, nil, attempts))
            }
        }
        guard !claimed.isEmpty else { return 0 }
        claimed.sort { $0.id < $1.id }
        let stale = try await staleRuns(
            claimed.filter { $0.attempts > 1 }.compactMap { row in row.message.map { (row.id, $0) } })
        if !stale.isEmpty {
            logger.info("outbox: runs whose attempt already started dropped", metadata: ["count": "\(stale.count)"])
        }
        try await publish(claimed.filter { !stale.contains($0.id) }.map { ($0.id, $0.message) }, dropped: stale)
        return claimed.count
    }

    /// Publishes claimed rows in order (nil: a row that does not open), renewing their lease meanwhile; deletes those
    /// the broker confirmed and the `dropped` ones, and puts the others off with backoff.
    private func publish(_ claimed: [(id: Int, message: OutgoingMessage?)], dropped: Set<Int> = []) async throws {
        let due = claimed.filter { $0.message != nil }
        let messages = due.map { $0.message! }
        let results = await renewingLease(of: due.map(\.id)) { await amqp.publish(messages) }
        var sent = Array(dropped)
        var failed = claimed.filter { $0.message == nil }.map(\.id)
        for (row, error) in zip(due, results) {
            if let error {
                failed.append(row.id)
                logger.warning(
                    "outbox message not published", metadata: ["outbox.id": "\(row.id)", "error": "\(error)"])
            } else {
                sent.append(row.id)
            }
        }
        if !sent.isEmpty {
            try await database.client.query("DELETE FROM outbox WHERE id = ANY(\(sent))", logger: logger)
        }
        if !failed.isEmpty {
            try await database.client.query(
                """
                UPDATE outbox SET next_attempt_at = now() + least(attempts, 60) * interval '1 s'
                WHERE id = ANY(\(failed))
                """, logger: logger)
        }
    }

    /// Runs `publish` while renewing the lease of rows `ids` every half lease: only a relay that died lets its rows
    /// go to another, however long a broker outage makes the publish wait.
    private func renewingLease<Result: Sendable>(of ids: [Int], _ publish: () async -> Result) async -> Result {
        let lease = configuration.lease
        let seconds = Int(lease.components.seconds)
        let (database, logger) = (self.database, self.logger)
        return await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    do {
                        try await Task.sleep(for: lease / 2)
                        try await database.client.query(
                            """
                            UPDATE outbox SET next_attempt_at = now() + \(seconds) * interval '1 s'
                            WHERE id = ANY(\(ids))
                            """, logger: logger)
                    } catch {
                        if Task.isCancelled { return }
                        logger.warning("outbox lease not renewed", metadata: ["error": "\(error)"])
                    }
                }
            }
            let result = await publish()
            group.cancelAll()
            return result
        }
    }

    /// Of `rows` published before (their lease ran out), the `instance.run` and `instance.runs` ones none of whose
    /// attempts is still waiting for a node: each started, ended, or was dispatched again.
    func staleRuns(_ rows: [(id: Int, message: OutgoingMessage)]) async throws -> Set<Int> {
        var runs: [(id: Int, run: InstanceRun)] = []
        for (id, message) in rows {
            switch message.type {
            case InstanceRun.type:
                if let run = try? Envelope<InstanceRun>.decode(message.body).payload { runs.append((id, run)) }
            case InstanceRuns.type:
                if let group = try? Envelope<InstanceRuns>.decode(message.body).payload {
                    runs += group.runs.map { (id, $0) }
                }
            default: break
            }
        }
        guard !runs.isEmpty else { return [] }
        var waiting: Set<Int> = []
        for try await id in try await database.client.query(
            """
            SELECT r.id FROM unnest(\(runs.map(\.id))::bigint[], \(runs.map(\.run.jobID.rawValue))::text[],
                \(runs.map(\.run.taskName))::text[], \(runs.map(\.run.instanceIndex))::integer[],
                \(runs.map(\.run.attempt))::integer[]) AS r(id, job_id, task_name, instance_index, attempt)
            JOIN task_instances i USING (job_id, task_name, instance_index, attempt)
            WHERE i.state = \(unescaped: ExecutionState.runnable.sql) AND i.dispatched AND i.node_id IS NULL
            """, logger: logger
        ).decode(Int.self) {
            waiting.insert(id)
        }
        return Set(runs.map(\.id)).subtracting(waiting)
    }
}
