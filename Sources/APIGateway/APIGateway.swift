import ArgumentParser
import BatchRuntime
import Hummingbird
import Logging
import Messaging
import Persistence
import ServiceLifecycle

/// The HTTP API: Tencent Cloud Batch API 3.0 (`POST /`, `X-TC-Action`, TC3-HMAC-SHA256) on top of PostgreSQL,
/// with an outbox relay that publishes the events its writes cause.
@main
struct APIGateway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "APIGateway",
        abstract: "Serve the Batch API.",
        discussion: "Example: BATCH_MASTER_KEY=k1:$(head -c 32 /dev/urandom | base64) APIGateway --port 8080")

    /// Address to listen on. Default `BATCH_GATEWAY_HOST` or 127.0.0.1.
    @Option(help: "Address to listen on (BATCH_GATEWAY_HOST, default 127.0.0.1).")
    var host: String = Environment.value("BATCH_GATEWAY_HOST", default: "127.0.0.1")

    /// Port to listen on. Default `BATCH_GATEWAY_PORT` or 8080.
    @Option(help: "Port to listen on (BATCH_GATEWAY_PORT, default 8080).")
    var port: Int = Environment.int("BATCH_GATEWAY_PORT", default: 8080)

    @Option(help: "RabbitMQ URL (BATCH_AMQP_URL).")
    var amqpURL: String = Environment.amqpURL

    @Option(help: "PostgreSQL URL (BATCH_DATABASE_URL).")
    var databaseURL: String = Environment.databaseURL

    func run() async throws {
        let logger = Observability.bootstrap(service: "gateway")
        let bootstrap = ServiceBootstrap(
            service: "APIGateway", databaseURL: databaseURL, amqpURL: amqpURL, topology: .base, logger: logger)
        let (database, amqp) = (bootstrap.database, bootstrap.amqp)
        try await bootstrap.withPreparedDatabase {
            let api = BatchAPI(database: database, logger: logger)
            let router = Router()
            router.post("/") { request, context in try await api.respond(to: request, context: context) }
            Observability.addOperationalRoutes(to: router) { amqp.isConnected }
            let app = Application(
                router: router,
                configuration: .init(address: .hostname(host, port: port), serverName: "batch-gateway"),
                onServerRunning: { channel in
                    logger.info(
                        "gateway listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
                },
                logger: logger)
            let services = ServiceGroup(
                configuration: .init(
                    services: [amqp, OutboxRelay(database: database, amqp: amqp, logger: logger), app],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await services.run()
        }
    }
}
