import Foundation
import Logging
import Persistence
import PostgresNIO

/// Fresh PostgreSQL databases for tests: each test gets its own, dropped after.
public enum TestDatabase {
    /// Creates an empty database and returns its URL.
    public static func create() async throws -> (name: String, url: String) {
        let base = try TestServers.postgreSQL()
        let name = "test_\(UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: ""))"
        try await withAdminClient { client in
            try await client.query(PostgresQuery(unsafe: "CREATE DATABASE \(name)"))
        }
        var url = base
        url.path = "/\(name)"
        return (name, url.string!)
    }

    /// Drops a test database and the connections to it. An autovacuum worker on it cannot be terminated by a role
    /// that is not a superuser (the drop fails with "must be a member of the role whose process is being
    /// terminated"); it ends on its own within moments, so the drop is tried again a few times.
    public static func drop(_ name: String) async throws {
        var attempt = 1
        while true {
            do {
                try await withAdminClient { client in
                    try await client.query(PostgresQuery(unsafe: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"))
                }
                return
            } catch {
                guard attempt < 20 else { throw error }
                attempt += 1
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// Runs `body` with a ``Database`` on a fresh, migrated database sealed with `key`; drops it after.
    public static func withDatabase<R: Sendable>(
        key: Sealer.Key = .generate(id: "test"), prepare: Bool = true,
        _ body: (Database, _ url: String) async throws -> R
    ) async throws -> R {
        let (name, url) = try await create()
        do {
            let result = try await withDatabase(url: url, key: key, prepare: prepare) { try await body($0, url) }
            try await drop(name)
            return result
        } catch {
            try? await drop(name)
            throw error
        }
    }

    /// Runs `body` with a ``Database`` on an existing database, running its pool for the duration.
    public static func withDatabase<R: Sendable>(
        url: String, key: Sealer.Key, prepare: Bool = true, _ body: (Database) async throws -> R
    ) async throws -> R {
        let database = try Database(
            configuration: try Database.Configuration(url: url), sealer: Sealer(current: key),
            logger: .test("test.database", level: .error))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await database.run() }
            defer { group.cancelAll() }
            if prepare { try await database.prepare() }
            return try await body(database)
        }
    }

    static func withAdminClient(_ body: @Sendable (PostgresClient) async throws -> Void) async throws {
        let base = try TestServers.postgreSQL()
        let configuration = PostgresClient.Configuration(
            host: base.host!, port: base.port ?? 5432, username: base.user ?? "batch", password: base.password,
            database: String(base.path.dropFirst()), tls: .disable)
        let client = PostgresClient(configuration: configuration, backgroundLogger: .test("test.admin", level: .error))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            try await body(client)
            group.cancelAll()
        }
    }
}

extension PostgresQuery {
    /// Fixed SQL with no bindings, for test set-up (database names cannot be bound).
    public init(unsafe sql: String) {
        var interpolation = PostgresQuery.StringInterpolation(literalCapacity: sql.count, interpolationCount: 0)
        interpolation.appendLiteral(sql)
        self.init(stringInterpolation: interpolation)
    }
}
