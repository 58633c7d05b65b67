import Foundation

/// The state machine of one task instance across its attempts.
///
/// Legal transitions (anything else is stale or out of order and is ignored, with the reason):
///
/// | from | event | to |
/// |---|---|---|
/// | `SUBMITTED`, `PENDING` | `released` | `RUNNABLE` |
/// | `RUNNABLE` (not dispatched, back-off over) | `dispatched` | `RUNNABLE` (attempt + 1, dispatched) |
/// | `RUNNABLE` (dispatched) | `accepted(attempt)` | `STARTING` |
/// | `RUNNABLE` (dispatched), `STARTING` on the node | `started(attempt)` | `RUNNING` |
/// | `RUNNABLE` (dispatched), `STARTING`, `RUNNING` | `exited(attempt, 0)` | `SUCCEED` |
/// | same | `exited(attempt, ≠0)`, `timedOut(attempt)` | `RUNNABLE` (retry) or `FAILED` / `FAILED_INTERRUPTED` |
/// | `RUNNABLE` (dispatched), `STARTING`, `RUNNING` on the node | `nodeLost(node)` | `RUNNABLE` (not counted) |
/// | any non-final | `terminated` | `FAILED` |
/// | `FAILED_INTERRUPTED` | `terminated` | `FAILED` (node released) |
/// | `FAILED`, `FAILED_INTERRUPTED` | `retried` | `RUNNABLE` (history reset) |
///
/// Events carry the attempt they are about: a result of an older attempt changes nothing.
public struct InstanceLifecycle: Sendable, Hashable {
    public private(set) var state: ExecutionState
    /// The current attempt: 0 before the first dispatch, then 1, 2, ….
    public private(set) var attempt: Int
    /// Whether an `instance.run` for ``attempt`` is out (in a work queue or on a node).
    public private(set) var dispatched: Bool
    /// Failures counted against `MaxRetryCount` (a lost node does not count).
    public private(set) var failures: Int
    public private(set) var node: NodeID?
    public private(set) var exitCode: Int?
    public private(set) var reason: String?
    /// Not to be dispatched before this (retry back-off).
    public private(set) var notBefore: Date?

    public init(
        state: ExecutionState = .submitted, attempt: Int = 0, dispatched: Bool = false, failures: Int = 0,
        node: NodeID? = nil, exitCode: Int? = nil, reason: String? = nil, notBefore: Date? = nil
    ) {
        self.state = state
        self.attempt = attempt
        self.dispatched = dispatched
        self.failures = failures
        self.node = node
        self.exitCode = exitCode
        self.reason = reason
        self.notBefore = notBefore
    }

    public enum Event: Sendable, Hashable {
        case released
        case dispatched(at: Date)
        case accepted(attempt: Int, node: NodeID)
        case started(attempt: Int, node: NodeID)
        case exited(attempt: Int, exitCode: Int?, reason: String?, at: Date)
        case timedOut(attempt: Int, after: Int, at: Date)
        case nodeLost(NodeID)
        case terminated(reason: String)
        case retried
    }

    public enum Action: Sendable, Hashable {
        /// Publish `instance.run` for this attempt.
        case dispatch(attempt: Int)
        /// Stop this attempt on its node.
        case kill(node: NodeID, attempt: Int)
        /// Keep the node of a failed instance for inspection (`INTERRUPT`, `FAST_INTERRUPT`).
        case keepNode(NodeID)
        /// Give back a node that was kept.
        case releaseNode(NodeID)
        /// `FAST_INTERRUPT`: the task's instances not yet started never start.
        case stopTask(reason: String)
        /// A notification event happened.
        case publish(EventName)
    }

    /// What an event did: the new state and the actions, or why it was ignored.
    public struct Transition: Sendable, Hashable {
        public var from: ExecutionState
        public var to: ExecutionState
        public var actions: [Action]
        /// Set when the event changed nothing.
        public var ignored: String?

        static func ignored(_ state: ExecutionState, _ why: String) -> Transition {
            Transition(from: state, to: state, actions: [], ignored: why)
        }
    }

    /// Applies `event` under the task's `policy` and `failedAction`.
    public mutating func handle(
        _ event: Event, policy: RetryPolicy = RetryPolicy(maxRetryCount: 0), failedAction: FailedAction = .terminate
    ) -> Transition {
        let from = state
        var actions: [Action] = []
        switch event {
        case .released:
            guard state == .submitted || state == .pending else { return .ignored(state, "already released") }
            state = .runnable

        case .dispatched(let now):
            guard state == .runnable, !dispatched else { return .ignored(state, "not waiting for dispatch") }
            if let notBefore, now < notBefore { return .ignored(state, "in retry back-off") }
            attempt += 1
            dispatched = true
            notBefore = nil
            node = nil
            actions.append(.dispatch(attempt: attempt))

        case .accepted(let attempt, let node):
            guard attempt == self.attempt else { return .ignored(state, "stale attempt \(attempt)") }
            guard state == .runnable, dispatched else { return .ignored(state, "not dispatched") }
            state = .starting
            self.node = node

        case .started(let attempt, let node):
            guard attempt == self.attempt else { return .ignored(state, "stale attempt \(attempt)") }
            guard isOut else { return .ignored(state, "not dispatched") }
            guard state != .running else { return .ignored(state, "already running") }
            guard state != .starting || self.node == node else { return .ignored(state, "claimed by another node") }
            state = .running
            self.node = node
            actions.append(.publish(.taskInstanceRunning))

        case .exited(let attempt, let code, let why, let at):
            guard attempt == self.attempt else { return .ignored(state, "stale attempt \(attempt)") }
            guard isOut else { return .ignored(state, "not dispatched") }
            if code == 0 {
                state = .succeed
                exitCode = 0
                reason = nil
                dispatched = false
                actions.append(.publish(.taskInstanceSucceed))
            } else {
                actions += fail(
                    exitCode: code, reason: why ?? code.map { "exited with code \($0)" } ?? "failed",
                    at: at, policy: policy, failedAction: failedAction)
            }

        case .timedOut(let attempt, let seconds, let at):
            guard attempt == self.attempt else { return .ignored(state, "stale attempt \(attempt)") }
            guard state == .starting || state == .running, let node else { return .ignored(state, "not on a node") }
            actions.append(.kill(node: node, attempt: attempt))
            actions += fail(
                exitCode: nil, reason: "timed out after \(seconds) s", at: at, policy: policy,
                failedAction: failedAction)

        case .nodeLost(let lost):
            guard isOut, node == lost else { return .ignored(state, "not on node \(lost)") }
            state = .runnable
            dispatched = false
            node = nil
            reason = "node \(lost) was lost; run again elsewhere"

        case .terminated(let why):
            switch state {
            case .succeed, .failed:
                return .ignored(state, "already final")
            case .failedInterrupted:
                if let node { actions.append(.releaseNode(node)) }
            case .starting, .running:
                if let node { actions.append(.kill(node: node, attempt: attempt)) }
            default:
                break
            }
            state = .failed
            reason = why
            dispatched = false
            notBefore = nil
            actions.append(.publish(.taskInstanceFailed))

        case .retried:
            guard state == .failed || state == .failedInterrupted else { return .ignored(state, "not failed") }
            if state == .failedInterrupted, let node { actions.append(.releaseNode(node)) }
            state = .runnable
            failures = 0
            dispatched = false
            node = nil
            exitCode = nil
            reason = nil
            notBefore = nil
        }
        return Transition(from: from, to: state, actions: actions, ignored: nil)
    }

    /// An attempt is out: dispatched and not finished.
    private var isOut: Bool {
        (state == .runnable && dispatched) || state == .starting || state == .running
    }

    private mutating func fail(
        exitCode code: Int?, reason why: String, at now: Date, policy: RetryPolicy, failedAction: FailedAction
    ) -> [Action] {
        failures += 1
        exitCode = code
        dispatched = false
        switch policy.decide(exitCode: code, failures: failures) {
        case .retry(let backoff):
            state = .runnable
            reason = "\(why); retry \(failures) of \(policy.maxRetryCount)"
            notBefore = now.addingTimeInterval(Double(backoff.components.seconds))
            node = nil
            return []
        case .fail(let final):
            reason = "\(why); \(final)"
            switch failedAction {
            case .terminate:
                // As on Tencent Cloud: the failed instance ends and gives back its slot; the job's other work goes
                // on as its DependenceRule allows (a task with a failed instance fails once all its instances end).
                state = .failed
                return [.publish(.taskInstanceFailed)]
            case .interrupt:
                state = .failedInterrupted
                return (node.map { [.keepNode($0)] } ?? []) + [.publish(.taskInstanceFailedInterrupted)]
            case .fastInterrupt:
                state = .failedInterrupted
                return (node.map { [.keepNode($0)] } ?? []) + [
                    .publish(.taskInstanceFailedInterrupted), .stopTask(reason: reason!),
                ]
            }
        }
    }
}
