import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// One AMQP connection to RabbitMQ, driven by its own thread (rabbitmq-c is blocking and not thread-safe).
///
/// - ``publish(_:)`` returns once the broker confirmed the message (publisher confirms); up to
///   ``Configuration/confirmWindow`` messages are in flight at once, from any number of callers.
/// - ``consume(queue:prefetch:)`` returns an `AsyncSequence` of ``Delivery``; each is acked, nacked or rejected
///   by the caller. Unacked deliveries go back to the queue when the connection dies.
/// - When the connection is lost the client reconnects with exponential backoff, declares its topology again,
///   re-subscribes its consumers and republishes every message the broker had not confirmed (at-least-once).
///
/// Run it as a `Service` (``run()``) or call ``start()`` and ``shutdown()``.
public final class AMQPClient: Sendable, Service {
    /// How to reach the broker and how the connection behaves.
    public struct Configuration: Sendable {
        /// The broker. Default `amqp://guest:guest@127.0.0.1:5672/`.
        public var url: AMQPURL
        /// Shown as `connection_name` in the management UI. Default `batch`.
        public var connectionName: String
        /// AMQP heartbeat in seconds; a silent broker is detected after about twice this. Default 10.
        public var heartbeat: Int
        /// Most publishes awaiting a confirm at once. Default 1000.
        public var confirmWindow: Int
        /// First and longest wait between reconnection attempts. Default 0.1 s and 5 s.
        public var reconnectBackoff: (first: Duration, max: Duration)

        public init(
            url: AMQPURL = AMQPURL(), connectionName: String = "batch", heartbeat: Int = 10,
            confirmWindow: Int = 1000,
            reconnectBackoff: (first: Duration, max: Duration) = (.milliseconds(100), .seconds(5))
        ) {
            self.url = url
            self.connectionName = connectionName
            self.heartbeat = heartbeat
            self.confirmWindow = confirmWindow
            self.reconnectBackoff = reconnectBackoff
        }
    }

    let configuration: Configuration
    let logger: Logger
    let shared: Mutex<Shared>
    let wakeup: Wakeup
    private let consumerIDs = Atomic<Int>(0)

    /// Creates a client that will declare `topology` on every connection. Nothing happens until ``start()``.
    public init(configuration: Configuration, topology: Topology = .base, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.shared = Mutex(Shared(topology: topology))
        self.wakeup = Wakeup()
    }

    // MARK: Lifecycle

    /// Starts the connection thread. Publishes and consumers made before are carried out once connected.
    public func start() {
        let shouldStart = shared.withLock { state -> Bool in
            guard !state.started else { return false }
            state.started = true
            return true
        }
        guard shouldStart else { return }
        let driver = ConnectionDriver(client: self)
        let thread = Thread { driver.run() }
        thread.name = "amqp-\(configuration.connectionName)"
        thread.start()
    }

    /// Runs the client until the task is cancelled or a graceful shutdown is triggered, then shuts it down.
    public func run() async throws {
        start()
        await withTaskCancellationOrGracefulShutdownHandler {
            await self.waitUntilStopped()
        } onCancelOrGracefulShutdown: {
            self.initiateShutdown()
        }
    }

    /// Stops the client: waits briefly for outstanding confirms, closes the connection, fails what is left with
    /// ``MessagingError/Code/shutdown`` and finishes every consumer's sequence.
    public func shutdown() async {
        initiateShutdown()
        let started = shared.withLock { $0.started }
        if started { await waitUntilStopped() } else { finishWithoutThread() }
    }

    /// True while a connection to the broker is open.
    public var isConnected: Bool { shared.withLock { $0.connected } }

    /// How many times a connection was opened, counting the first; grows by one per reconnection.
    public var connectionCount: Int { shared.withLock { $0.connectionCount } }

    // MARK: Publishing

    /// Publishes one message and returns when the broker has confirmed it.
    ///
    /// Throws ``MessagingError`` with `nacked`, `unroutable` (a `mandatory` message no queue took) or `shutdown`.
    /// A connection loss is not an error: the message is published again on the next connection.
    public func publish(_ message: OutgoingMessage) async throws {
        let results = await publish([message])
        if let error = results[0] { throw error }
    }

    /// Publishes messages in order and returns, for each, `nil` once confirmed or the error that failed it.
    public func publish(_ messages: [OutgoingMessage]) async -> [MessagingError?] {
        guard !messages.isEmpty else { return [] }
        return await withCheckedContinuation { (continuation: CheckedContinuation<[MessagingError?], Never>) in
            let batch = PublishBatch(count: messages.count, continuation: continuation)
            let pending = messages.enumerated().map { index, message in
                PendingPublish(message: message, batch: batch, index: index)
            }
            send(.publish(pending))
        }
    }

    // MARK: Consuming

    /// Subscribes to `queue` with at most `prefetch` unacked deliveries at once.
    ///
    /// The sequence keeps going across reconnections (deliveries of a lost connection come again, flagged
    /// `redelivered`); it finishes when the client shuts down. Ending the iteration cancels the subscription and
    /// returns this consumer's unacked deliveries to the queue.
    public func consume(queue: String, prefetch: UInt16) -> Deliveries {
        let id = consumerIDs.add(1, ordering: .relaxed).newValue
        let (stream, continuation) = AsyncStream<Delivery>.makeStream()
        continuation.onTermination = { [weak self] _ in self?.send(.cancel(consumerID: id)) }
        send(.consume(ConsumerRegistration(id: id, queue: queue, prefetch: prefetch, continuation: continuation)))
        return Deliveries(stream: stream)
    }

    /// Declares more topology now, and again on every reconnection.
    public func declare(_ topology: Topology) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            send(.declare(topology, continuation))
        }
    }

    /// How many messages are ready in `queue` (not counting those delivered and not yet acked), read from the
    /// broker with a passive declare. Throws ``MessagingError/Code/declarationFailed`` if the queue does not exist.
    public func readyMessageCount(queue: String) async throws -> Int {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int, any Error>) in
            send(.inspect(queue: queue, continuation))
        }
    }

    // MARK: Internals shared with the driver

    enum Command: @unchecked Sendable {
        case publish([PendingPublish])
        case settle(Settlement)
        case consume(ConsumerRegistration)
        case cancel(consumerID: Int)
        case declare(Topology, CheckedContinuation<Void, any Error>)
        case inspect(queue: String, CheckedContinuation<Int, any Error>)
    }

    struct Settlement: Sendable {
        enum Kind: Sendable {
            case ack
            case nack(requeue: Bool)
            case reject
        }
        var kind: Kind
        var channel: UInt16
        var deliveryTag: UInt64
        var generation: Int
    }

    struct Shared: ~Copyable {
        var topology: Topology
        var commands: [Command] = []
        var driverSleeping = false
        var started = false
        var stopping = false
        var stopped = false
        var connected = false
        var connectionCount = 0
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
    }

    func send(_ command: Command) {
        let (wake, rejected) = shared.withLock { state -> (Bool, Bool) in
            if state.stopped { return (false, true) }
            state.commands.append(command)
            let wake = state.driverSleeping
            state.driverSleeping = false
            return (wake, false)
        }
        if rejected {
            Self.fail(command, MessagingError(.shutdown, "the AMQP client is shut down"))
        } else if wake {
            wakeup.signal()
        }
    }

    func settle(_ settlement: Settlement) { send(.settle(settlement)) }

    static func fail(_ command: Command, _ error: MessagingError) {
        switch command {
        case .publish(let pending): pending.forEach { $0.complete(error) }
        case .declare(_, let continuation): continuation.resume(throwing: error)
        case .inspect(_, let continuation): continuation.resume(throwing: error)
        case .consume(let registration): registration.continuation.finish()
        case .settle, .cancel: break
        }
    }

    private func initiateShutdown() {
        let wake = shared.withLock { state -> Bool in
            state.stopping = true
            return state.started
        }
        if wake { wakeup.signal() }
    }

    private func waitUntilStopped() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = shared.withLock { state -> Bool in
                if state.stopped { return true }
                state.stopWaiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    private func finishWithoutThread() {
        let commands = shared.withLock { state -> [Command] in
            state.stopped = true
            defer { state.commands = [] }
            return state.commands
        }
        commands.forEach { Self.fail($0, MessagingError(.shutdown, "the AMQP client is shut down")) }
    }
}

/// The deliveries of one consumer, in the order the broker sent them.
public struct Deliveries: AsyncSequence, Sendable {
    public typealias Element = Delivery
    let stream: AsyncStream<Delivery>

    public func makeAsyncIterator() -> AsyncStream<Delivery>.Iterator { stream.makeAsyncIterator() }
}

/// A message received from a queue. Settle it exactly once: ``ack()``, ``nack(requeue:)`` or ``reject()``.
///
/// Settling a delivery whose connection has since been lost does nothing: the broker has already put the
/// message back in its queue and will deliver it again.
public struct Delivery: Sendable {
    public let body: [UInt8]
    public let exchange: String
    public let routingKey: String
    public let messageID: String?
    public let type: String?
    public let correlationID: String?
    /// True when the broker delivered this message before (to this or another consumer) without an ack.
    public let redelivered: Bool
    public let deliveryTag: UInt64
    let channel: UInt16
    let generation: Int
    let client: AMQPClient

    /// The message was handled; the broker forgets it.
    public func ack() { settle(.ack) }
    /// The message was not handled; with `requeue` it goes back to the queue, otherwise to the dead-letter queue.
    public func nack(requeue: Bool) { settle(.nack(requeue: requeue)) }
    /// The message is poison: it goes to the queue's dead-letter exchange and is never delivered here again.
    public func reject() { settle(.reject) }

    private func settle(_ kind: AMQPClient.Settlement.Kind) {
        client.settle(
            AMQPClient.Settlement(kind: kind, channel: channel, deliveryTag: deliveryTag, generation: generation))
    }
}

/// A publish waiting to be sent or confirmed.
final class PendingPublish: @unchecked Sendable {
    let message: OutgoingMessage
    let batch: PublishBatch
    let index: Int

    init(message: OutgoingMessage, batch: PublishBatch, index: Int) {
        self.message = message
        self.batch = batch
        self.index = index
    }

    func complete(_ error: MessagingError?) {
        PublishedCounters.shared.counter(exchange: message.exchange, confirmed: error == nil).increment()
        batch.complete(index, error)
    }
}

/// `batch.messages.published.total` by exchange and outcome, made once each (a counter looked up per message costs
/// a lock and a dictionary in the metrics backend).
final class PublishedCounters: Sendable {
    static let shared = PublishedCounters()
    private let counters = Mutex<[String: Counter]>([:])

    func counter(exchange: String, confirmed: Bool) -> Counter {
        let outcome = confirmed ? "confirmed" : "failed"
        return counters.withLock { counters in
            if let counter = counters["\(exchange)/\(outcome)"] { return counter }
            let counter = Counter(
                label: "batch.messages.published.total", dimensions: [("exchange", exchange), ("outcome", outcome)])
            counters["\(exchange)/\(outcome)"] = counter
            return counter
        }
    }
}

/// Collects the outcomes of a batch of publishes and resumes its caller when the last one is known.
final class PublishBatch: Sendable {
    private struct State {
        var results: [MessagingError?]
        var remaining: Int
        var continuation: CheckedContinuation<[MessagingError?], Never>?
    }
    private let state: Mutex<State>

    init(count: Int, continuation: CheckedContinuation<[MessagingError?], Never>) {
        state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count, continuation: continuation))
    }

    func complete(_ index: Int, _ error: MessagingError?) {
        let finished = state.withLock { state -> (CheckedContinuation<[MessagingError?], Never>, [MessagingError?])? in
            state.results[index] = error
            state.remaining -= 1
            guard state.remaining == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.results)
        }
        if let (continuation, results) = finished { continuation.resume(returning: results) }
    }
}

struct ConsumerRegistration: Sendable {
    let id: Int
    let queue: String
    let prefetch: UInt16
    let continuation: AsyncStream<Delivery>.Continuation
}
