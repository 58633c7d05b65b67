import Foundation
import Logging
import Messaging
import Metrics
import ServiceLifecycle

/// Consumes one queue and hands each delivery to `handle`, at most `concurrency` at a time, with at most
/// `prefetch` (default twice `concurrency`) delivered and not yet acked.
///
/// - The handler returning normally acks the message (after its effect is durable: the handler's job).
/// - A ``PoisonMessage`` error (the body cannot be decoded) rejects it to the dead-letter queue with a log line,
///   so one bad message never blocks the queue.
/// - Any other error requeues it after a short pause: a transient failure (database down) is retried.
///
/// With `handlerAcks`, a handler that returns normally has acked the delivery itself (as early as its work allows);
/// it may throw only before it acks.
///
/// On graceful shutdown it stops taking deliveries and lets the ones in hand finish.
public struct EventConsumer: Service {
    let amqp: AMQPClient
    let queue: String
    let concurrency: Int
    let prefetch: Int
    let handlerAcks: Bool
    let logger: Logger
    let handle: @Sendable (Delivery) async throws -> Void

    public init(
        amqp: AMQPClient, queue: String, concurrency: Int = 8, prefetch: Int? = nil, handlerAcks: Bool = false,
        logger: Logger, handle: @escaping @Sendable (Delivery) async throws -> Void
    ) {
        self.amqp = amqp
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch ?? concurrency * 2
        self.handlerAcks = handlerAcks
        self.logger = logger
        self.handle = handle
    }

    public func run() async throws {
        let deliveries = amqp.consume(queue: queue, prefetch: UInt16(clamping: prefetch))
        let outcomes = ConsumerOutcomes(queue: queue, logger: logger)
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            for await delivery in deliveries.cancelOnGracefulShutdown() {
                if running >= concurrency {
                    await group.next()
                    running -= 1
                }
                running += 1
                group.addTask {
                    let start = ContinuousClock.now
                    do {
                        try await handle(delivery)
                        if !handlerAcks { delivery.ack() }
                        outcomes.consumed.increment()
                    } catch {
                        await outcomes.settle(delivery, failedWith: error)
                    }
                    outcomes.latency.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
                }
            }
            await group.waitForAll()
        }
    }
}

/// How a consumer's deliveries end, counted by queue and outcome, and how a failed one is settled.
struct ConsumerOutcomes: Sendable {
    let queue: String
    let logger: Logger
    let consumed: Counter
    let rejected: Counter
    let requeued: Counter
    let latency: Timer

    init(queue: String, logger: Logger) {
        self.queue = queue
        self.logger = logger
        func counter(_ outcome: String) -> Counter {
            Counter(label: "batch.messages.consumed.total", dimensions: [("queue", queue), ("outcome", outcome)])
        }
        consumed = counter("ack")
        rejected = counter("dead")
        requeued = counter("requeue")
        latency = Timer(label: "batch.messages.handler.duration", dimensions: [("queue", queue)])
    }

    /// A ``PoisonMessage`` goes to the dead-letter queue with a log line; any other failure requeues the delivery
    /// after a short pause, so a transient failure (database down) is retried.
    func settle(_ delivery: Delivery, failedWith error: any Error) async {
        if let poison = error as? PoisonMessage {
            logger.error(
                "poison message sent to the dead-letter queue",
                metadata: [
                    "queue": "\(queue)", "message.type": "\(delivery.type ?? "?")",
                    "message.id": "\(delivery.messageID ?? "?")", "error": "\(poison.reason)",
                ])
            delivery.reject()
            rejected.increment()
        } else {
            logger.warning(
                "handler failed, message requeued",
                metadata: [
                    "queue": "\(queue)", "message.type": "\(delivery.type ?? "?")",
                    "error": "\(String(reflecting: error))",
                ])
            try? await Task.sleep(for: .milliseconds(200))
            delivery.nack(requeue: true)
            requeued.increment()
        }
    }
}

/// A message that can never be handled (it does not decode): it goes to the dead-letter queue.
public struct PoisonMessage: Error {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

extension Delivery {
    /// Decodes the envelope, turning a failure into ``PoisonMessage``.
    public func decode<Payload: MessageContract>(_ type: Payload.Type) throws -> Envelope<Payload> {
        do {
            return try Envelope<Payload>.decode(body)
        } catch {
            throw PoisonMessage("\(error)")
        }
    }
}

extension Duration {
    /// The whole duration in nanoseconds, for `Timer.recordNanoseconds`.
    public var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
