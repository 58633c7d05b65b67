import BatchCore
import Messaging
import ServiceLifecycle
import Synchronization

/// Sends the node's claims, starts and ends to the scheduler, several in one ``InstanceReports`` when they come
/// faster than the broker confirms them: a report made while none is on the way goes at once, and those made while
/// one is on the way go together in the next. Reports go out in the order they are made. ``send(_:)`` returns once
/// the broker confirmed the message holding its report (or throws what failed it): a run message is acked only
/// after its claims are confirmed. ``post(_:)`` does not wait (a start: the command does not wait for its report).
///
/// On graceful shutdown it sends what is pending and stops; the services that report stop before it.
final class Reporter: Service, Sendable {
    enum Report: Sendable {
        case accepted(InstanceStarted)
        case started(InstanceStarted)
        case finished(InstanceFinished)
    }

    /// The reporter stopped: the report was not sent.
    struct Stopped: Error, CustomStringConvertible {
        var description: String { "the node's reporter has stopped" }
    }

    private struct Pending {
        var reports: [(Report, CheckedContinuation<Void, any Error>?)] = []
        var stopped = false
    }

    let amqp: AMQPClient
    /// Reports in one message at most (an end carries up to 4 KiB of output).
    let maxBatch: Int
    private let pending = Mutex(Pending())
    private let wakes: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    /// Who reports: every message carries the node, its environment and its proof.
    let node: NodeID
    let env: EnvID
    let proof: String

    init(amqp: AMQPClient, node: NodeID, env: EnvID, key: NodeKey, maxBatch: Int = 32) {
        self.amqp = amqp
        self.node = node
        self.env = env
        self.proof = key.proof(node: node)
        self.maxBatch = maxBatch
        (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Sends `report`; returns once the broker has confirmed it.
    func send(_ report: Report) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let stopped = pending.withLock { pending in
                if !pending.stopped { pending.reports.append((report, continuation)) }
                return pending.stopped
            }
            if stopped { continuation.resume(throwing: Stopped()) } else { wake.yield() }
        }
    }

    /// Sends `report` after those made before it, without waiting for it to go (dropped when the reporter stopped).
    func post(_ report: Report) {
        let posted = pending.withLock { pending in
            if !pending.stopped { pending.reports.append((report, nil)) }
            return !pending.stopped
        }
        if posted { wake.yield() }
    }

    func run() async throws {
        await withGracefulShutdownHandler {
            for await _ in wakes { await sendPending() }
        } onGracefulShutdown: { [wake] in
            wake.finish()
        }
        // Reports made after the last wake are failed, not left waiting.
        let left = pending.withLock { pending in
            pending.stopped = true
            defer { pending.reports = [] }
            return pending.reports
        }
        for (_, continuation) in left { continuation?.resume(throwing: Stopped()) }
    }

    /// Sends everything pending, `maxBatch` reports a message, until nothing is.
    private func sendPending() async {
        while true {
            let batch = pending.withLock { pending in
                let batch = Array(pending.reports.prefix(maxBatch))
                pending.reports.removeFirst(batch.count)
                return batch
            }
            guard !batch.isEmpty else { return }
            var reports = InstanceReports(nodeID: node, envID: env, proof: proof)
            for (report, _) in batch {
                switch report {
                case .accepted(let accepted): reports.accepted = (reports.accepted ?? []) + [accepted]
                case .started(let started): reports.started.append(started)
                case .finished(let finished): reports.finished.append(finished)
                }
            }
            do {
                try await amqp.publish(
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.instanceReports,
                        payload: reports))
                for (_, continuation) in batch { continuation?.resume() }
            } catch {
                for (_, continuation) in batch { continuation?.resume(throwing: error) }
            }
        }
    }
}
