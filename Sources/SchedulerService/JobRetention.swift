import BatchCore
import Logging
import Persistence
import ServiceLifecycle

/// Removes jobs that ended more than `retention` ago, as `DeleteJob` would, a batch at a time: ended jobs stop
/// counting against their users' job quotas, and the tables stay the size of what is recent.
struct JobRetention: Service {
    let jobs: JobStore
    let retention: Duration
    let logger: Logger

    /// How often to look: a tenth of the retention, between 1 s and a minute.
    var interval: Duration { min(max(retention / 10, .seconds(1)), .seconds(60)) }

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                var removed = 0
                // A backlog goes in batches, each its own short transaction.
                while !Task.isShuttingDownGracefully {
                    let batch = try await jobs.removeEnded(olderThan: retention)
                    removed += batch
                    if batch < 500 { break }
                }
                if removed > 0 {
                    logger.info("ended jobs removed", metadata: ["count": "\(removed)", "retention": "\(retention)"])
                }
            } catch {
                logger.warning("ended jobs not removed this time", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
