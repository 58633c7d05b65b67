import BatchCore
import Foundation
import Messaging
import PostgresNIO
import TestSupport
import Testing

@testable import Persistence

@Suite("Re-sealing under a new master key", .timeLimit(.minutes(2)))
struct ResealTests {
    /// Runs `body` on the database at `url` opened with `sealer`, after migrations and the key check.
    func withDatabase<R: Sendable>(_ url: String, _ sealer: Sealer, _ body: (Database) async throws -> R)
        async throws -> R
    {
        let database = try Database(
            configuration: try Database.Configuration(url: url), sealer: sealer,
            logger: .test("test.reseal", level: .error))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await database.run() }
            defer { group.cancelAll() }
            try await database.prepare()
            return try await body(database)
        }
    }

    @Test("every sealed column of the schema is one the re-sealer walks, or the key canaries")
    func coversSchema() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let rows = try await database.client.query(
                """
                SELECT table_name::text, column_name::text FROM information_schema.columns
                WHERE table_schema = 'public' AND column_name LIKE '%\\_sealed'
                """
            ).decode((String, String).self).collect()
            #expect(
                Set(rows.map { "\($0).\($1)" })
                    == Set(Resealer.columns.map(\.name)).union(["keyring.canary_sealed"]))
        }
    }

    @Test("after re-sealing, values sealed with the old key open with the new key alone")
    func rotation() async throws {
        let (name, url) = try await TestDatabase.create()
        let old = Sealer.Key.generate(id: "k1")
        let new = Sealer.Key.generate(id: "k2")
        let (user, template) = try await withDatabase(url, Sealer(current: old)) { database in
            let user = try await UserStore(database: database).createUser(name: "alice")
            _ = try await UserStore(database: database).createUser(name: "bob")
            let spec = try BatchJSON.decode(
                TaskTemplateSpec.self,
                from: Array(
                    #"""
                    {"TaskTemplateName": "t", "TaskTemplateInfo": {"TaskName": "t",
                     "Application": {"DeliveryForm": "LOCAL", "Command": "echo a secret"}}}
                    """#.utf8))
            let template = try await TemplateStore(database: database).create(user: user.userID, spec: spec)
            try await database.transaction { connection in
                try await Outbox.enqueue(
                    [OutgoingMessage(exchange: "x", routingKey: "r", body: Array("body".utf8), messageID: "m1")],
                    on: connection, sealer: database.sealer, logger: database.logger)
            }
            return (user, template)
        }

        let (counts, remaining) = try await withDatabase(url, Sealer(current: new, retired: [old])) { database in
            let resealer = Resealer(database: database)
            #expect(try await resealer.remaining().map(\.column).contains("credentials.secret_key_sealed"))
            return (try await resealer.reseal(batchSize: 1), try await resealer.remaining())
        }
        let resealed = Dictionary(uniqueKeysWithValues: counts.map { ($0.column, $0.count) })
        #expect(resealed["credentials.secret_key_sealed"] == 2)
        #expect(resealed["task_templates.spec_sealed"] == 1)
        #expect(resealed["outbox.body_sealed"] == 1)
        #expect(remaining.isEmpty)

        try await withDatabase(url, Sealer(current: new)) { database in
            let credential = try await UserStore(database: database).credential(secretID: user.secretID)
            #expect(credential?.secretKey == user.secretKey)
            let specs = try await TemplateStore(database: database).specs([template], user: user.userID)
            #expect(specs[template]?.application?.command == "echo a secret")
            let again = try await Resealer(database: database).reseal()
            #expect(again.allSatisfy { $0.count == 0 })
        }
        try await TestDatabase.drop(name)
    }

    @Test("a value no configured key opens stops the re-sealing, naming its column")
    func missingKey() async throws {
        let (name, url) = try await TestDatabase.create()
        try await withDatabase(url, Sealer(current: .generate(id: "k1"))) { database in
            _ = try await UserStore(database: database).createUser(name: "alice")
        }
        await #expect {
            try await withDatabase(url, Sealer(current: .generate(id: "k2"))) { database in
                _ = try await Resealer(database: database).reseal()
            }
        } throws: { error in
            "\(error)".hasPrefix("credentials.secret_key_sealed: value sealed with key k1, which is not configured")
        }
        try await TestDatabase.drop(name)
    }
}
