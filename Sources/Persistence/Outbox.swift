import BatchCore
import Foundation
import Logging
import MessageContracts
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

    package func open(lease: Duration) { pending.withLock { $0.lease = lease } }

    package func close() { pending.withLock { $0 = (nil, [], 0) } }

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
    package func take(maximumAge: Duration) async -> [(id: Int, message: OutgoingMessage)]? {
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
    package let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() {
        (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    public func signal() { continuation.yield() }
}
