import BatchRuntime
import Logging
import Messaging
import Persistence

/// What every service that keeps state does at start: open the database sealed with `BATCH_MASTER_KEY`, connect to
/// the broker, apply migrations and check the key, or stop with one line on stderr.
public struct ServiceBootstrap: Sendable {
    public let service: String
    public let database: Database
    public let amqp: AMQPClient
    public let logger: Logger

    /// Reads the master key and URLs; exits with one line when one is missing or malformed.
    public init(
        service: String, databaseURL: String, amqpURL: String, role: String, topology: Topology, logger: Logger
    ) {
        self.service = service
        self.logger = logger
        do {
            let sealer = try Sealer(configuration: Environment.value("BATCH_MASTER_KEY"))
            database = try Database(
                configuration: try .init(url: try Environment.checkedDatabaseURL(databaseURL)), sealer: sealer,
                logger: logger)
            amqp = AMQPClient(
                configuration: .init(
                    url: try Environment.brokerURL(amqpURL, role: role), connectionName: "batch-\(service.lowercased())"
                ),
                topology: topology, logger: logger)
        } catch {
            exitWithError(service, error)
        }
    }

    /// Runs the database pool for the whole of `body`, after migrations and the master-key check; a failure of
    /// those stops the process with one line.
    public func withPreparedDatabase(_ body: () async throws -> Void) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            let database = self.database
            group.addTask { await database.run() }
            do {
                try await database.prepare()
            } catch {
                exitWithError(service, error)
            }
            try await body()
            group.cancelAll()
        }
    }
}
