import ArgumentParser
import BatchCore
import BatchRuntime
import Hummingbird
import Logging
import Messaging
import Persistence
import ServiceLifecycle
import ServiceRuntime

/// Owns job, task and instance state: consumes job and instance events in batches, applies BatchCore's decisions in
/// one transaction per batch (state and outgoing messages together), dispatches instances as capacity allows, and
/// watches for timeouts and lost nodes.
@main
struct SchedulerService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "SchedulerService",
        abstract: "Run jobs' DAGs: release tasks, dispatch instances, finish jobs.",
        discussion: "Example: BATCH_MASTER_KEY=k1:… SchedulerService --ops-port 9101",
        version: BatchRelease.serviceVersion,
        subcommands: [Reseal.self])

    @OptionGroup var connections: ConnectionOptions

    /// Port of /healthz, /readyz and /metrics on `opsHost`; 0 for none. Default `BATCH_SCHEDULER_OPS_PORT` or 0.
    @Option(help: "Port for /healthz and /metrics (on --ops-host), 0 for none (BATCH_SCHEDULER_OPS_PORT).")
    var opsPort: Int = Environment.int("BATCH_SCHEDULER_OPS_PORT", default: 0)

    @Option(help: "Address of /healthz, /readyz and /metrics (BATCH_OPS_HOST, default 127.0.0.1).")
    var opsHost: String = Environment.value("BATCH_OPS_HOST", default: "127.0.0.1")

    /// Events handled in one transaction at most. Default 500.
    @Option(help: "Events handled in one transaction at most (BATCH_SCHEDULER_BATCH).")
    var batchSize: Int = Environment.int("BATCH_SCHEDULER_BATCH", default: 500)

    /// Seconds of silence after which a node is lost and its instances run again elsewhere. Default 30.
    @Option(help: "Seconds without a heartbeat before a node is lost (BATCH_NODE_LOST_AFTER).")
    var nodeLostAfter: Int = Environment.int("BATCH_NODE_LOST_AFTER", default: 30)

    /// Seconds past an instance's Timeout before the scheduler fails it when its node never reported. Default 30.
    @Option(help: "Seconds past a Timeout before an unreported instance is failed (BATCH_TIMEOUT_GRACE).")
    var timeoutGrace: Int = Environment.int("BATCH_TIMEOUT_GRACE", default: 30)

    /// Run messages queued per node slot beyond those running, so nodes never wait for the scheduler. Default 1.
    @Option(help: "Run messages queued per node slot beyond those running (BATCH_QUEUED_PER_SLOT).")
    var queuedPerSlot: Int = Environment.int("BATCH_QUEUED_PER_SLOT", default: 1)

    @Option(help: "Most nodes of a task's anonymous environment (BATCH_ANONYMOUS_NODES, default 4).")
    var anonymousNodes: Int = Environment.int("BATCH_ANONYMOUS_NODES", default: 4)

    /// Seconds one batch may take before the scheduler takes itself to be wedged and exits, to be started again.
    @Option(help: "Seconds a batch may take before the scheduler exits to be restarted (BATCH_STALL_LIMIT).")
    var stallLimit: Int = Environment.int("BATCH_STALL_LIMIT", default: 120)

    /// Seconds an ended job is kept before it is removed (as `DeleteJob` removes it); 0 keeps jobs until deleted.
    @Option(help: "Seconds ended jobs are kept, then removed; 0 keeps them (BATCH_JOB_RETENTION, default 7 days).")
    var jobRetention: Int = Environment.int("BATCH_JOB_RETENTION", default: 7 * 24 * 3600)

    func validate() throws {
        guard jobRetention >= 0 else { throw ValidationError("--job-retention must be 0 (keep) or seconds") }
    }

    func run() async throws {
        let logger = Observability.bootstrap(service: "scheduler")
        let bootstrap = ServiceBootstrap(
            service: "SchedulerService", databaseURL: connections.databaseURL,
            amqpURL: connections.amqpURL(role: "SCHEDULER"), role: "SCHEDULER",
            topology: .services,
            logger: logger)
        let (database, amqp) = (bootstrap.database, bootstrap.amqp)
        try await bootstrap.withPreparedDatabase {
            let scheduler = JobScheduler(
                database: database, amqp: amqp,
                settings: .init(
                    nodeLostAfter: .seconds(nodeLostAfter), timeoutGrace: .seconds(timeoutGrace),
                    queuedPerSlot: max(0, queuedPerSlot), anonymousNodes: max(1, anonymousNodes)),
                logger: logger)
            var services: [any Service] = [
                amqp,
                OutboxRelay(database: database, amqp: amqp, logger: logger),
                StateGauges(database: database, queries: [.instances, .outbox], logger: logger),
                BatchConsumer(
                    amqp: amqp, queue: Topology.schedulerQueue, prefetch: batchSize * 2, maxBatch: batchSize,
                    tick: .init(every: .seconds(1), scheduler.tick), stallLimit: .seconds(stallLimit), logger: logger,
                    handle: scheduler.handle),
            ]
            if jobRetention > 0 {
                services.append(
                    JobRetention(jobs: JobStore(database: database), retention: .seconds(jobRetention), logger: logger))
            }
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

/// `SchedulerService reseal`: re-seals every sealed value under the current master key, then exits.
struct Reseal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-seal every sealed value under the current master key (the first of BATCH_MASTER_KEY), then exit.",
        discussion: """
            Example: BATCH_MASTER_KEY=k2:…,k1:… SchedulerService reseal
            To rotate the master key: put the new key first and the old one after it on every service, restart them,
            run this (services may keep running), then drop the old key. Nodes are replaced: their keys derive from
            the master key.
            """,
        version: BatchRelease.serviceVersion)

    @Option(help: "PostgreSQL URL (BATCH_DATABASE_URL).")
    var databaseURL: String = Environment.databaseURL

    func run() async throws {
        let service = "SchedulerService reseal"
        let logger = Observability.bootstrap(service: "reseal")
        let database: Database
        do {
            database = try Database(
                configuration: try .init(url: try Environment.checkedDatabaseURL(databaseURL)),
                sealer: try Sealer(configuration: Environment.value("BATCH_MASTER_KEY")), logger: logger)
        } catch {
            exitWithError(service, error)
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await database.run() }
            do {
                try await database.prepare()
                let resealer = Resealer(database: database)
                let counts = try await resealer.reseal()
                for (column, count) in counts where count > 0 { print("\(column): \(count) re-sealed") }
                let total = counts.map(\.count).reduce(0, +)
                print("\(total) values re-sealed under key \(database.sealer.current.id)")
                if let left = try await resealer.remaining().first {
                    throw SealingError("\(left.column): \(left.count) values still under another key; run it again")
                }
            } catch {
                exitWithError(service, error)
            }
            group.cancelAll()
        }
    }
}
