import Foundation

/// Decides which runnable instances go to their environments now: higher job `Priority` first (then older jobs,
/// then task and index order), no more than an environment's free slots, no more than a task's
/// `MaxConcurrentNum`, none in retry back-off. Those left get a ``PendingReason``.
public enum DispatchPlanner {
    /// A task, by job and name.
    public struct TaskKey: Sendable, Hashable {
        public var job: JobID
        public var task: String
        public init(job: JobID, task: String) {
            self.job = job
            self.task = task
        }
    }

    /// An instance that is `RUNNABLE` and not dispatched.
    public struct Candidate: Sendable, Hashable {
        public var task: TaskKey
        public var index: Int
        public var env: EnvID
        public var priority: Int
        public var submittedAt: Date
        public var notBefore: Date?

        public init(task: TaskKey, index: Int, env: EnvID, priority: Int, submittedAt: Date, notBefore: Date? = nil) {
            self.task = task
            self.index = index
            self.env = env
            self.priority = priority
            self.submittedAt = submittedAt
            self.notBefore = notBefore
        }
    }

    public struct Plan: Sendable, Hashable {
        public var dispatch: [Candidate] = []
        public var waiting: [Candidate: PendingReason] = [:]
    }

    /// - Parameters:
    ///   - freeSlots: slots free in each environment, not counting instances already dispatched and not started.
    ///   - active: instances of each task dispatched, starting or running.
    ///   - maxConcurrent: each task's `MaxConcurrentNum`, when it has one.
    public static func plan(
        _ candidates: [Candidate], freeSlots: [EnvID: Int], active: [TaskKey: Int], maxConcurrent: [TaskKey: Int],
        now: Date
    ) -> Plan {
        var plan = Plan()
        var free = freeSlots
        var running = active
        var queuedAhead: [EnvID: Int] = [:]
        let ordered = candidates.sorted {
            ($0.priority, $1.submittedAt, $1.task.job.rawValue, $1.task.task, $1.index)
                > ($1.priority, $0.submittedAt, $0.task.job.rawValue, $0.task.task, $0.index)
        }
        for candidate in ordered {
            if let notBefore = candidate.notBefore, now < notBefore {
                plan.waiting[candidate] = .retryBackoff(until: notBefore)
            } else if let limit = maxConcurrent[candidate.task], running[candidate.task, default: 0] >= limit {
                plan.waiting[candidate] = .maxConcurrentReached(limit: limit)
            } else if free[candidate.env, default: 0] <= 0 {
                plan.waiting[candidate] = .noFreeNode(
                    env: candidate.env, queuedAhead: queuedAhead[candidate.env, default: 0])
                queuedAhead[candidate.env, default: 0] += 1
            } else {
                free[candidate.env, default: 0] -= 1
                running[candidate.task, default: 0] += 1
                plan.dispatch.append(candidate)
            }
        }
        return plan
    }
}

extension DispatchPlanner {
    /// A started task's instances waiting for dispatch, as the scheduler counts them.
    public struct Demand: Sendable, Hashable {
        public var task: TaskKey
        public var env: EnvID
        /// Instances `RUNNABLE`, not dispatched and not in a retry back-off.
        public var ready: Int
        /// When the earliest back-off of the task's other waiting instances ends, if some wait on one.
        public var backoffEnd: Date?
        /// Instances dispatched and not ended.
        public var active: Int
        public var maxConcurrent: Int?

        public init(
            task: TaskKey, env: EnvID, ready: Int, backoffEnd: Date? = nil, active: Int, maxConcurrent: Int?
        ) {
            self.task = task
            self.env = env
            self.ready = ready
            self.backoffEnd = backoffEnd
            self.active = active
            self.maxConcurrent = maxConcurrent
        }
    }

    /// How many instances of a task go out now, and why the rest wait (nil when none wait).
    public struct Allotment: Sendable, Hashable {
        public var count: Int
        public var reason: PendingReason?
    }

    /// Shares the environments' free slots among `demands`, taken in the order given (the caller sorts them: higher
    /// job priority first, then older jobs, then task order). A task gets no more than its `MaxConcurrentNum` allows
    /// beside its active instances; the instances left get the reason that held them back, those behind a full
    /// environment with how many wait ahead of them.
    public static func allot(_ demands: [Demand], freeSlots: [EnvID: Int]) -> [Allotment] {
        var free = freeSlots
        var queuedAhead: [EnvID: Int] = [:]
        return demands.map { demand in
            let room = max(0, free[demand.env, default: 0])
            let limit = demand.maxConcurrent.map { max(0, $0 - demand.active) } ?? Int.max
            let count = min(demand.ready, room, limit)
            free[demand.env, default: 0] -= count
            let readyLeft = demand.ready - count
            var reason: PendingReason?
            if readyLeft > 0 {
                if limit <= room, let maxConcurrent = demand.maxConcurrent {
                    reason = .maxConcurrentReached(limit: maxConcurrent)
                } else {
                    reason = .noFreeNode(env: demand.env, queuedAhead: queuedAhead[demand.env, default: 0])
                    queuedAhead[demand.env, default: 0] += readyLeft
                }
            } else if let end = demand.backoffEnd {
                reason = .retryBackoff(until: end)
            }
            return Allotment(count: count, reason: reason)
        }
    }

    /// How `count` instances of one task sent to an environment split into run messages, as ranges of their
    /// positions. Nodes take whole messages, so a message holds at most as many instances as the smallest node runs
    /// at once (`smallestNode` slots), and the instances spread over at least as many messages as there are `nodes`
    /// (a few instances on an idle environment are not all left to one node).
    public static func runMessages(count: Int, nodes: Int, smallestNode: Int) -> [Range<Int>] {
        let size = max(1, min(smallestNode, (count + max(1, nodes) - 1) / max(1, nodes)))
        return stride(from: 0, to: count, by: size).map { $0..<min($0 + size, count) }
    }
}
