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
    private let pending = Mutex<[String: CheckedContinuation<LogChunk?, Never>]>([:])

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
            pending.withLock { $0.removeValue(forKey: chunk.requestID) }?.resume(returning: chunk)
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
            pending.withLock { $0[requestID] = continuation }
            Task {
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
        }
    }

    private func resume(_ requestID: String, with chunk: LogChunk?) {
        pending.withLock { $0.removeValue(forKey: requestID) }?.resume(returning: chunk)
    }
}
