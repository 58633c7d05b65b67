import BatchCore
import BatchRuntime
import Foundation
import Logging
import Messaging
import Persistence
import PostgresNIO
import Synchronization

/// What the scheduler reacts to: the events it consumes, and what its watchdog finds.
enum SchedulerEvent: Sendable {
    case submitted
    /// A node claimed an attempt (it waits for the clearance, then for a slot).
    case accepted(InstanceStarted)
    case started(InstanceStarted)
    case finished(InstanceFinished)
    case terminateJob(reason: String)
    case terminateInstance(task: String, index: Int)
    case retry
    case timedOut(SchedulerStore.Overdue)
    case nodeLost(SchedulerStore.Overdue)

    /// The instance an instance event is about.
    var instance: SchedulerStore.InstanceKey? {
        switch self {
        case .accepted(let event), .started(let event):
            SchedulerStore.InstanceKey(task: event.taskName, index: event.instanceIndex)
        case .finished(let event): SchedulerStore.InstanceKey(task: event.taskName, index: event.instanceIndex)
        case .timedOut(let overdue), .nodeLost(let overdue): overdue.key
        case .submitted, .terminateJob, .terminateInstance, .retry: nil
        }
    }

    /// The node a claim, start or end comes from.
    var reportingNode: NodeID? {
        switch self {
        case .accepted(let report), .started(let report): report.nodeID
        case .finished(let report): report.nodeID
        default: nil
        }
    }

    /// A node's claim or start of an attempt.
    var report: InstanceStarted? {
        switch self {
        case .accepted(let report), .started(let report): report
        default: nil
        }
    }

    /// Whether the event acts on the database as the events before it left it (a termination or a retry): a job
    /// with one among its events has them applied in order, not together with other jobs'.
    var needsOrder: Bool {
        switch self {
        case .terminateJob, .terminateInstance, .retry: true
        default: false
        }
    }

    var isSubmitted: Bool {
        if case .submitted = self { true } else { false }
    }

    /// Whether the event may free a slot or make instances runnable (all but a claim or a start).
    var mayFreeSlots: Bool {
        switch self {
        case .accepted, .started: false
        default: true
        }
    }

    /// The claims, starts and ends a node's ``InstanceReports`` carries, each with its job, and the environment the
    /// node proved it serves; nil when the node does not hold its environment's key. Reports about other nodes are
    /// dropped.
    static func decode(reports: InstanceReports, keys: (EnvID) -> NodeKey) -> (
        node: NodeID, env: EnvID, events: [(JobID, SchedulerEvent)]
    )? {
        guard let node = reports.nodeID, let env = reports.envID, keys(env).verifies(reports.proof, node: node) else {
            return nil
        }
        let events: [(JobID, SchedulerEvent)] =
            (reports.accepted ?? []).filter { $0.nodeID == node }.map { ($0.jobID, .accepted($0)) }
            + reports.started.filter { $0.nodeID == node }.map { ($0.jobID, .started($0)) }
            + reports.finished.filter { $0.nodeID == node }.map { ($0.jobID, .finished($0)) }
        return (node, env, events)
    }

    /// Decodes a delivery from the control plane into the event it carries, with its job; a message of another
    /// type is poison (a node's reports go through ``decode(reports:keys:)``).
    static func decode(_ delivery: Delivery) throws -> [(JobID, SchedulerEvent)] {
        switch delivery.type {
        case JobSubmitted.type:
            return [(try delivery.decode(JobSubmitted.self).payload.jobID, .submitted)]
        case JobTerminationRequested.type:
            let event = try delivery.decode(JobTerminationRequested.self).payload
            return [(event.jobID, .terminateJob(reason: event.reason))]
        case InstanceTerminationRequested.type:
            let event = try delivery.decode(InstanceTerminationRequested.self).payload
            return [(event.jobID, .terminateInstance(task: event.taskName, index: event.instanceIndex))]
        case JobRetryRequested.type:
            return [(try delivery.decode(JobRetryRequested.self).payload.jobID, .retry)]
        default:
            throw PoisonMessage("the scheduler does not handle messages of type \(delivery.type ?? "(none)")")
        }
    }
}

/// Carries out BatchCore's decisions for batches of events: in one transaction it locks each job the batch is about,
/// applies its events with ``InstanceLifecycle`` and ``JobProgress``, dispatches what the environments have room
/// for (``DispatchPlanner``), and writes the new states with every message they cause (outbox).
struct JobScheduler: Sendable {
    struct Settings: Sendable {
        /// A node not heard from for this long is lost; its instances run again elsewhere.
        var nodeLostAfter: Duration = .seconds(30)
        /// How long after an instance's `Timeout` the scheduler fails it when its node did not report.
        var timeoutGrace: Duration = .seconds(30)
        /// Run messages queued per node slot beyond those running.
        var queuedPerSlot = 1
        /// `Region` in notifications.
        var region = "local"
        /// Most nodes of a task's anonymous environment (`Task.ComputeEnv`).
        var anonymousNodes = 4
    }

    let database: Database
    let amqp: AMQPClient
    let store: SchedulerStore
    let settings: Settings
    let logger: Logger
    private let cache = ConfigCache()
    private let created = CreatedInstances()
    private let keys = NodeKeys()
    private let pacing = Pacing(share: 20)
    /// Most events in one notification message (an instance's event is about 300 bytes).
    static let eventsPerNotification = 100

    init(database: Database, amqp: AMQPClient, settings: Settings = Settings(), logger: Logger) {
        self.database = database
        self.amqp = amqp
        self.store = SchedulerStore(database: database)
        self.settings = settings
        self.logger = logger
    }

    /// Handles a batch of deliveries in one transaction. Throws ``PoisonMessage`` for a message it cannot read.
    @Sendable func handle(_ deliveries: [Delivery]) async throws {
        var events: [JobID: [SchedulerEvent]] = [:]
        var gone: [NodeID] = []
        var proven: [NodeID: EnvID] = [:]
        for delivery in deliveries {
            switch delivery.type {
            case NodeGone.type:
                gone.append(try delivery.decode(NodeGone.self).payload.nodeID)
            case InstanceReports.type:
                let reports = try delivery.decode(InstanceReports.self).payload
                guard let (node, env, reported) = SchedulerEvent.decode(reports: reports, keys: nodeKey),
                    proven[node, default: env] == env
                else {
                    logger.warning(
                        "reports of a node without its environment's key ignored",
                        metadata: [
                            "node.id": "\(reports.nodeID?.rawValue ?? "(none)")",
                            "env.id": "\(reports.envID?.rawValue ?? "(none)")",
                        ])
                    continue
                }
                proven[node] = env
                for (job, event) in reported { events[job, default: []].append(event) }
            default:
                for (job, event) in try SchedulerEvent.decode(delivery) { events[job, default: []].append(event) }
            }
        }
        try await run(events, gone: gone, proven: proven)
    }

    /// The key `env`'s nodes hold (derived once per environment).
    private func nodeKey(_ env: EnvID) -> NodeKey { keys.key(env) { database.sealer.nodeKey(env: $0) } }

    /// The watchdog, every second: fails or retries instances past their `Timeout` whose node never reported,
    /// runs again the instances of lost nodes, and dispatches what waited (back-offs that ended, nodes that joined).
    /// Its pass rewrites the queue positions of every waiting task, which costs in proportion to the tasks waiting:
    /// it does so at most once a second, and no more often than keeps it under a twentieth of the scheduler's time.
    @Sendable func tick() async throws {
        let exactPositions = pacing.isDue()
        let start = ContinuousClock.now
        defer { if exactPositions { pacing.ran(for: ContinuousClock.now - start) } }
        try await database.transaction { connection in
            _ = try await store.lockScheduling(andFindAlive: [], lostAfter: settings.nodeLostAfter, on: connection)
            var events: [JobID: [SchedulerEvent]] = [:]
            for overdue in try await store.timedOut(grace: settings.timeoutGrace, on: connection) {
                events[overdue.job, default: []].append(.timedOut(overdue))
            }
            for lost in try await store.onLostNodes(lostAfter: settings.nodeLostAfter, on: connection) {
                events[lost.job, default: []].append(.nodeLost(lost))
            }
            _ = try await apply(events, alive: [:], exactPositions: exactPositions, on: connection)
        }
    }

    /// Applies `events`, and runs again what is still out on the `gone` nodes after them: a node's reports are
    /// queued before the word that it is gone, so an instance this batch's reports end is no longer out on the node
    /// when its `nodeLost` comes, and that changes nothing (``InstanceLifecycle``).
    func run(_ events: [JobID: [SchedulerEvent]], gone: [NodeID] = [], proven: [NodeID: EnvID] = [:]) async throws {
        // A claim is cleared only on a node heard from within `nodeLostAfter`: one counted lost (its instances run
        // again elsewhere) may be back, but must not run what it takes until its heartbeats are recorded again.
        let starting = events.values.joined().compactMap { $0.report?.nodeID }
        let clearances = try await database.transaction { connection in
            let alive = try await store.lockScheduling(
                andFindAlive: Set(starting), lostAfter: settings.nodeLostAfter, on: connection)
            var events = events
            if !gone.isEmpty {
                for overdue in try await store.onNodes(gone, on: connection) {
                    events[overdue.job, default: []].append(.nodeLost(overdue))
                }
            }
            return try await apply(events, alive: alive, proven: proven, on: connection)
        }
        // Sent once the starts are committed, outside the outbox: a node that hears nothing asks again.
        if !clearances.isEmpty {
            for case let error? in await amqp.publish(clearances) {
                logger.warning("clearance not sent; its node will ask again", metadata: ["error": "\(error)"])
                break
            }
        }
        if created.take() >= 1000 {
            do {
                try await store.refreshInstanceStatistics()
            } catch {
                logger.warning("instance statistics not refreshed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Applies the events and writes the messages they cause to the outbox; returns the clearances of the starts
    /// it recorded (on the `alive` nodes only), for the caller to send once the transaction commits.
    ///
    /// The work is done set-wise, in a handful of statements whatever the number of jobs: the jobs are locked, the
    /// instances the events are about loaded, changed in memory (``InstanceLifecycle``) and saved, each job's
    /// progress loaded, decided (``JobProgress``) and saved, each in one round trip for the whole batch. Only a job
    /// with a termination or retry among its events is handled on its own, its events in order.
    private func apply(
        _ events: [JobID: [SchedulerEvent]], alive: [NodeID: EnvID], proven: [NodeID: EnvID] = [:],
        exactPositions: Bool = false, on connection: PostgresConnection
    ) async throws -> [OutgoingMessage] {
        var messages: [OutgoingMessage] = []
        var batch = Batch(alive: alive, proven: proven)
        if !events.isEmpty {
            try await lock(Array(events.keys), into: &batch, on: connection)
            let ids = events.keys.filter { batch.jobs[$0] != nil }.sorted { $0.rawValue < $1.rawValue }
            let (inOrder, together) = ids.partitioned { id in events[id]!.contains { $0.needsOrder } }
            if !together.isEmpty {
                let instanceEvents = together.map { (job: $0, events: events[$0]!.filter { $0.instance != nil }) }
                let touched = try await applyInstanceEvents(instanceEvents, to: &batch, on: connection)
                var decisions: [Decision] = []
                for id in together where !touched[id, default: []].isEmpty || events[id]!.contains(where: \.isSubmitted)
                {
                    decisions.append(Decision(job: id, counting: touched[id, default: []]) { $0.advance() })
                }
                try await decide(decisions, in: &batch, on: connection)
            }
            for id in inOrder { try await handleInOrder(id, events[id]!, in: &batch, on: connection) }
            for id in ids { messages += try self.messages(for: batch.jobs[id]!, batch.effects[id]!) }
        }
        messages += try batch.resized.map {
            try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.computeEnvModified,
                payload: ComputeEnvModified(envID: $0))
        }
        // A start frees no slot and makes nothing runnable: a batch of starts alone skips the dispatch pass (the
        // watchdog's pass every second covers nodes that joined and back-offs that ended).
        if events.isEmpty || events.values.joined().contains(where: \.mayFreeSlots) {
            messages += try await dispatch(exactPositions: exactPositions, on: connection)
        }
        try await Outbox.enqueue(messages, on: connection, sealer: database.sealer, logger: logger)
        // One clearance message per node, however many of its starts the batch recorded.
        var clearances: [NodeID: [InstanceCleared.Attempt]] = [:]
        for (job, effects) in batch.effects.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            for clearance in effects.clearances {
                clearances[clearance.node, default: []].append(
                    .init(
                        jobID: job, taskName: clearance.task, instanceIndex: clearance.index, attempt: clearance.attempt
                    ))
            }
        }
        return try clearances.sorted { $0.key.rawValue < $1.key.rawValue }.map { node, attempts in
            try OutgoingMessage(
                exchange: Topology.commandsExchange, routingKey: Topology.nodeRoutingKey(node: node.rawValue),
                payload: InstanceCleared(attempts: attempts), persistent: false)
        }
    }

    /// Locks the jobs `ids` (their `Notifications` are read once and kept); warns of those that do not exist.
    private func lock(_ ids: [JobID], into batch: inout Batch, on connection: PostgresConnection) async throws {
        var known: [JobID: [JobNotification]] = [:]
        for id in ids { known[id] = cache.notifications(of: id) }
        let unknown = Set(ids.filter { known[$0] == nil })
        batch.jobs = try await store.lockJobs(ids, withNotifications: unknown, on: connection)
        for id in ids {
            guard batch.jobs[id] != nil else {
                logger.warning("event for an unknown job ignored", metadata: ["job.id": "\(id)"])
                continue
            }
            if let loaded = batch.jobs[id]!.notifications {
                cache.remember(loaded, of: id)
            } else {
                batch.jobs[id]!.notifications = known[id]
            }
            batch.effects[id] = Effects(alive: batch.alive, proven: batch.proven)
        }
    }

    // MARK: A job's events in order

    /// Applies the events of a job with a termination or retry among them, in order: each of those acts on the
    /// database as the events before it left it.
    private func handleInOrder(
        _ id: JobID, _ events: [SchedulerEvent], in batch: inout Batch, on connection: PostgresConnection
    ) async throws {
        var segment: [SchedulerEvent] = []
        var touched: Set<String> = []
        var advance = false
        func flush() async throws {
            guard !segment.isEmpty else { return }
            touched.formUnion(try await applyInstanceEvents([(id, segment)], to: &batch, on: connection)[id] ?? [])
            segment = []
        }
        for event in events {
            if event.instance != nil {
                segment.append(event)
                continue
            }
            try await flush()
            switch event {
            case .submitted:
                advance = true
            case .terminateJob(let reason):
                let ended = try await store.terminateInstances(of: id, reason: reason, on: connection)
                batch.effects[id]!.ended(ended, reason: reason)
                try await store.clearNextAction(batch.jobs[id]!, on: connection)
                try await decide(
                    [Decision(job: id, counting: nil, reason: reason) { $0.terminate(reason: reason) + $0.advance() }],
                    in: &batch, on: connection)
                touched = []
                advance = false
            case .terminateInstance(let task, let index):
                let reason = "terminated by the user (TerminateTaskInstance)"
                let ended = try await store.terminateInstances(
                    of: id, task: task, index: index, reason: reason, on: connection)
                batch.effects[id]!.ended(ended, reason: reason)
                touched.insert(task)
                advance = true
            case .retry:
                try await decide([Decision(job: id, counting: nil) { $0.retry() }], in: &batch, on: connection)
            default:
                break
            }
        }
        try await flush()
        if advance || !touched.isEmpty {
            try await decide([Decision(job: id, counting: touched) { $0.advance() }], in: &batch, on: connection)
        }
    }

    // MARK: Instances

    /// Applies instance events with ``InstanceLifecycle``: the rows they are about are loaded for all jobs in one
    /// statement, changed in memory, and written back in one statement. Returns the tasks whose instances changed,
    /// by job.
    private func applyInstanceEvents(
        _ events: [(job: JobID, events: [SchedulerEvent])], to batch: inout Batch, on connection: PostgresConnection
    ) async throws -> [JobID: Set<String>] {
        var keys: [JobID: Set<SchedulerStore.InstanceKey>] = [:]
        for (job, events) in events { keys[job, default: []].formUnion(events.compactMap(\.instance)) }
        guard !keys.isEmpty else { return [:] }
        let configs = try await cache.tasks(
            keys.flatMap { job, keys in Set(keys.map(\.task)).map { DispatchPlanner.TaskKey(job: job, task: $0) } },
            store: store, on: connection)
        var rows = try await store.instances(keys, on: connection)
        var changedRows: [JobID: [SchedulerStore.InstanceRow]] = [:]
        var stops: [(job: JobID, task: String, reason: String)] = []
        var touched: [JobID: Set<String>] = [:]
        for (job, jobEvents) in events {
            var effects = batch.effects[job] ?? Effects(alive: batch.alive, proven: batch.proven)
            let (changed, stopTasks) = try apply(
                jobEvents, of: job, rows: &rows[job, default: [:]], configs: configs, effects: &effects)
            batch.effects[job] = effects
            changedRows[job] = changed.map { rows[job]![$0]! }
            touched[job] = Set(changed.map(\.task))
            stops += stopTasks.sorted { $0.key < $1.key }.map { (job, $0.key, $0.value) }
        }
        try await store.saveInstances(changedRows, on: connection)
        for stop in stops {
            let reason = "FAST_INTERRUPT after \(stop.reason)"
            let ended = try await store.terminateInstances(
                of: stop.job, task: stop.task, notStarted: true, reason: reason, on: connection)
            batch.effects[stop.job]!.ended(ended, reason: reason)
        }
        return touched
    }

    /// Applies one job's instance events to its `rows` in memory. Returns the instances changed, and the tasks to
    /// stop (`FAST_INTERRUPT`) with why.
    private func apply(
        _ events: [SchedulerEvent], of job: JobID, rows: inout [SchedulerStore.InstanceKey: SchedulerStore.InstanceRow],
        configs: [DispatchPlanner.TaskKey: SchedulerStore.TaskConfig], effects: inout Effects
    ) throws -> (changed: Set<SchedulerStore.InstanceKey>, stopTasks: [String: String]) {
        var changed: Set<SchedulerStore.InstanceKey> = []
        var stopTasks: [String: String] = [:]
        for event in events {
            guard let key = event.instance, var row = rows[key],
                let config = configs[DispatchPlanner.TaskKey(job: job, task: key.task)]
            else {
                logger.warning("event for an unknown instance ignored", metadata: ["job.id": "\(job)"])
                continue
            }
            let now = Date()
            // A node runs only its own environment's work: a claim, start or end from a node that did not prove
            // the task's environment is refused (it can only come from a run message that node should never have
            // been able to take, or from a node speaking for another).
            if let node = event.reportingNode, let taskEnv = config.env, effects.proven[node] != taskEnv {
                let nodeEnv = effects.proven[node]?.rawValue ?? "(none)"
                logger.warning(
                    "\(event.report == nil ? "end" : "claim") from a node outside the task's environment refused",
                    metadata: [
                        "job.id": "\(job)", "task.name": "\(key.task)", "node.id": "\(node)",
                        "env.id": "\(nodeEnv)", "task.env.id": "\(taskEnv)",
                    ])
                // The node is told to stop it only when it is the node it says (its row's environment is the one
                // it proved): a node speaking for another must not get that one's attempts killed.
                if let report = event.report, let proven = effects.proven[node], effects.alive[node] == proven {
                    effects.kill(
                        node: report.nodeID, task: key.task, index: key.index, attempt: report.attempt,
                        reason: "the node is not in the task's environment")
                }
                continue
            }
            let transition: InstanceLifecycle.Transition
            switch event {
            case .accepted(let claim):
                transition = row.lifecycle.handle(.accepted(attempt: claim.attempt, node: claim.nodeID))
                guard let ignored = transition.ignored else {
                    effects.clear(node: claim.nodeID, task: key.task, index: key.index, attempt: claim.attempt)
                    break
                }
                // The node asks again (its clearance was lost): cleared again while the claim is what the row
                // holds.
                effects.answerAgain(claim, of: row.lifecycle, ignored: ignored, clear: row.lifecycle.state == .starting)
                continue
            case .started(let started):
                let sameRun = row.lifecycle.attempt == started.attempt && row.lifecycle.node == started.nodeID
                // A node that claimed the attempt runs it without waiting: only a start of a node before claims
                // waits for its clearance.
                let claimed = sameRun && row.lifecycle.state == .starting
                transition = row.lifecycle.handle(.started(attempt: started.attempt, node: started.nodeID))
                if let ignored = transition.ignored {
                    // The node asks again (its clearance was lost): cleared again unless the attempt is over
                    // (terminated meanwhile; its kill is on the way).
                    effects.answerAgain(
                        started, of: row.lifecycle, ignored: ignored, clear: !row.lifecycle.state.isFinal)
                    continue
                }
                row.launchTime = started.startedAt
                if !claimed {
                    effects.clear(node: started.nodeID, task: key.task, index: key.index, attempt: started.attempt)
                }
            case .finished(let finished):
                // An attempt a node stopped (handed back, or cut off from the broker) that is no longer current: a
                // late report of a node that was counted lost, whose instance already runs again.
                if finished.interrupted == true, finished.attempt != row.lifecycle.attempt { continue }
                if let node = row.lifecycle.node, node != finished.nodeID, row.lifecycle.attempt == finished.attempt {
                    logger.info(
                        "result of a duplicate run ignored",
                        metadata: ["job.id": "\(job)", "task.name": "\(key.task)", "node.id": "\(finished.nodeID)"])
                    continue
                }
                transition =
                    finished.interrupted == true
                    ? row.lifecycle.handle(.nodeLost(finished.nodeID))
                    : row.lifecycle.handle(
                        .exited(
                            attempt: finished.attempt, exitCode: finished.exitCode, reason: finished.reason,
                            at: finished.finishedAt),
                        policy: config.policy, failedAction: config.failedAction)
                guard transition.ignored == nil else { continue }
                if transition.to.isFinal {
                    row.endTime = finished.finishedAt
                    row.launchTime = row.launchTime ?? finished.finishedAt
                } else {
                    (row.launchTime, row.endTime) = (nil, nil)
                }
                if finished.interrupted != true {
                    let context = "logs:\(job)/\(key.task)/\(key.index)"
                    row.stdoutSealed = try finished.stdoutTail.map {
                        try database.sealer.seal($0, context: "\(context)/stdout")
                    }
                    row.stderrSealed = try finished.stderrTail.map {
                        try database.sealer.seal($0, context: "\(context)/stderr")
                    }
                }
            case .timedOut(let overdue):
                transition = row.lifecycle.handle(
                    .timedOut(attempt: overdue.attempt, after: overdue.timeoutSeconds, at: now),
                    policy: config.policy, failedAction: config.failedAction)
                guard transition.ignored == nil else { continue }
                if transition.to.isFinal { row.endTime = now } else { (row.launchTime, row.endTime) = (nil, nil) }
            case .nodeLost(let lost):
                guard let node = lost.node else { continue }
                transition = row.lifecycle.handle(.nodeLost(node))
                guard transition.ignored == nil else { continue }
                (row.launchTime, row.endTime) = (nil, nil)
                logger.warning(
                    "instance runs again: its node is lost",
                    metadata: ["job.id": "\(job)", "task.name": "\(key.task)", "node.id": "\(node)"])
            default:
                continue
            }
            rows[key] = row
            changed.insert(key)
            for action in transition.actions {
                switch action {
                case .kill(let node, let attempt):
                    effects.kill(
                        node: node, task: key.task, index: key.index, attempt: attempt,
                        reason: row.lifecycle.reason ?? "stopped")
                case .publish(let name):
                    effects.notify(
                        name, task: key.task, index: key.index, state: row.lifecycle.state,
                        reason: row.lifecycle.reason)
                case .stopTask(let reason):
                    stopTasks[key.task] = reason
                case .keepNode(let node):
                    logger.info(
                        "node kept for inspection of a failed instance",
                        metadata: ["job.id": "\(job)", "task.name": "\(key.task)", "node.id": "\(node)"])
                case .releaseNode, .dispatch:
                    break
                }
            }
        }
        return (changed, stopTasks)
    }

    // MARK: Decisions

    /// A job to decide with ``JobProgress``: its progress counts the instances of `counting` tasks (all when nil);
    /// `reason` explains a job that ends `FAILED` (otherwise: the tasks that failed).
    struct Decision {
        var job: JobID
        var counting: Set<String>?
        var reason: String?
        var transform: (inout JobProgress) -> [JobProgress.Action]
    }

    /// Loads the jobs' progress in one statement, lets each decision's `transform` decide, and writes what they
    /// decided in at most four more (``SchedulerStore/save(_:maxNodes:on:)``).
    private func decide(_ decisions: [Decision], in batch: inout Batch, on connection: PostgresConnection)
        async throws
    {
        guard !decisions.isEmpty else { return }
        var progress = try await store.progress(
            of: decisions.map { (batch.jobs[$0.job]!, $0.counting) }, on: connection)
        var decided = SchedulerStore.Decided()
        for decision in decisions {
            guard var jobProgress = progress[decision.job] else { continue }
            let job = batch.jobs[decision.job]!
            var effects = batch.effects[job.id] ?? Effects(alive: batch.alive, proven: batch.proven)
            for action in decision.transform(&jobProgress) {
                switch action {
                case .startTask(let name):
                    decided.started.append((job.id, name))
                    logger.info("task started", metadata: ["job.id": "\(job.id)", "task.name": "\(name)"])
                case .skipTask(let name, let why):
                    decided.skipped.append((job.id, name, why))
                    effects.notify(.taskFailed, task: name, state: .failed, reason: why)
                    logger.info(
                        "task cannot run",
                        metadata: ["job.id": "\(job.id)", "task.name": "\(name)", "reason": "\(why)"])
                case .setTaskState(let name, let state):
                    decided.taskStates.append((job.id, name, state))
                    if let event = EventName.task(state) { effects.notify(event, task: name, state: state) }
                case .setJobState(let state):
                    let failedTasks = jobProgress.tasks.values.filter { $0.state == .failed }.map(\.name).sorted()
                    let why =
                        state == .failed || state == .failedInterrupted
                        ? decision.reason ?? "task \(failedTasks.joined(separator: ", ")) failed" : nil
                    decided.jobStates.append((job.id, state, why))
                    if let event = EventName.job(state) { effects.notify(event, state: state, reason: why) }
                    logger.info(
                        "job state changed", metadata: ["job.id": "\(job.id)", "job.state": "\(state.rawValue)"])
                }
            }
            batch.jobs[job.id]!.state = jobProgress.state
            batch.effects[job.id] = effects
            progress[decision.job] = jobProgress
        }
        let (count, resized) = try await store.save(decided, maxNodes: settings.anonymousNodes, on: connection)
        created.add(count)
        batch.resized += resized
    }

    // MARK: Dispatch

    /// Sends out as many waiting instances as the environments' live nodes have room for, in priority order
    /// and within each task's `MaxConcurrentNum`; records why the others wait. Queue positions behind a full
    /// environment are rewritten only with `exactPositions` (the watchdog's pass, every second): a pass after each
    /// batch would rewrite every task waiting there, as each instance that ends moves them all up by one.
    private func dispatch(exactPositions: Bool, on connection: PostgresConnection) async throws -> [OutgoingMessage] {
        // Each slot gets `queuedPerSlot` more run messages than it runs, so a node starts its next instance the
        // moment one ends, without waiting for this transaction's round trip.
        let (capacity, nodes, active) = try await store.capacityAndActive(
            lostAfter: settings.nodeLostAfter, on: connection)
        var free = capacity.mapValues { $0 * (1 + settings.queuedPerSlot) }
        for (_, out) in active { if let env = out.env { free[env, default: 0] -= out.count } }
        // Ready instances are counted a little past the free slots (one more is enough to know that a task must
        // wait); the watchdog's pass counts further, for the queue positions it writes. An environment whose nodes
        // left with instances still out has fewer than none free.
        let open = free.filter { $0.value > 0 }
        var activeTasks: [EnvID: Int] = [:]
        for (_, out) in active { if let env = out.env { activeTasks[env, default: 0] += 1 } }
        let waiting = try await store.waitingTasks(
            free: open, active: activeTasks, all: exactPositions,
            readyCap: (open.values.max() ?? 0) + (exactPositions ? 1000 : 1),
            on: connection)
        guard !waiting.isEmpty else { return [] }
        let demands = waiting.map {
            DispatchPlanner.Demand(
                task: $0.key, env: $0.env, ready: $0.ready, backoffEnd: $0.backoffEnd,
                active: active[$0.key]?.count ?? 0, maxConcurrent: $0.maxConcurrent)
        }
        let allotments = DispatchPlanner.allot(demands, freeSlots: free)
        let picked = zip(waiting, allotments).filter { $0.1.count > 0 }
        let configs = try await cache.tasks(picked.map(\.0.key), store: store, on: connection)
        let dispatched = try await store.dispatch(
            picked.filter { configs[$0.0.key] != nil }.map { ($0.0.key, $0.1.count) }, on: connection)
        var messages: [OutgoingMessage] = []
        var reasons: [(task: DispatchPlanner.TaskKey, reason: String?)] = []
        for (task, allotment) in zip(waiting, allotments) {
            if let config = configs[task.key], let dispatched = dispatched[task.key] {
                let envNodes = nodes[task.env] ?? (count: 1, smallest: 1)
                for positions in DispatchPlanner.runMessages(
                    count: dispatched.count, nodes: envNodes.count, smallestNode: envNodes.smallest)
                {
                    let attempts = dispatched[positions].map {
                        InstanceRuns.Attempt(instanceIndex: $0.index, attempt: $0.attempt)
                    }
                    messages.append(
                        try OutgoingMessage(
                            exchange: Topology.commandsExchange,
                            routingKey: Topology.workRoutingKey(env: task.env.rawValue),
                            // Sealed for the environment's nodes: the broker keeps no secret in plain text.
                            payload: InstanceRuns(
                                jobID: task.job, taskName: task.task, instanceCount: config.instanceCount,
                                envID: task.env, command: config.command, environment: config.environment,
                                timeoutSeconds: config.timeoutSeconds, io: config.io, attempts: attempts
                            ).sealing(with: nodeKey(task.env)),
                            correlationID: task.job.rawValue, mandatory: true))
                }
            }
            let reason = allotment.reason?.stateReason
            if reason != task.stateReason,
                exactPositions || allotment.reason?.differsOnlyInPosition(from: task.stateReason) != true
            {
                reasons.append((task.key, reason))
            }
        }
        try await store.setPendingReasons(reasons, on: connection)
        return messages
    }

    // MARK: Messages

    /// The messages one job's events caused: kills and notifications.
    private func messages(for job: SchedulerStore.LockedJob, _ effects: Effects) throws -> [OutgoingMessage] {
        var messages = try effects.kills.map { kill in
            try OutgoingMessage(
                exchange: Topology.commandsExchange, routingKey: Topology.nodeRoutingKey(node: kill.node.rawValue),
                payload: InstanceKill(
                    jobID: job.id, taskName: kill.task, instanceIndex: kill.index, attempt: kill.attempt,
                    reason: kill.reason),
                correlationID: job.id.rawValue)
        }
        guard !effects.notifications.isEmpty else { return messages }
        let topics = job.notifications ?? []
        let encoder = BatchJSON.encoder()
        let now = Date()
        let events = effects.notifications.map { note in
            BatchNotification.Event(
                note.event, at: now, region: settings.region, job: job.id, jobName: job.name, task: note.task,
                instance: note.index, state: note.state, reason: note.reason)
        }
        for notification in BatchNotification.grouped(events, mostPerMessage: Self.eventsPerNotification) {
            let event = notification.events[0].eventName
            let body = Array(try encoder.encode(notification))
            var keys = [Topology.notificationRoutingKey(event: event, job: job.id.rawValue)]
            for topic in topics where topic.eventConfigs.contains(where: { $0.eventName == event }) {
                keys.append(Topology.topicRoutingKey(topic: topic.topicName))
            }
            for key in keys {
                messages.append(
                    OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: key, body: body,
                        messageID: UUID().uuidString.lowercased(), type: "batch.notification",
                        correlationID: job.id.rawValue))
            }
        }
        return messages
    }
}

/// What the scheduler holds while it handles a batch: the jobs it locked, what each one's events ask for besides
/// state, and the anonymous environments whose node count changed.
struct Batch {
    /// The nodes heard from lately, with their environments (``Effects/alive``).
    let alive: [NodeID: EnvID]
    /// The environments the reporting nodes proved they serve (``Effects/proven``).
    let proven: [NodeID: EnvID]
    var jobs: [JobID: SchedulerStore.LockedJob] = [:]
    var effects: [JobID: Effects] = [:]
    var resized: [EnvID] = []

    init(alive: [NodeID: EnvID], proven: [NodeID: EnvID]) {
        self.alive = alive
        self.proven = proven
    }
}

/// What handling one job's events asks for besides state: kills on nodes and notifications.
struct Effects {
    struct Kill {
        var node: NodeID
        var task: String
        var index: Int
        var attempt: Int
        var reason: String
    }
    struct Clearance {
        var node: NodeID
        var task: String
        var index: Int
        var attempt: Int
    }
    struct Note {
        var event: EventName
        var task: String?
        var index: Int?
        var state: ExecutionState
        var reason: String?
    }
    /// The nodes heard from lately, with their environments: only their starts are cleared.
    let alive: [NodeID: EnvID]
    /// The environments the reporting nodes proved they serve (``NodeKey``): only their reports count.
    let proven: [NodeID: EnvID]
    var kills: [Kill] = []
    /// Starts recorded: the nodes may run these attempts (``InstanceCleared``, sent once the transaction commits).
    var clearances: [Clearance] = []
    var notifications: [Note] = []

    mutating func kill(node: NodeID, task: String, index: Int, attempt: Int, reason: String) {
        kills.append(Kill(node: node, task: task, index: index, attempt: attempt, reason: reason))
    }

    /// Clears a start, unless its node is not heard from (it asks again; if it stays silent, it is lost).
    mutating func clear(node: NodeID, task: String, index: Int, attempt: Int) {
        guard alive[node] != nil else { return }
        clearances.append(Clearance(node: node, task: task, index: index, attempt: attempt))
    }

    /// Answers a claim or start that changed nothing: the node that holds the attempt, asking again, is cleared
    /// again when `clear`; any other (a second delivery of a run message, an attempt already over) is refused, so no
    /// instance ever runs twice.
    mutating func answerAgain(_ report: InstanceStarted, of row: InstanceLifecycle, ignored: String, clear: Bool) {
        let task = report.taskName
        let index = report.instanceIndex
        if row.attempt == report.attempt && row.node == report.nodeID {
            if clear { self.clear(node: report.nodeID, task: task, index: index, attempt: report.attempt) }
        } else {
            kill(
                node: report.nodeID, task: task, index: index, attempt: report.attempt,
                reason: "not the current run of this instance (\(ignored))")
        }
    }

    mutating func notify(
        _ event: EventName, task: String? = nil, index: Int? = nil, state: ExecutionState, reason: String? = nil
    ) {
        notifications.append(Note(event: event, task: task, index: index, state: state, reason: reason))
    }

    /// Instances a termination ended: kills for the nodes that run or may take them, and their notifications.
    mutating func ended(_ ended: [SchedulerStore.Ended], reason: String) {
        for instance in ended {
            for node in instance.nodes {
                kill(node: node, task: instance.task, index: instance.index, attempt: instance.attempt, reason: reason)
            }
            notify(.taskInstanceFailed, task: instance.task, index: instance.index, state: .failed, reason: reason)
        }
    }
}

extension EventName {
    /// The notification of a task reaching `state`, if there is one.
    static func task(_ state: ExecutionState) -> EventName? {
        switch state {
        case .running: .taskRunning
        case .succeed: .taskSucceed
        case .failed: .taskFailed
        case .failedInterrupted: .taskFailedInterrupted
        default: nil
        }
    }

    /// The notification of a job reaching `state`, if there is one.
    static func job(_ state: ExecutionState) -> EventName? {
        switch state {
        case .running: .jobRunning
        case .succeed: .jobSucceed
        case .failed: .jobFailed
        case .failedInterrupted: .jobFailedInterrupted
        default: nil
        }
    }
}

/// Task configurations and job notifications, which never change once a job is submitted: read and unsealed once.
final class ConfigCache: Sendable {
    private let tasks = Mutex<[DispatchPlanner.TaskKey: SchedulerStore.TaskConfig]>([:])
    private let topics = Mutex<[JobID: [JobNotification]]>([:])
    private let limit = 50_000

    /// The configurations of `tasks` (those that exist): those not kept yet are read in one statement.
    func tasks(_ tasks: [DispatchPlanner.TaskKey], store: SchedulerStore, on connection: PostgresConnection)
        async throws -> [DispatchPlanner.TaskKey: SchedulerStore.TaskConfig]
    {
        var found: [DispatchPlanner.TaskKey: SchedulerStore.TaskConfig] = [:]
        let missing = self.tasks.withLock { kept in
            tasks.filter { task in
                guard let config = kept[task] else { return true }
                found[task] = config
                return false
            }
        }
        guard !missing.isEmpty else { return found }
        let loaded = try await store.taskConfigs(missing, on: connection)
        self.tasks.withLock {
            if $0.count + loaded.count > limit { $0.removeAll(keepingCapacity: true) }
            $0.merge(loaded) { _, new in new }
        }
        return found.merging(loaded) { _, new in new }
    }

    /// The notifications of a job, if known.
    func notifications(of job: JobID) -> [JobNotification]? { topics.withLock { $0[job] } }

    func remember(_ notifications: [JobNotification], of job: JobID) {
        topics.withLock {
            if $0.count >= limit { $0.removeAll(keepingCapacity: true) }
            $0[job] = notifications
        }
    }
}

extension Array {
    /// The elements for which `belongs` holds, and the others, each in their order.
    func partitioned(by belongs: (Element) throws -> Bool) rethrows -> (matching: [Element], others: [Element]) {
        var matching: [Element] = []
        var others: [Element] = []
        for element in self {
            if try belongs(element) { matching.append(element) } else { others.append(element) }
        }
        return (matching, others)
    }
}

/// Paces work whose cost grows with what waits: after a run of `d`, the next is due `share` × `d` later, so it takes
/// no more than one part in `share` of the time.
final class Pacing: Sendable {
    private let share: Int
    private let next = Mutex<ContinuousClock.Instant?>(nil)

    init(share: Int) { self.share = share }

    /// Whether the work is due now.
    func isDue() -> Bool { next.withLock { $0.map { ContinuousClock.now >= $0 } ?? true } }

    /// The work ran for `duration`.
    func ran(for duration: Duration) { next.withLock { $0 = ContinuousClock.now + duration * (share - 1) } }
}

/// Instances created since the planner's statistics were last refreshed.
final class CreatedInstances: Sendable {
    private let count = Atomic<Int>(0)

    func add(_ amount: Int) { count.add(amount, ordering: .relaxed) }

    /// The count so far, reset to zero.
    func take() -> Int { count.exchange(0, ordering: .relaxed) }
}

/// Each environment's ``NodeKey``, derived once.
final class NodeKeys: Sendable {
    private let keys = Mutex<[EnvID: NodeKey]>([:])

    func key(_ env: EnvID, derive: (EnvID) -> NodeKey) -> NodeKey {
        keys.withLock { keys in
            if let key = keys[env] { return key }
            let key = derive(env)
            keys[env] = key
            return key
        }
    }
}
