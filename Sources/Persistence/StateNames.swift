import BatchCore

/// A state of BatchCore's as SQL names it: the store's SQL spells node, instance, task and job states only through
/// these (`\(unescaped: ExecutionState.runnable.sql)`), never as a literal of its own (`scripts/check-states`). Kept
/// in the SQL text rather than bound, so that the planner matches the partial indexes on those states.
public protocol SQLStateName: RawRepresentable where RawValue == String {}

extension SQLStateName {
    /// `'RUNNABLE'`.
    public var sql: String { "'\(rawValue)'" }
}

extension Sequence where Element: SQLStateName {
    /// `('SUCCEED', 'FAILED')`, for `IN`.
    public var sql: String { "(" + map(\.sql).joined(separator: ", ") + ")" }
}

extension ExecutionState: SQLStateName {}
extension ComputeNodeState: SQLStateName {}
extension ComputeEnvNextAction: SQLStateName {}
