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
    let envs: ComputeEnvStore
    let nodeSlots: Int
    let logger: Logger
    let interval: Duration = .seconds(5)

    init(database: Database, amqp: AMQPClient, driver: any NodeDriver, nodeSlots: Int, logger: Logger) {
        self.database = database
        self.amqp = amqp
        self.driver = driver
        self.envs = ComputeEnvStore(database: database)
        self.nodeSlots = nodeSlots
        self.logger = logger
    }

    /// Reconciles every environment, then consumes the provisioner's queue with the periodic reconciliation in the
    /// same loop, one thing at a time: two reconciliations of an environment never interleave (both would see it
    /// short of nodes and start them). Stops the nodes on shutdown.
    func run() async throws {
        let envs = self.envs
        await driver.onNodeExit { node, _, reason in
            try? await envs.deleteNode(node, cause: "node process ended: \(reason)")
        }
        try await envs.forgetProcessNodes()
        do {
            try await reconcileAll()
        } catch {
            logger.warning("reconciling environments failed", metadata: ["error": "\(error)"])
        }
        try await BatchConsumer(
            amqp: amqp, queue: Topology.provisionerQueue, prefetch: 50, maxBatch: 1,
            tick: .init(every: interval, reconcileAll), logger: logger
        ) { deliveries in
            for delivery in deliveries { try await handle(delivery) }
        }.run()
        await driver.shutdown()
    }

    /// Brings every environment of this driver to its desired node count, and removes those being deleted.
    @Sendable func reconcileAll() async throws {
        for env in try await envs.all() where env.driver == driver.name {
            if env.deleting {
                try await removeEnvironment(env.envID)
            } else {
                try await reconcile(env.envID, desired: env.desired)
            }
        }
    }

    /// Starts or stops nodes until `env` has `desired` of them.
    func reconcile(_ env: EnvID, desired: Int) async throws {
        try await amqp.declare(.workQueue(forEnv: env.rawValue))
        let running = await driver.nodes(of: env)
        if running.count < desired {
            for _ in running.count..<desired {
                let node = NodeID.generate()
                try await envs.nodeCreating(
                    node, env: env, slots: nodeSlots, host: ProcessInfo.processInfo.hostName,
                    cause: "the environment has \(running.count) of \(desired) nodes")
                do {
                    try await driver.createNode(node, env: env, slots: nodeSlots)
                } catch {
                    try await envs.setNodeState(node, "CREATION_FAILED")
                    try await envs.finishActivity(node: node, type: "create", state: "FAILED", reason: "\(error)")
                    throw error
                }
            }
        } else if running.count > desired {
            for node in running.suffix(running.count - desired) {
                try await destroy(node, cause: "the environment wants \(desired) nodes")
            }
        }
    }

    /// Stops a node (it finishes its work first) and records why.
    func destroy(_ node: NodeID, cause: String) async throws {
        try await envs.setNodeState(node, "DELETING")
        await driver.destroyNode(node)
        try await envs.deleteNode(node, cause: cause)
    }

    /// `DeleteComputeEnv`: every node goes, then the environment.
    func removeEnvironment(_ env: EnvID) async throws {
        for node in await driver.nodes(of: env) {
            try await destroy(node, cause: "the environment is being deleted")
        }
        try await envs.deleteEnvironment(env)
        logger.info("compute environment deleted", metadata: ["env.id": "\(env)"])
    }

    @Sendable func handle(_ delivery: Delivery) async throws {
        switch delivery.type {
        case ComputeEnvCreated.type, ComputeEnvModified.type:
            let envID =
                delivery.type == ComputeEnvCreated.type
                ? try delivery.decode(ComputeEnvCreated.self).payload.envID
                : try delivery.decode(ComputeEnvModified.self).payload.envID
            guard let env = try await envs.find(envID), env.driver == driver.name, !env.deleting else { return }
            try await reconcile(envID, desired: env.desired)
        case ComputeEnvDeletionRequested.type:
            let envID = try delivery.decode(ComputeEnvDeletionRequested.self).payload.envID
            guard let env = try await envs.find(envID), env.driver == driver.name else { return }
            try await removeEnvironment(envID)
        case NodeTerminationRequested.type:
            let event = try delivery.decode(NodeTerminationRequested.self).payload
            for node in event.nodeIDs { try await destroy(node, cause: "terminated by the user") }
        case NodeHeartbeat.type:
            try await envs.heartbeat(try delivery.decode(NodeHeartbeat.self).payload)
        case NodeStopped.type:
            try await envs.deleteNode(try delivery.decode(NodeStopped.self).payload.nodeID, cause: "the node stopped")
        default:
            throw PoisonMessage("the provisioner does not handle messages of type \(delivery.type ?? "(none)")")
        }
    }
}
