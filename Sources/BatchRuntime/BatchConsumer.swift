import Foundation
import Logging
import Messaging
import Metrics
import ServiceLifecycle
import Synchronization

/// Consumes one queue in batches: waits for a delivery, then takes every delivery already received (at most
/// `maxBatch`) and hands them to `handle` together, so one transaction covers many events. A periodic `tick` runs in
/// the same loop, never at the same time as a batch.
///
/// - `handle` returning normally acks the whole batch (its effect is durable by then: the handler's job).
/// - When a batch fails, its deliveries are handled again one at a time, so one bad message cannot hold back the
///   others: a ``PoisonMessage`` goes to the dead-letter queue, any other error requeues that message after a pause.
///
/// On graceful shutdown it stops taking deliveries and finishes the batch in hand.
///
/// A batch or tick that has not finished after `stallLimit` means the process is wedged (a database connection pool
/// that never hands out a connection again after a restart of the database has been seen): it logs and exits, for
/// its supervisor (compose's restart policy) to start it again, since every service resumes from the database and
/// the queues.
public struct BatchConsumer: Service {
    public struct Tick: Sendable {
        public var interval: Duration
        public var work: @Sendable () async throws -> Void
        public init(every interval: Duration, _ work: @escaping @Sendable () async throws -> Void) {
            self.interval = interval
            self.work = work
        }
    }

    let amqp: AMQPClient
    let queue: String
    let prefetch: Int
    let maxBatch: Int
    let tick: Tick?
    let stallLimit: Duration?
    let logger: Logger
    let handle: @Sendable ([Delivery]) async throws -> Void

    public init(
        amqp: AMQPClient, queue: String, prefetch: Int = 1000, maxBatch: Int = 500, tick: Tick? = nil,
        stallLimit: Duration? = nil, logger: Logger, handle: @escaping @Sendable ([Delivery]) async throws -> Void
    ) {
        self.stallLimit = stallLimit
        self.amqp = amqp
        self.queue = queue
        self.prefetch = prefetch
        self.maxBatch = maxBatch
        self.tick = tick
        self.logger = logger
        self.handle = handle
    }

    public func run() async throws {
        let deliveries = amqp.consume(queue: queue, prefetch: UInt16(clamping: prefetch))
        let buffer = DeliveryBuffer()
        let (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let outcomes = ConsumerOutcomes(queue: queue, logger: logger)
        let batchSize = Recorder(label: "batch.messages.batch.size", dimensions: [("queue", queue)])
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await delivery in deliveries {
                    buffer.append(delivery)
                    wake.yield()
                }
                wake.finish()
            }
            if let tick {
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: tick.interval)
                        wake.yield()
                    }
                }
            }
            var nextTick = ContinuousClock.now
            for await _ in wakes.cancelOnGracefulShutdown() {
                while true {
                    let batch = buffer.take(maxBatch)
                    if batch.isEmpty { break }
                    await process(batch, outcomes: outcomes, batchSize: batchSize)
                }
                if let tick, ContinuousClock.now >= nextTick {
                    nextTick = ContinuousClock.now + tick.interval
                    do {
                        try await watched("periodic work") { try await tick.work() }
                    } catch {
                        logger.warning("periodic work failed", metadata: ["error": "\(String(reflecting: error))"])
                    }
                }
            }
            group.cancelAll()
        }
    }

    private func process(_ batch: [Delivery], outcomes: ConsumerOutcomes, batchSize: Recorder) async {
        let start = ContinuousClock.now
        do {
            try await watched("a batch of \(batch.count)") { try await handle(batch) }
            batch.forEach { $0.ack() }
            outcomes.consumed.increment(by: batch.count)
            batchSize.record(batch.count)
            outcomes.latency.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            return
        } catch {
            guard batch.count > 1 else {
                await outcomes.settle(batch[0], failedWith: error)
                return
            }
            logger.warning(
                "batch failed; handling its messages one at a time",
                metadata: [
                    "queue": "\(queue)", "batch.size": "\(batch.count)", "error": "\(String(reflecting: error))",
                ])
        }
        for delivery in batch {
            do {
                try await watched("a message") { try await handle([delivery]) }
                delivery.ack()
                outcomes.consumed.increment()
            } catch {
                await outcomes.settle(delivery, failedWith: error)
            }
        }
    }
}

extension BatchConsumer {
    /// Runs `body`; exits the process if it has not finished after `stallLimit`.
    func watched(_ what: String, _ body: () async throws -> Void) async throws {
        guard let stallLimit else { return try await body() }
        let watchdog = Task { [logger, queue] in
            try await Task.sleep(for: stallLimit)
            logger.critical(
                "handling \(what) from \(queue) has not finished in \(stallLimit); exiting, to be started again")
            exit(70)
        }
        defer { watchdog.cancel() }
        try await body()
    }
}

/// Deliveries received and not yet handled.
private final class DeliveryBuffer: Sendable {
    private let pending = Mutex<[Delivery]>([])

    func append(_ delivery: Delivery) { pending.withLock { $0.append(delivery) } }

    /// Removes and returns the oldest `count` (or fewer).
    func take(_ count: Int) -> [Delivery] {
        pending.withLock { pending in
            let batch = Array(pending.prefix(count))
            pending.removeFirst(batch.count)
            return batch
        }
    }
}
