/// The state of a job, a task or a task instance, with the API's names (note `SUCCEED`, not `SUCCEEDED`).
///
/// Legal instance transitions (the scheduler applies them; anything else is ignored as stale):
/// `SUBMITTED → PENDING → RUNNABLE → STARTING → RUNNING → SUCCEED | FAILED | FAILED_INTERRUPTED`,
/// any non-final state → `FAILED` (terminated, or never runnable), and `RUNNABLE`/`STARTING`/`RUNNING` →
/// `RUNNABLE` for a retry.
public enum ExecutionState: String, Codable, Sendable, CaseIterable, Comparable {
    case submitted = "SUBMITTED"
    case pending = "PENDING"
    case runnable = "RUNNABLE"
    case starting = "STARTING"
    case running = "RUNNING"
    case succeed = "SUCCEED"
    case failed = "FAILED"
    case failedInterrupted = "FAILED_INTERRUPTED"

    /// `SUCCEED`, `FAILED` and `FAILED_INTERRUPTED`: nothing more happens without a retry.
    public var isFinal: Bool {
        switch self {
        case .succeed, .failed, .failedInterrupted: true
        default: false
        }
    }

    /// The order in which states are reached; used to ignore events that would move backwards.
    var rank: Int { Self.allCases.firstIndex(of: self)! }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rank < rhs.rank }
}

/// How many instances (or tasks) are in each state.
public struct StateCounts: Sendable, Hashable, Codable {
    public private(set) var counts: [ExecutionState: Int]

    public init(_ counts: [ExecutionState: Int] = [:]) { self.counts = counts.filter { $0.value > 0 } }

    public subscript(_ state: ExecutionState) -> Int {
        get { counts[state, default: 0] }
        set { counts[state] = newValue > 0 ? newValue : nil }
    }

    public var total: Int { counts.values.reduce(0, +) }
    public var finished: Int { counts.filter { $0.key.isFinal }.values.reduce(0, +) }
    public var allFinal: Bool { finished == total }
}

extension StateCounts {
    /// The state a task shows, given its instances' states: final when every instance is final (`SUCCEED` only
    /// when all succeeded, `FAILED_INTERRUPTED` when one was kept for inspection, else `FAILED`); otherwise the
    /// most advanced state any instance has reached (`RUNNING` before `STARTING` before `RUNNABLE`).
    public var rolledUp: ExecutionState {
        guard total > 0 else { return .pending }
        if allFinal {
            if self[.succeed] == total { return .succeed }
            return self[.failedInterrupted] > 0 ? .failedInterrupted : .failed
        }
        for state in [ExecutionState.running, .starting, .runnable, .pending] where self[state] > 0 {
            return state
        }
        // Some final, the rest submitted.
        return self[.running] + self[.starting] > 0 || finished > 0 ? .running : .submitted
    }
}
