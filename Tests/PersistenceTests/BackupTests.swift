import BatchCore
import Foundation
import TestSupport
import Testing

@testable import Persistence

@Suite("Backup and restore with pg_dump", .timeLimit(.minutes(2)))
struct BackupTests {
    /// PostgreSQL's client programs of the installed server (Debian keeps them under /usr/lib/postgresql/N/bin).
    static func program(_ name: String) throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        for version in versions.sorted(by: >)
        where FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/\(name)") {
            return "\(root)/\(version)/bin/\(name)"
        }
        throw TestServers.Missing(
            description: "\(name) is not installed under \(root); scripts/servers start installs PostgreSQL")
    }

    @Test("a pg_dump round trip keeps users, environments and jobs readable with the same master key, and only with it")
    func roundTrip() async throws {
        let key = Sealer.Key.generate(id: "k1")
        let (name, url) = try await TestDatabase.create()
        let (restoredName, restoredURL) = try await TestDatabase.create()
        let (user, job, env) = try await TestDatabase.withDatabase(url: url, key: key) { database in
            let user = try await UserStore(database: database).createUser(name: "alice")
            let env = try await ComputeEnvStore(database: database).create(
                user: user.userID,
                spec: try BatchJSON.decode(
                    NamedComputeEnv.self, from: Array(#"{"EnvName": "farm", "DesiredComputeNodeCount": 0}"#.utf8)),
                zone: nil)
            let spec = try BatchJSON.decode(
                JobSpec.self,
                from: Array(
                    """
                    {"JobName": "kept", "Tasks": [{"TaskName": "a", "EnvId": "\(env)",
                     "Application": {"DeliveryForm": "LOCAL", "Command": "echo kept"}}]}
                    """.utf8))
            let job = try await JobStore(database: database).submit(
                user: user.userID, spec: spec, clientToken: nil, zone: nil)
            return (user, job, env)
        }

        let dump = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).dump").path
        defer { try? FileManager.default.removeItem(atPath: dump) }
        let dumped = try await TestServers.run(
            try Self.program("pg_dump"), ["--format=custom", "--file=\(dump)", "--dbname=\(url)"], environment: nil)
        #expect(dumped.status == 0, "\(dumped.stderr)")
        let restored = try await TestServers.run(
            try Self.program("pg_restore"), ["--no-owner", "--exit-on-error", "--dbname=\(restoredURL)", dump],
            environment: nil)
        #expect(restored.status == 0, "\(restored.stderr)")

        try await TestDatabase.withDatabase(url: restoredURL, key: key) { database in
            let credential = try await UserStore(database: database).credential(secretID: user.secretID)
            #expect(credential?.secretKey == user.secretKey)
            let spec = try await JobStore(database: database).submitInfo(job, user: user.userID)
            #expect(spec?.tasks.first?.application?.command == "echo kept")
            #expect(try await ComputeEnvStore(database: database).view(env, user: user.userID)?.envName == "farm")
        }
        // Another master key of the same id is refused at start-up: the backup is worth only as much as the key.
        await #expect {
            try await TestDatabase.withDatabase(url: restoredURL, key: .generate(id: "k1")) { _ in }
        } throws: { error in
            "\(error)".contains("does not open this database's sealed data")
        }
        try await TestDatabase.drop(name)
        try await TestDatabase.drop(restoredName)
    }
}
