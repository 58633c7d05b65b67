import ArgumentParser
import BatchRuntime
import Hummingbird
import Logging
import Messaging
import Persistence
import ServiceLifecycle

/// Owns job, task and instance state: consumes job and instance events, applies BatchCore's decisions in one
/// transaction per event (state and outgoing messages together), and dispatches instances.
@main
struct SchedulerService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "SchedulerService",
        abstract: "Run jobs' DAGs: release tasks, dispatch instances, finish jobs.",
        discussion: "Example: BATCH_MASTER_KEY=k1:… SchedulerService --ops-port 9101")

    @OptionGroup var connections: ConnectionOptions

    /// Port of /healthz, /readyz and /metrics on 127.0.0.1; 0 for none. Default `BATCH_SCHEDULER_OPS_PORT` or 0.
    @Option(help: "Port for /healthz and /metrics on 127.0.0.1, 0 for none (BATCH_SCHEDULER_OPS_PORT).")
    var opsPort: Int = Environment.int("BATCH_SCHEDULER_OPS_PORT", default: 0)

    /// Events handled at once. Default 8.
    @Option(help: "Events handled at once.")
    var concurrency: Int = Environment.int("BATCH_SCHEDULER_CONCURRENCY", default: 8)

    func run() async throws {
        let logger = Observability.bootstrap(service: "scheduler")
        let bootstrap = ServiceBootstrap(
            service: "SchedulerService", databaseURL: connections.databaseURL, amqpURL: connections.amqpURL,
            topology: .scheduler,
            logger: logger)
        let (database, amqp) = (bootstrap.database, bootstrap.amqp)
        try await bootstrap.withPreparedDatabase {
            let scheduler = JobScheduler(database: database, logger: logger)
            var services: [any Service] = [
                amqp,
                OutboxRelay(database: database, amqp: amqp, logger: logger),
                EventConsumer(
                    amqp: amqp, queue: Topology.schedulerQueue, concurrency: concurrency, logger: logger,
                    handle: scheduler.handle),
            ]
            if opsPort > 0 {
                services.append(Observability.operationalServer(port: opsPort, logger: logger) { amqp.isConnected })
            }
            try await ServiceGroup(
                configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            ).run()
        }
    }
}
