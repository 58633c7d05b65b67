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
    /// The rows written in the current transaction, when this process's relay takes them once it commits
    /// (``Database/transaction(_:)`` sets it).
    @TaskLocal static var written: Written?

    /// Writes `messages` on `connection`, which should be inside the transaction that makes the change. Inside
    /// ``Database/transaction(_:)`` with this process's relay running, the rows are written already claimed for the
    /// relay's lease and handed to it on commit: it publishes them without reading them back, and another relay
    /// takes them only once the lease is over (this process died before they were out).
    public static func enqueue(
        _ messages: [OutgoingMessage], on connection: PostgresConnection, sealer: Sealer,
        logger: Logger
    ) async throws {
        guard !messages.isEmpty else { return }
        let bodies = try messages.map {
            try sealer.seal($0.body, context: "outbox:\($0.messageID)")
        }
        let written = Outbox.written
        let lease = Int(written?.lease.components.seconds ?? 0)
        let claimedAt = ContinuousClock.now
        let rows = try await connection.query(
            """
            INSERT INTO outbox (exchange, routing_key, message_id, message_type, correlation_id, body_sealed, mandatory,
                attempts, next_attempt_at)
            SELECT m.*, \(written == nil ? 0 : 1), clock_timestamp() + \(lease) * interval '1 s'
            FROM unnest(\(messages.map(\.exchange))::text[], \(messages.map(\.routingKey))::text[],
                \(messages.map(\.messageID))::text[], \(messages.map { $0.type ?? "" })::text[],
                \(messages.map { $0.correlationID ?? "" })::text[], \(bodies)::text[],
                \(messages.map(\.mandatory))::boolean[]) AS m
            RETURNING id, message_id
            """, logger: logger)
        guard let written else { return }
        let byID = Dictionary(messages.map { ($0.messageID, $0) }, uniquingKeysWith: { first, _ in first })
        var claimed: [(id: Int, message: OutgoingMessage)] = []
        for try await (id, messageID) in rows.decode((Int, String).self) {
            if let message = byID[messageID] { claimed.append((id, message)) }
        }
        written.add(claimed, claimedAt: claimedAt)
    }

    /// Outbox rows one transaction wrote already claimed, for the relay once the transaction commits.
    final class Written: Sendable {
        let lease: Duration
        private let state = Mutex<(rows: [(id: Int, message: OutgoingMessage)], claimedAt: ContinuousClock.Instant?)>(
            ([], nil))

        init(lease: Duration) { self.lease = lease }

        func add(_ rows: [(id: Int, message: OutgoingMessage)], claimedAt: ContinuousClock.Instant) {
            state.withLock {
                $0.rows += rows
                $0.claimedAt = $0.claimedAt ?? claimedAt
            }
        }

        /// The rows, and when the first of them was claimed (nil when there are none).
        var taken: (rows: [(id: Int, message: OutgoingMessage)], claimedAt: ContinuousClock.Instant?) {
            state.withLock { $0 }
        }
    }
}

/// Hands the rows of committed transactions to this process's relay, in commit order. Open only while a relay
/// takes them; rows it cannot take in time (the relay is behind by half a lease) are left to the lease: another
/// relay, or this one's polling, publishes them once it ends.
public final class OutboxHandoff: Sendable {
    struct Rows: Sendable {
        var rows: [(id: Int, message: OutgoingMessage)]
        var claimedAt: ContinuousClock.Instant
    }

    private let pending = Mutex<(lease: Duration?, batches: [Rows], count: Int)>((nil, [], 0))
    private let signal = OutboxSignal()
    /// Most rows waiting for the relay; more are left to their lease.
    private let limit = 20_000

    /// The lease rows are claimed for, while a relay takes them.
    var lease: Duration? { pending.withLock { $0.lease } }

    func open(lease: Duration) { pending.withLock { $0.lease = lease } }

    func close() { pending.withLock { $0 = (nil, [], 0) } }

    /// Hands over a committed transaction's rows.
    func send(_ written: Outbox.Written) {
        let (rows, claimedAt) = written.taken
        guard let claimedAt, !rows.isEmpty else { return }
        let accepted = pending.withLock { state in
            guard state.lease != nil, state.count + rows.count <= limit else { return false }
            state.batches.append(Rows(rows: rows, claimedAt: claimedAt))
            state.count += rows.count
            return true
        }
        if accepted { signal.signal() }
    }

    /// Waits for rows, then takes all that are handed over, leaving out those claimed longer than `maximumAge` ago.
    func take(maximumAge: Duration) async -> [(id: Int, message: OutgoingMessage)]? {
        for await _ in signal.stream {
            let batches = pending.withLock { state in
                defer { (state.batches, state.count) = ([], 0) }
                return state.batches
            }
            let now = ContinuousClock.now
            let rows = batches.filter { now - $0.claimedAt < maximumAge }.flatMap(\.rows)
            if !rows.isEmpty { return rows }
        }
        return nil
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
            WHERE i.state = 'RUNNABLE' AND i.dispatched AND i.node_id IS NULL
            """, logger: logger
        ).decode(Int.self) {
            waiting.insert(id)
        }
        return Set(runs.map(\.id)).subtracting(waiting)
    }
}
