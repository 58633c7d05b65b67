import ArgumentParser
import BatchCore
import BatchRuntime
import Foundation
import Hummingbird
import Logging
import Messaging
import Persistence
import ServiceLifecycle
import ServiceRuntime

/// Owns compute environments and nodes: makes each environment's work queue, keeps its desired number of nodes
/// running through a ``NodeDriver``, and records the nodes' heartbeats.
@main
struct ProvisionerService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ProvisionerService",
        abstract: "Keep compute environments' nodes running.",
        discussion: "Example: BATCH_MASTER_KEY=k1:… ProvisionerService --node-slots 4",
        version: BatchRelease.serviceVersion)

    @OptionGroup var connections: ConnectionOptions

    @Option(
        name: .customLong("node-slots"),
        help: """
            Slots of each node the process driver starts (BATCH_NODE_SLOTS; default from this host's CPUs and memory \
            and the environment's InstanceMemoryLimit, see NodeSizing).
            """)
    var nodeSlotsOption: Int?

    var nodeSlots: Int? { nodeSlotsOption ?? Environment.value("BATCH_NODE_SLOTS").flatMap(Int.init) }

    @Option(help: "The ExecutorService binary (BATCH_EXECUTOR_PATH, default next to this one).")
    var executorPath: String = Environment.value("BATCH_EXECUTOR_PATH") ?? ProvisionerService.siblingExecutable

    @Option(help: "Where nodes keep their work dirs and logs (BATCH_NODES_DIR, default .batch/nodes).")
    var nodesDir: String = Environment.value("BATCH_NODES_DIR", default: ".batch/nodes")

    @Option(help: "Port for /healthz and /metrics (on --ops-host), 0 for none (BATCH_PROVISIONER_OPS_PORT).")
    var opsPort: Int = Environment.int("BATCH_PROVISIONER_OPS_PORT", default: 0)

    @Option(help: "Address of /healthz, /readyz and /metrics (BATCH_OPS_HOST, default 127.0.0.1).")
    var opsHost: String = Environment.value("BATCH_OPS_HOST", default: "127.0.0.1")

    static var siblingExecutable: String {
        let me =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("ExecutorService").path
    }

    func run() async throws {
        let logger = Observability.bootstrap(service: "provisioner")
        guard FileManager.default.isExecutableFile(atPath: executorPath) else {
            exitWithError(
                "ProvisionerService",
                StartupError("no ExecutorService binary at \(executorPath); set BATCH_EXECUTOR_PATH"))
        }
        let bootstrap = ServiceBootstrap(
            service: "ProvisionerService", databaseURL: connections.databaseURL,
            amqpURL: connections.amqpURL(role: "PROVISIONER"), role: "PROVISIONER",
            topology: .services,
            logger: logger)
        let (database, amqp) = (bootstrap.database, bootstrap.amqp)
        try await bootstrap.withPreparedDatabase {
            // Nodes connect as the executors' broker user; the provisioner's own is for the control plane.
            let executorURL = Environment.value("BATCH_EXECUTOR_AMQP_URL")
            if executorURL == nil {
                logger.warning(
                    """
                    BATCH_EXECUTOR_AMQP_URL is not set: nodes connect with the provisioner's broker user, which may do \
                    more than a node needs
                    """)
            }
            let nodesURL = executorURL ?? connections.amqpURL(role: "PROVISIONER")
            let driver = ProcessNodeDriver(
                executable: executorPath, nodesDirectory: URL(fileURLWithPath: nodesDir).standardizedFileURL,
                amqpURL: nodesURL, logger: logger)
            // Each environment's nodes connect as a broker user of its own when the provisioner may manage users.
            let sealer = database.sealer
            let brokerUsers = try Environment.value("BATCH_RABBITMQ_MANAGEMENT_URL").flatMap { management in
                BrokerUsers(
                    management: management, broker: try AMQPURL(nodesURL), keys: { sealer.nodeKey(env: $0) },
                    logger: logger)
            }
            if brokerUsers == nil {
                logger.warning(
                    """
                    BATCH_RABBITMQ_MANAGEMENT_URL is not set: every environment's nodes share one broker user, which \
                    may consume any environment's work queue
                    """)
            }
            let provisioner = Provisioner(
                database: database, amqp: amqp, driver: driver, brokerUsers: brokerUsers, nodeSlots: nodeSlots,
                logger: logger)
            var services: [any Service] = [
                amqp,
                OutboxRelay(database: database, amqp: amqp, logger: logger),
                StateGauges(database: database, queries: [.nodes], logger: logger),
                provisioner,
            ]
            if opsPort > 0 {
                services.append(
                    Observability.operationalServer(host: opsHost, port: opsPort, logger: logger) { amqp.isConnected })
            }
            try await ServiceGroup(
                configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            ).run()
        }
    }
}
