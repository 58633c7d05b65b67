import Foundation

/// Why an instance is not running, machine-readable (``code``) and in plain words (``sentence``), for
/// `StateReason` and `batchctl why`.
public enum PendingReason: Sendable, Hashable, CustomStringConvertible {
    /// The task waits for a predecessor task to finish.
    case waitingForTask(String)
    /// Dispatched or ready, but every slot of the environment is busy; `queuedAhead` instances come first.
    case noFreeNode(env: EnvID, queuedAhead: Int)
    /// The task already runs `MaxConcurrentNum` instances.
    case maxConcurrentReached(limit: Int)
    /// A quota stops more work from starting.
    case quotaReached(Quotas.Kind)
    /// The environment is creating nodes for it.
    case environmentScalingUp(env: EnvID)
    /// A failed attempt waits out its back-off before the next one.
    case retryBackoff(until: Date)
    /// Sent to the environment's work queue; waiting for a node to take it.
    case queued(env: EnvID)

    public var code: String {
        switch self {
        case .waitingForTask: "WAITING_FOR_TASK"
        case .noFreeNode: "NO_FREE_NODE"
        case .maxConcurrentReached: "MAX_CONCURRENT_REACHED"
        case .quotaReached: "QUOTA_REACHED"
        case .environmentScalingUp: "ENVIRONMENT_SCALING_UP"
        case .retryBackoff: "RETRY_BACKOFF"
        case .queued: "QUEUED"
        }
    }

    public var sentence: String {
        switch self {
        case .waitingForTask(let task):
            "Waiting for task \(task) to finish."
        case .noFreeNode(let env, let ahead):
            ahead == 0
                ? "No node of environment \(env) has a free slot; this instance is next."
                : "No node of environment \(env) has a free slot; \(ahead) instance\(ahead == 1 ? " is" : "s are") queued ahead."
        case .maxConcurrentReached(let limit):
            "The task already runs its MaxConcurrentNum of \(limit) instances at once."
        case .quotaReached(let kind):
            "The quota of \(kind.rawValue) is reached."
        case .environmentScalingUp(let env):
            "Environment \(env) is creating nodes for this work."
        case .retryBackoff(let until):
            "The last attempt failed; the next starts after \(ISO8601DateFormatter().string(from: until))."
        case .queued(let env):
            "Sent to environment \(env); waiting for a node to take it."
        }
    }

    public var description: String { "\(code): \(sentence)" }

    /// `CODE: sentence`, as stored in `StateReason`.
    public var stateReason: String { description }

    /// Whether `stored` (a `StateReason` written earlier) says this but for the queue position of a
    /// ``noFreeNode(env:queuedAhead:)``. Every instance ending behind a full environment moves every task waiting
    /// there up by one; the scheduler rewrites positions only once a second, not on every dispatch pass.
    public func differsOnlyInPosition(from stored: String?) -> Bool {
        guard case .noFreeNode(let env, _) = self, let stored else { return false }
        return stored.hasPrefix("\(code): No node of environment \(env) has a free slot;")
    }
}
