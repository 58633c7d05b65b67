import BatchCore
import BatchRuntime
import Foundation
import Logging
import Messaging
import Persistence
import ServiceLifecycle

/// Keeps each environment at its desired node count and records what nodes report.
///
/// As a `Service` it reconciles every environment at start and every few seconds (a node that died is replaced),
/// handles environment and node events in between, and stops its nodes on shutdown.
struct Provisioner: Service {
    let database: Database
    let amqp: AMQPClient
    let driver: any NodeDriver
    /// Makes each environment's nodes' broker user (nil: nodes share the executors' user).
    let brokerUsers: BrokerUsers?
    let envs: ComputeEnvStore
    /// Slots of each node; nil: sized from the host (``NodeSizing``) and the environment's instance memory.
    let nodeSlots: Int?
    let logger: Logger
    let interval: Duration = .seconds(5)
    /// A node not heard from for this long is `ABNORMAL` and replaced (the scheduler reruns its instances after
    /// the same time).
    let silentAfter: Duration = .seconds(30)

    init(
        database: Database, amqp: AMQPClient, driver: any NodeDriver, brokerUsers: BrokerUsers? = nil, nodeSlots: Int?,
        logger: Logger
    ) {
        self.database = database
        self.amqp = amqp
        self.driver = driver
        self.brokerUsers = brokerUsers
        self.envs = ComputeEnvStore(database: database)
        self.nodeSlots = nodeSlots
        self.logger = logger
    }

    /// Whether a node's message comes from a holder of its environment's key; one that does not is ignored and
    /// logged (a node cannot join, or speak for, an environment it was not given).
    func proven(_ node: NodeID, _ env: EnvID, _ proof: String?, _ what: String) -> Bool {
        if database.sealer.nodeKey(env: env).verifies(proof, node: node) { return true }
        logger.warning(
            "\(what) of a node without its environment's key ignored",
            metadata: ["node.id": "\(node)", "env.id": "\(env)"])
        return false
    }

    /// Reconciles every environment, then consumes the provisioner's queue with the periodic reconciliation in the
    /// same loop, one thing at a time: two reconciliations of an environment never interleave (both would see it
    /// short of nodes and start them). Stops the nodes on shutdown.
    func run() async throws {
        let envs = self.envs
        let logger = self.logger
        await driver.onNodeExit { exit in
            let cause = exit.expected ? "the node stopped" : "the node ended unexpectedly: \(exit.reason)"
            do {
                try await envs.deleteNode(exit.node, cause: cause)
            } catch {
                logger.warning("node end not recorded", metadata: ["node.id": "\(exit.node)", "error": "\(error)"])
            }
        }
        try await envs.forgetProcessNodes()
        do {
            try await reconcileAll()
        } catch {
            logger.warning("reconciling environments failed", metadata: ["error": "\(error)"])
        }
        // Not awaited at shutdown: a mark waiting for the broker to come back must not hold the provisioner.
        let marks = Task { await markHeartbeats() }
        defer { marks.cancel() }
        try await BatchConsumer(
            amqp: amqp, queue: Topology.provisionerQueue, prefetch: 2000, maxBatch: 1000,
            tick: .init(every: interval, reconcileAll),
            stallLimit: .seconds(Environment.int("BATCH_STALL_LIMIT", default: 120)), logger: logger
        ) { deliveries in
            // Heartbeats of the whole batch go in one statement, with the latest mark taken; other events in order,
            // one at a time.
            var beats: [NodeHeartbeat] = []
            var mark: Date?
            for delivery in deliveries {
                switch delivery.type {
                case NodeHeartbeat.type:
                    let beat = try delivery.decode(NodeHeartbeat.self).payload
                    if proven(beat.nodeID, beat.envID, beat.proof, "heartbeat") { beats.append(beat) }
                case HeartbeatMark.type:
                    mark = max(mark ?? .distantPast, try delivery.decode(HeartbeatMark.self).payload.at)
                default:
                    try await handle(delivery)
                }
            }
            try await envs.heartbeats(beats, recordedUntil: mark)
        }.run()
        await driver.shutdown()
    }

    /// Every second, puts a ``HeartbeatMark`` in the provisioner's own queue: taking it tells that every heartbeat
    /// confirmed before it is recorded, so nodes count as silent only up to there.
    private func markHeartbeats() async {
        while !Task.isCancelled {
            do {
                try await amqp.publish(
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.heartbeatMark,
                        payload: HeartbeatMark(at: Date()), persistent: false))
            } catch {
                logger.debug("heartbeat mark not published", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Brings every environment of this driver to its desired node count, replaces silent nodes, and removes the
    /// environments being deleted once their nodes are gone.
    @Sendable func reconcileAll() async throws {
        for env in try await envs.all() where env.driver == driver.name {
            try await reconcile(env)
        }
    }

    /// Starts nodes, or drains the idlest, until `env` has its desired number (draining nodes do not count); stops
    /// silent nodes (`ABNORMAL`) so that they are replaced; forgets going nodes no driver runs once they are silent;
    /// deletes an environment being deleted once its last node is gone.
    func reconcile(_ env: ComputeEnvStore.Provisioned) async throws {
        let nodes = await driver.nodes(of: env.envID)
        for node in try await envs.goneNodes(of: env.envID, silentAfter: silentAfter)
        where !nodes.contains(where: { $0.node == node }) {
            try await envs.deleteNode(node, cause: "the node stopped without a word (no heartbeat for \(silentAfter))")
        }
        if env.deleting {
            for node in nodes where !node.draining {
                try await stop(node.node, drain: true, cause: "the environment is being deleted")
            }
            if nodes.isEmpty {
                try await envs.deleteEnvironment(env.envID)
                await brokerUsers?.remove(env.envID)
                logger.info("compute environment deleted", metadata: ["env.id": "\(env.envID)"])
            }
            return
        }
        try await amqp.declare(.workQueue(forEnv: env.envID.rawValue))
        // Its nodes' broker user exists before its first node, and for hosts attached by hand.
        try await brokerUsers?.ensure(env.envID)
        for node in try await envs.silentNodes(of: env.envID, silentAfter: silentAfter)
        where nodes.contains(where: { $0.node == node && !$0.draining }) {
            logger.warning("node silent; replacing it", metadata: ["node.id": "\(node)"])
            try await envs.setNodeState(node, .abnormal)
            try await stop(node, drain: false, cause: "no heartbeat for \(silentAfter)")
        }
        let active = await driver.nodes(of: env.envID).filter { !$0.draining }.map(\.node)
        if active.count < env.desired {
            for _ in active.count..<env.desired {
                try await create(in: env, cause: "the environment has \(active.count) of \(env.desired) nodes")
            }
        } else if active.count > env.desired {
            // The idlest first: a node running nothing goes at once, a busy one only after its instances end.
            let busy = Dictionary(
                (try await envs.nodes(of: [env.envID]))[env.envID, default: []].map {
                    ($0.computeNodeId, $0.cpu - $0.taskInstanceNumAvailable)
                }, uniquingKeysWith: { first, _ in first })
            let idlest = active.sorted { busy[$0, default: 0] < busy[$1, default: 0] }
            for node in idlest.prefix(active.count - env.desired) {
                try await stop(node, drain: true, cause: "the environment wants \(env.desired) nodes")
            }
        }
    }

    func create(in env: ComputeEnvStore.Provisioned, cause: String) async throws {
        let node = NodeID.generate()
        let nodeSlots =
            self.nodeSlots
            ?? NodeSizing.slots(
                cpus: ProcessInfo.processInfo.activeProcessorCount,
                memoryBytes: Int64(ProcessInfo.processInfo.physicalMemory),
                instanceMemoryBytes: env.instanceMemoryLimit.map { Int64($0) << 20 })
        try await envs.nodeCreating(
            node, env: env.envID, slots: nodeSlots, host: ProcessInfo.processInfo.hostName, cause: cause)
        do {
            try await driver.createNode(
                node, env: env.envID, slots: nodeSlots,
                settings: NodeSettings(
                    sandbox: env.sandbox, egress: env.egress, instanceMemoryLimit: env.instanceMemoryLimit,
                    nodeKey: database.sealer.nodeKey(env: env.envID).base64,
                    amqpURL: try await brokerUsers?.nodeURL(env.envID)))
        } catch {
            try await envs.setNodeState(node, .creationFailed)
            try await envs.finishActivity(
                node: node, type: "create", state: ExecutionState.failed.rawValue, reason: "\(error)")
            throw error
        }
    }

    /// Asks a node to go (draining or now) and marks it `DELETING`; its row goes when it has ended.
    func stop(_ node: NodeID, drain: Bool, cause: String) async throws {
        logger.info("stopping node", metadata: ["node.id": "\(node)", "drain": "\(drain)", "cause": "\(cause)"])
        try await envs.nodeDeleting(node, cause: cause)
        await driver.stopNode(node, drain: drain)
    }

    @Sendable func handle(_ delivery: Delivery) async throws {
        switch delivery.type {
        case ComputeEnvCreated.type, ComputeEnvModified.type, ComputeEnvDeletionRequested.type:
            let envID =
                switch delivery.type {
                case ComputeEnvCreated.type: try delivery.decode(ComputeEnvCreated.self).payload.envID
                case ComputeEnvModified.type: try delivery.decode(ComputeEnvModified.self).payload.envID
                default: try delivery.decode(ComputeEnvDeletionRequested.self).payload.envID
                }
            guard let env = try await envs.find(envID), env.driver == driver.name else { return }
            try await reconcile(env)
        case NodeTerminationRequested.type:
            let event = try delivery.decode(NodeTerminationRequested.self).payload
            let drain = event.drain ?? false
            let cause = drain ? "detached by the user" : "terminated by the user"
            let ours = Set(await driver.nodes(of: event.envID).map(\.node))
            for node in event.nodeIDs {
                if ours.contains(node) {
                    try await stop(node, drain: drain, cause: cause)
                } else {
                    // A node no driver of ours runs (attached): told on its own queue.
                    try await envs.nodeDeleting(node, cause: cause)
                    try await amqp.publish(
                        try OutgoingMessage(
                            exchange: Topology.commandsExchange,
                            routingKey: Topology.nodeRoutingKey(node: node.rawValue),
                            payload: NodeStop(nodeID: node, drain: drain, reason: cause), persistent: false))
                }
            }
        case NodeHeartbeat.type:
            let beat = try delivery.decode(NodeHeartbeat.self).payload
            if proven(beat.nodeID, beat.envID, beat.proof, "heartbeat") { try await envs.heartbeats([beat]) }
        case NodeStopped.type:
            let stopped = try delivery.decode(NodeStopped.self).payload
            if proven(stopped.nodeID, stopped.envID, stopped.proof, "stop") {
                try await envs.deleteNode(stopped.nodeID, in: stopped.envID, cause: "the node stopped")
            }
        default:
            throw PoisonMessage("the provisioner does not handle messages of type \(delivery.type ?? "(none)")")
        }
    }
}
