import Logging
import Metrics
import Persistence
import PostgresNIO
import ServiceLifecycle

/// Publishes counts read from the database as Prometheus gauges every few seconds: instances by state and the
/// outbox backlog (the scheduler), nodes by state (the provisioner). A state that disappears is set back to 0.
public struct StateGauges: Service {
    /// A gauge per value of one grouping column, from a query selecting `(text, bigint)` rows.
    public struct Query: Sendable {
        public var label: String
        public var dimension: String
        public var sql: PostgresQuery

        public init(label: String, dimension: String, sql: PostgresQuery) {
            self.label = label
            self.dimension = dimension
            self.sql = sql
        }

        /// Instances of all jobs by state (`batch_instances{state=…}`).
        public static let instances = Query(
            label: "batch.instances", dimension: "state",
            sql: "SELECT state, sum(count)::bigint FROM task_instance_counts GROUP BY state")
        /// Rows waiting in the outbox (`batch_outbox_backlog{table="outbox"}`).
        public static let outbox = Query(
            label: "batch.outbox.backlog", dimension: "table", sql: "SELECT 'outbox', count(*)::bigint FROM outbox")
        /// Nodes by state (`batch_nodes{state=…}`).
        public static let nodes = Query(
            label: "batch.nodes", dimension: "state",
            sql: "SELECT state, count(*)::bigint FROM compute_nodes GROUP BY state")
    }

    let database: Database
    let queries: [Query]
    let interval: Duration
    let logger: Logger

    public init(database: Database, queries: [Query], interval: Duration = .seconds(5), logger: Logger) {
        self.database = database
        self.queries = queries
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        var seen: [String: Set<String>] = [:]
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            for query in queries {
                do {
                    var values: [String: Int] = [:]
                    for try await (key, count) in try await database.client.query(query.sql, logger: logger)
                        .decode((String, Int).self)
                    {
                        values[key] = count
                    }
                    for key in seen[query.label, default: []].union(values.keys) {
                        Gauge(label: query.label, dimensions: [(query.dimension, key)]).record(values[key] ?? 0)
                    }
                    seen[query.label, default: []].formUnion(values.keys)
                } catch {
                    logger.debug("gauge not read", metadata: ["gauge": "\(query.label)", "error": "\(error)"])
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
