import BatchCore
import Foundation
import Logging
import Messaging
import ServiceLifecycle
import Synchronization

/// Reads a piece of an instance's stdout or stderr from the node that runs (or ran) it, over the broker: a
/// ``LogRequest`` to the node's queue, the ``LogChunk`` back on this gateway's own reply queue. Nodes keep their
/// instances' output in files while they run and after, so logs are readable at any time, never capped.
final class LogFetcher: Service, Sendable {
    let amqp: AMQPClient
    /// This gateway process's reply queue id.
    let id: String
    let timeout: Duration
    let logger: Logger
    /// Requests waiting for their answer, each with the task that publishes it and gives up after ``timeout``.
    private let pending = Mutex<[String: Waiter]>([:])

    private struct Waiter {
        var continuation: CheckedContinuation<LogChunk?, Never>
        var timer: Task<Void, Never>?
    }

    /// The gateway's topology: the services' queues (events it publishes are never unroutable) and its reply queue,
    /// declared again after a reconnection.
    static func topology(id: String) -> Topology { Topology.services.merging(Topology.replyQueue(for: id)) }

    init(amqp: AMQPClient, id: String, timeout: Duration = .seconds(3), logger: Logger) {
        self.amqp = amqp
        self.id = id
        self.timeout = timeout
        self.logger = logger
    }

    func run() async throws {
        for await delivery in amqp.consume(queue: Topology.replyQueue(id), prefetch: 100)
            .cancelOnGracefulShutdown()
        {
            delivery.ack()
            guard let chunk = try? Envelope<LogChunk>.decode(delivery.body).payload else { continue }
            resume(chunk.requestID, with: chunk)
        }
    }

    /// Asks `node` for `limit` bytes of an attempt's `stream` from `offset` (negative: from the end). Nil when the
    /// node is gone or does not answer within ``timeout``.
    func fetch(
        node: NodeID, job: JobID, task: String, index: Int, attempt: Int, stream: String, offset: Int, limit: Int
    ) async -> LogChunk? {
        let requestID = UUID().uuidString
        let request = LogRequest(
            requestID: requestID, replyTo: Topology.replyRoutingKey(id), jobID: job, taskName: task,
            instanceIndex: index, attempt: attempt, stream: stream, offset: offset, limit: limit)
        return await withCheckedContinuation { continuation in
            pending.withLock { $0[requestID] = Waiter(continuation: continuation) }
            let timer = Task {
                do {
                    try await amqp.publish(
                        try OutgoingMessage(
                            exchange: Topology.commandsExchange,
                            routingKey: Topology.nodeRoutingKey(node: node.rawValue),
                            payload: request, mandatory: true, persistent: false))
                } catch {
                    // Unroutable: the node and its queue are gone.
                    logger.debug("log request not delivered", metadata: ["node.id": "\(node)", "error": "\(error)"])
                    resume(requestID, with: nil)
                    return
                }
                try? await Task.sleep(for: timeout)
                resume(requestID, with: nil)
            }
            // The answer may have come already; otherwise it stops the timer when it comes.
            let answered = pending.withLock { pending in
                guard pending[requestID] != nil else { return true }
                pending[requestID]?.timer = timer
                return false
            }
            if answered { timer.cancel() }
        }
    }

    private func resume(_ requestID: String, with chunk: LogChunk?) {
        guard let waiter = pending.withLock({ $0.removeValue(forKey: requestID) }) else { return }
        waiter.timer?.cancel()
        waiter.continuation.resume(returning: chunk)
    }
}
