import Foundation

/// A compute node's state, with the API's names.
public enum ComputeNodeState: String, Codable, Sendable, CaseIterable {
    /// Decided on, not yet asked of the driver.
    case pending = "PENDING"
    /// Asked of the driver.
    case submitted = "SUBMITTED"
    /// The driver is making it.
    case creating = "CREATING"
    /// Made; its executor has not reported yet.
    case created = "CREATED"
    case creationFailed = "CREATION_FAILED"
    /// Its executor reports heartbeats.
    case running = "RUNNING"
    /// Its heartbeats stopped.
    case abnormal = "ABNORMAL"
    /// Being removed (draining first when busy).
    case deleting = "DELETING"
}

/// What is happening to a compute environment as a whole (`ComputeEnvView.NextAction`); nil while it just runs.
public enum ComputeEnvNextAction: String, Codable, Sendable, CaseIterable {
    /// `DeleteComputeEnv` was called: its nodes drain and go, then the environment.
    case deleting = "DELETING"
}

/// The state machine of one compute node.
///
/// | from | event | to | actions |
/// |---|---|---|---|
/// | `PENDING` | `submitted` | `SUBMITTED` | create on the driver |
/// | `SUBMITTED` | `creating` | `CREATING` | |
/// | `PENDING`, `SUBMITTED`, `CREATING` | `created` | `CREATED` | activity, `COMPUTE_NODE_CREATED` |
/// | `PENDING`, `SUBMITTED`, `CREATING` | `creationFailed` | `CREATION_FAILED` | activity, event |
/// | `PENDING`, `SUBMITTED`, `CREATING` | `heartbeat` | `RUNNING` | `COMPUTE_NODE_CREATED`, `COMPUTE_NODE_RUNNING` |
/// | `CREATED`, `RUNNING` | `heartbeat` | `RUNNING` | `COMPUTE_NODE_RUNNING` when it was not |
/// | `ABNORMAL` | `heartbeat` | `RUNNING` unless it is being replaced (`RECREATE`) | `COMPUTE_NODE_RUNNING` |
/// | `CREATED`, `RUNNING` | `heartbeatCheck` past the timeout | `ABNORMAL` | report lost, replace when `RECREATE` |
/// | any but `DELETING` | `deleteRequested` | `DELETING` | drain when busy, else destroy |
/// | `DELETING` | `drained` | `DELETING` | destroy |
/// | `DELETING`, `CREATION_FAILED` | `destroyed` | (gone) | activity |
public struct ComputeNodeLifecycle: Sendable, Hashable {
    public private(set) var state: ComputeNodeState
    public private(set) var lastHeartbeat: Date?
    public private(set) var freeSlots: Int
    public let slots: Int
    /// Set once the node is gone for good.
    public private(set) var removed = false

    public init(state: ComputeNodeState = .pending, slots: Int, freeSlots: Int? = nil, lastHeartbeat: Date? = nil) {
        self.state = state
        self.slots = slots
        self.freeSlots = freeSlots ?? slots
        self.lastHeartbeat = lastHeartbeat
    }

    public var isBusy: Bool { freeSlots < slots }

    public enum Event: Sendable, Hashable {
        case submitted
        case creating
        case created(at: Date)
        case creationFailed(reason: String)
        case heartbeat(at: Date, freeSlots: Int)
        /// Checks heartbeats at `now`; silent past `timeout` is abnormal.
        case heartbeatCheck(now: Date, timeout: TimeInterval)
        case deleteRequested(cause: String)
        case drained
        case destroyed
    }

    public enum Action: Sendable, Hashable {
        case createOnDriver
        case destroyOnDriver
        /// Stop taking work and finish what is running, then report `drained`.
        case drain
        /// Tell the scheduler: this node's instances are lost and run again elsewhere.
        case reportLost
        /// Make another node in its place (`ActionIfComputeNodeInactive` `RECREATE`).
        case replace
        /// Record a `DescribeComputeEnvActivities` entry.
        case recordActivity(type: String, cause: String)
        case publish(EventName)
    }

    public struct Transition: Sendable, Hashable {
        public var from: ComputeNodeState
        public var to: ComputeNodeState
        public var actions: [Action]
        public var ignored: String?
    }

    /// Applies `event`; `recreate` is whether an inactive node is replaced (`RECREATE`, the default).
    public mutating func handle(_ event: Event, recreate: Bool = true) -> Transition {
        let from = state
        func ignored(_ why: String) -> Transition { Transition(from: from, to: from, actions: [], ignored: why) }
        guard !removed else { return ignored("the node is gone") }
        var actions: [Action] = []
        switch event {
        case .submitted:
            guard state == .pending else { return ignored("not pending") }
            state = .submitted
            actions = [.createOnDriver]
        case .creating:
            guard state == .submitted else { return ignored("not submitted") }
            state = .creating
        case .created(let at):
            guard [.pending, .submitted, .creating].contains(state) else { return ignored("not being created") }
            state = .created
            lastHeartbeat = at
            actions = [.recordActivity(type: "create", cause: "node created"), .publish(.computeNodeCreated)]
        case .creationFailed(let reason):
            guard [.pending, .submitted, .creating].contains(state) else { return ignored("not being created") }
            state = .creationFailed
            actions = [.recordActivity(type: "create", cause: reason), .publish(.computeNodeCreationFailed)]
        case .heartbeat(let at, let free):
            // A node's first heartbeat is the news that it was made: its executor runs.
            guard state != .creationFailed, state != .deleting else { return ignored("not up") }
            // A silent node being replaced stays lost: its instances run elsewhere already.
            guard state != .abnormal || !recreate else { return ignored("being replaced") }
            if let lastHeartbeat, at < lastHeartbeat { return ignored("older heartbeat") }
            lastHeartbeat = at
            freeSlots = min(max(free, 0), slots)
            if [.pending, .submitted, .creating].contains(state) { actions = [.publish(.computeNodeCreated)] }
            if state != .running {
                state = .running
                actions.append(.publish(.computeNodeRunning))
            }
        case .heartbeatCheck(let now, let timeout):
            guard state == .created || state == .running else { return ignored("not up") }
            guard let last = lastHeartbeat, now.timeIntervalSince(last) > timeout else {
                return ignored("heard lately")
            }
            state = .abnormal
            actions = [.reportLost, .publish(.computeNodeAbnormal)]
            if recreate { actions.append(.replace) }
        case .deleteRequested(let cause):
            guard state != .deleting else { return ignored("already deleting") }
            let wasUp = state == .running || state == .created
            state = .deleting
            actions = [.recordActivity(type: "destroy", cause: cause), .publish(.computeNodeDeleting)]
            actions.append(wasUp && isBusy ? .drain : .destroyOnDriver)
        case .drained:
            guard state == .deleting else { return ignored("not deleting") }
            freeSlots = slots
            actions = [.destroyOnDriver]
        case .destroyed:
            guard state == .deleting || state == .creationFailed else { return ignored("not being removed") }
            removed = true
        }
        return Transition(from: from, to: state, actions: actions, ignored: nil)
    }
}

extension ComputeNodeLifecycle {
    /// Where a heartbeat takes a node in `state`; nil when the heartbeat changes nothing. The store applies this to
    /// many heartbeats in one statement (``ComputeNodeLifecycle/heartbeatTargets``).
    public static func heartbeatTarget(from state: ComputeNodeState, recreate: Bool = true) -> ComputeNodeState? {
        var node = ComputeNodeLifecycle(state: state, slots: 1)
        let transition = node.handle(.heartbeat(at: Date(timeIntervalSince1970: 0), freeSlots: 1), recreate: recreate)
        return transition.ignored == nil && transition.to != state ? transition.to : nil
    }

    /// Every state a heartbeat moves, and where to.
    public static var heartbeatTargets: [(from: ComputeNodeState, to: ComputeNodeState)] {
        ComputeNodeState.allCases.compactMap { state in heartbeatTarget(from: state).map { (state, $0) } }
    }

    /// The state of a node first heard of by its heartbeat (an executor that joined on its own): made, and beating.
    public static var joinedState: ComputeNodeState { heartbeatTarget(from: .created) ?? .running }
}
