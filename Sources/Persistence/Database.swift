import BatchCore
import Foundation
import Logging
import NIOSSL
import PostgresNIO
import ServiceLifecycle

/// PostgreSQL through a pooled `PostgresClient`, with the schema's migrations and the ``Sealer`` for secrets.
///
/// Run it as a `Service` (it runs the pool) before using it; ``prepare()`` then applies migrations and checks
/// the master key against the database.
public final class Database: Sendable, Service {
    /// Where the database is: `postgres://user:password@host:port/database[?sslmode=…&sslrootcert=FILE]`.
    public struct Configuration: Sendable {
        /// TLS to the server, as libpq's `sslmode` names it.
        public enum SSLMode: String, Sendable, CaseIterable {
            /// Plain TCP.
            case disable
            /// TLS when the server offers it, without checking its certificate (`allow` reads the same).
            case prefer
            /// TLS or no connection; the certificate is checked against `sslrootcert` when one is given.
            case require
            /// TLS with a certificate that chains to `sslrootcert` (or the system's roots).
            case verifyCA = "verify-ca"
            /// As `verify-ca`, and the certificate names the host.
            case verifyFull = "verify-full"
        }

        public var host: String
        public var port: Int
        public var user: String
        public var password: String?
        public var database: String
        /// Default `prefer`, as libpq's.
        public var sslMode: SSLMode
        /// A PEM file of the roots the server's certificate must chain to; the system's when nil.
        public var sslRootCertificate: String?
        /// Most connections the pool opens. Default `BATCH_DATABASE_POOL_SIZE` or 20.
        public var maximumConnections: Int

        public init(
            url: String,
            maximumConnections: Int = ProcessInfo.processInfo.environment["BATCH_DATABASE_POOL_SIZE"].flatMap(Int.init)
                ?? 20
        ) throws {
            guard let components = URLComponents(string: url),
                components.scheme == "postgres" || components.scheme == "postgresql",
                let host = components.host, !host.isEmpty
            else {
                throw DatabaseError("BATCH_DATABASE_URL must look like postgres://user:password@host:port/database")
            }
            self.host = host
            self.port = components.port ?? 5432
            self.user = components.user ?? "postgres"
            self.password = components.password
            let database = String(components.path.dropFirst())
            self.database = database.isEmpty ? self.user : database
            self.maximumConnections = maximumConnections
            var mode = SSLMode.prefer
            var root: String?
            for item in components.queryItems ?? [] {
                switch item.name {
                case "sslmode":
                    let value = item.value ?? ""
                    guard let parsed = SSLMode(rawValue: value == "allow" ? "prefer" : value) else {
                        throw DatabaseError(
                            "BATCH_DATABASE_URL: sslmode \(value.prefix(32)) is not one of disable, allow, prefer, "
                                + "require, verify-ca, verify-full")
                    }
                    mode = parsed
                case "sslrootcert":
                    guard let path = item.value, FileManager.default.isReadableFile(atPath: path) else {
                        throw DatabaseError(
                            "BATCH_DATABASE_URL: sslrootcert \(item.value ?? "") is not a readable file")
                    }
                    root = path
                default:
                    throw DatabaseError(
                        "BATCH_DATABASE_URL: parameter \(item.name.prefix(32)) is not one of sslmode, sslrootcert")
                }
            }
            self.sslMode = mode
            self.sslRootCertificate = root
        }

        var client: PostgresClient.Configuration {
            get throws {
                var configuration = PostgresClient.Configuration(
                    host: host, port: port, username: user, password: password, database: database, tls: try tls)
                configuration.options.maximumConnections = maximumConnections
                configuration.options.minimumConnections = 0
                return configuration
            }
        }

        /// What `sslMode` and `sslRootCertificate` ask of a connection: how to check the server, and whether TLS
        /// is required (nil when it is disabled).
        var tlsDemand: (configuration: TLSConfiguration, required: Bool)? {
            get throws {
                var tls = TLSConfiguration.makeClientConfiguration()
                if let sslRootCertificate {
                    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(sslRootCertificate))
                }
                switch sslMode {
                case .disable: return nil
                case .prefer: tls.certificateVerification = .none
                case .require: tls.certificateVerification = sslRootCertificate == nil ? .none : .noHostnameVerification
                case .verifyCA: tls.certificateVerification = .noHostnameVerification
                case .verifyFull: tls.certificateVerification = .fullVerification
                }
                return (tls, sslMode != .prefer)
            }
        }

        var tls: PostgresClient.Configuration.TLS {
            get throws {
                guard let demand = try tlsDemand else { return .disable }
                return demand.required ? .require(demand.configuration) : .prefer(demand.configuration)
            }
        }

        /// The same for a single `PostgresConnection`.
        var connectionTLS: PostgresConnection.Configuration.TLS {
            get throws {
                guard let demand = try tlsDemand else { return .disable }
                let context = try NIOSSLContext(configuration: demand.configuration)
                return demand.required ? .require(context) : .prefer(context)
            }
        }
    }

    public let client: PostgresClient
    public let sealer: Sealer
    public let logger: Logger
    /// Signalled after a transaction that wrote outbox rows, so this process's relay publishes them at once.
    public let outboxSignal = OutboxSignal()
    /// Where a transaction's outbox rows go on commit while this process's relay runs: straight to it.
    public let outboxHandoff = OutboxHandoff()

    /// Throws a ``DatabaseError`` when `sslrootcert` does not hold a PEM certificate.
    public init(configuration: Configuration, sealer: Sealer, logger: Logger) throws {
        let client: PostgresClient.Configuration
        do {
            client = try configuration.client
        } catch {
            throw DatabaseError(
                "BATCH_DATABASE_URL: sslrootcert \(configuration.sslRootCertificate ?? "") holds no PEM certificate")
        }
        self.client = PostgresClient(configuration: client, backgroundLogger: logger)
        self.sealer = sealer
        self.logger = logger
    }

    public func run() async {
        await client.run()
    }

    /// Applies pending migrations and checks the master key. Throws a ``DatabaseError`` with a one-line reason.
    public func prepare() async throws {
        try await migrate()
        try await verifyMasterKey()
    }

    /// Applies every migration not yet applied, each in its own transaction. Safe when several services start at
    /// once: they take turns through a PostgreSQL advisory lock. Throws a ``DatabaseError`` when the database's
    /// schema is newer than this build's (``Migration/latest``).
    public func migrate() async throws {
        let lockKey = 0x6261_7463_6800  // "batch"
        try await client.withConnection { connection in
            try await connection.query("SELECT pg_advisory_lock(\(lockKey))", logger: logger)
            do {
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """, logger: logger)
                var applied: Set<Int> = []
                for try await version in try await connection.query(
                    "SELECT version FROM schema_migrations", logger: logger
                ).decode(Int.self) {
                    applied.insert(version)
                }
                // A newer binary migrated this database: an older one would misread what it wrote.
                if let newest = applied.max(), newest > Migration.latest {
                    throw DatabaseError(
                        "the database's schema is version \(newest), newer than this binary knows (\(Migration.latest), "
                            + "release \(BatchRelease.version)): run binaries of the release that migrated it, or newer"
                    )
                }
                for migration in Migration.all where !applied.contains(migration.version) {
                    try await connection.withTransaction(logger: logger) { connection in
                        for statement in migration.statements {
                            try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                        }
                        try await connection.query(
                            "INSERT INTO schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))",
                            logger: logger)
                    }
                    logger.info("migration applied", metadata: ["migration.version": "\(migration.version)"])
                }
            } catch {
                _ = try? await connection.query("SELECT pg_advisory_unlock(\(lockKey))", logger: logger)
                throw error
            }
            try await connection.query("SELECT pg_advisory_unlock(\(lockKey))", logger: logger)
        }
    }

    /// Checks that the current master key is the one this database's sealed values were written with: each key id
    /// leaves a sealed canary the first time it is used, and a key of the same id that cannot open it is wrong.
    public func verifyMasterKey() async throws {
        let key = sealer.current
        let context = "keyring:\(key.id)"
        let canary = "batch keyring canary \(key.id)"
        try await client.query(
            """
            INSERT INTO keyring (key_id, canary_sealed) VALUES (\(key.id), \(try sealer.seal(canary, context: context)))
            ON CONFLICT (key_id) DO NOTHING
            """, logger: logger)
        let rows = try await client.query(
            "SELECT canary_sealed FROM keyring WHERE key_id = \(key.id)", logger: logger)
        for try await sealed in rows.decode(String.self) {
            guard (try? sealer.open(sealed, context: context)) == canary else {
                throw DatabaseError(
                    "the master key \(key.id) does not open this database's sealed data: wrong BATCH_MASTER_KEY")
            }
        }
    }

    /// Runs `body` in a transaction. Once it commits, the outbox rows it wrote go to this process's relay: handed
    /// over (``Outbox/enqueue(_:on:sealer:logger:)``), or signalled for it to read. An error `body` throws comes out
    /// as itself once the transaction is rolled back (not wrapped), so API errors keep their codes.
    public func transaction<Result: Sendable>(
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let result: Result
        let written = outboxHandoff.lease.map(Outbox.Written.init(lease:))
        do {
            result = try await Outbox.$written.withValue(written) {
                try await client.withTransaction(logger: logger) { connection in
                    try await body(connection)
                }
            }
        } catch let error as PostgresTransactionError {
            if let closureError = error.closureError, error.rollbackError == nil { throw closureError }
            throw error
        }
        if let written, written.taken.claimedAt != nil {
            outboxHandoff.send(written)
        } else {
            outboxSignal.signal()
        }
        return result
    }
}

/// A database failure with a one-line reason, fit for a log line or a service's exit message.
public struct DatabaseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension PostgresQuery {
    /// A query of fixed SQL with no bindings (migrations).
    init(unsafeSQL sql: String) {
        var interpolation = PostgresQuery.StringInterpolation(literalCapacity: sql.count, interpolationCount: 0)
        interpolation.appendLiteral(sql)
        self.init(stringInterpolation: interpolation)
    }
}
