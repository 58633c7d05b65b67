import BatchCore
import Foundation
import Logging
import Messaging
import PostgresNIO
import TestSupport
import Testing

@testable import Persistence

@Suite("Database against a real PostgreSQL", .timeLimit(.minutes(2)))
struct DatabaseTests {
    @Test("migrations apply to an empty database and re-running them changes nothing")
    func migrations() async throws {
        try await TestDatabase.withDatabase(prepare: false) { database, _ in
            try await database.migrate()
            let tables = try await tableNames(database)
            #expect(
                tables.isSuperset(of: [
                    "users", "credentials", "compute_envs", "compute_nodes", "jobs", "tasks", "task_instances",
                    "outbox", "schema_migrations", "keyring",
                ]))
            try await database.migrate()
            let versions = try await database.client.query("SELECT count(*) FROM schema_migrations")
                .decode(Int.self).collect()
            #expect(versions == [Migration.all.count])
        }
    }

    @Test("two services migrating at once both succeed and apply each migration once")
    func concurrentMigrations() async throws {
        let (name, url) = try await TestDatabase.create()
        defer { Task { try await TestDatabase.drop(name) } }
        let key = Sealer.Key.generate(id: "k1")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask { try await TestDatabase.withDatabase(url: url, key: key) { _ in } }
            }
            try await group.waitForAll()
        }
        let count = try await TestDatabase.withDatabase(url: url, key: key, prepare: false) { database in
            try await database.client.query("SELECT count(*) FROM schema_migrations").decode(Int.self).collect()
        }
        #expect(count == [Migration.all.count])
        try await TestDatabase.drop(name)
    }

    @Test("sealed fields round-trip and the raw row shows no plain text")
    func sealedSecretKey() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let users = UserStore(database: database)
            let created = try await users.createUser(name: "alice")
            let raw = try await database.client.query(
                "SELECT secret_key_sealed FROM credentials WHERE secret_id = \(created.secretID)"
            ).decode(String.self).collect()
            #expect(raw.count == 1)
            #expect(!raw[0].contains(created.secretKey))
            #expect(raw[0].hasPrefix("test:"))
            let credential = try #require(try await users.credential(secretID: created.secretID))
            #expect(credential.secretKey == created.secretKey)
            #expect(credential.userID == created.userID)
        }
    }

    @Test("a sealed value does not open in another context or with another key")
    func sealingContexts() throws {
        let sealer = Sealer(current: .generate(id: "k1"))
        let sealed = try sealer.seal("echo secret", context: "tasks.spec:job-1/a")
        #expect(try sealer.open(sealed, context: "tasks.spec:job-1/a") == "echo secret")
        #expect(throws: SealingError.self) { try sealer.open(sealed, context: "tasks.spec:job-2/a") }
        #expect(throws: SealingError.self) {
            try Sealer(current: .generate(id: "k1")).open(sealed, context: "tasks.spec:job-1/a")
        }
        // Rotation: a new current key still opens values sealed by the retired one.
        let rotated = Sealer(current: .generate(id: "k2"), retired: [sealer.current])
        #expect(try rotated.open(sealed, context: "tasks.spec:job-1/a") == "echo secret")
        #expect(try rotated.seal("x", context: "c").hasPrefix("k2:"))
    }

    @Test("a wrong master key fails loudly at start-up")
    func wrongMasterKey() async throws {
        let (name, url) = try await TestDatabase.create()
        try await TestDatabase.withDatabase(url: url, key: .generate(id: "k1")) { _ in }
        await #expect {
            try await TestDatabase.withDatabase(url: url, key: .generate(id: "k1")) { _ in }
        } throws: { error in
            "\(error)".contains("does not open this database's sealed data")
        }
        try await TestDatabase.drop(name)
    }

    @Test("a database a newer release migrated is refused at start-up, and left as it was")
    func newerSchema() async throws {
        let (name, url) = try await TestDatabase.create()
        let key = Sealer.Key.generate(id: "k1")
        let newer = Migration.latest + 1
        try await TestDatabase.withDatabase(url: url, key: key) { database in
            try await database.client.query(
                "INSERT INTO schema_migrations (version, name) VALUES (\(newer), 'from a newer release')")
        }
        await #expect {
            try await TestDatabase.withDatabase(url: url, key: key) { _ in }
        } throws: { error in
            let message = "\(error)"
            return message.contains("schema is version \(newer), newer than this binary knows (\(Migration.latest)")
                && !message.contains("\n")
        }
        let versions = try await TestDatabase.withDatabase(url: url, key: key, prepare: false) { database in
            try await database.client.query("SELECT max(version) FROM schema_migrations").decode(Int.self).collect()
        }
        #expect(versions == [newer])
        try await TestDatabase.drop(name)
    }

    @Test("sslmode: prefer and require encrypt, verify-full checks the server's certificate, disable does not encrypt")
    func sslModes() async throws {
        _ = try TestServers.postgreSQL()
        guard let ca = ProcessInfo.processInfo.environment["BATCH_POSTGRES_CA"] else {
            throw TestServers.Missing(description: "BATCH_POSTGRES_CA is not set: eval \"$(scripts/servers env)\"")
        }
        let base = TestServers.databaseURLString
        /// Whether a connection made as `query` asks is encrypted, as the server sees it.
        func encrypted(_ query: String) async throws -> Bool {
            let configuration = try Database.Configuration(url: base + query)
            let connection = try await PostgresConnection.connect(
                configuration: .init(
                    host: configuration.host, port: configuration.port, username: configuration.user,
                    password: configuration.password, database: configuration.database,
                    tls: try configuration.connectionTLS),
                id: 1, logger: .test("test.ssl", level: .error))
            defer { Task { try? await connection.close() } }
            return try await connection.query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", logger: Logger(label: "test.ssl")
            ).decode(Bool.self).collect() == [true]
        }
        #expect(try await encrypted(""))
        #expect(try await encrypted("?sslmode=require"))
        #expect(try await encrypted("?sslmode=verify-full&sslrootcert=\(ca)"))
        #expect(try await encrypted("?sslmode=verify-ca&sslrootcert=\(ca)"))
        #expect(try await !encrypted("?sslmode=disable"))

        // A certificate the server's was not signed by: refused before anything is sent.
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("other-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: other) }
        let made = try await TestServers.run(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", other.appendingPathComponent("key").path,
                "-out", other.appendingPathComponent("ca.pem").path, "-days", "2", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1",
            ], environment: nil)
        #expect(made.status == 0, "\(made.stderr)")
        await #expect(throws: (any Error).self) {
            _ = try await encrypted("?sslmode=verify-full&sslrootcert=\(other.appendingPathComponent("ca.pem").path)")
        }

        for (query, message) in [
            ("?sslmode=sometimes", "BATCH_DATABASE_URL: sslmode sometimes is not one of disable, allow, prefer"),
            ("?sslcert=client.pem", "BATCH_DATABASE_URL: parameter sslcert is not one of sslmode, sslrootcert"),
            ("?sslmode=verify-full&sslrootcert=/nonexistent.pem", "BATCH_DATABASE_URL: sslrootcert /nonexistent.pem"),
        ] {
            #expect {
                _ = try Database.Configuration(url: base + query)
            } throws: { error in
                "\(error)".hasPrefix(message)
            }
        }
    }

    @Test(
        "a missing or malformed master key is refused with a one-line reason",
        arguments: [nil, "", "k1", "k1:not-base64!", "k1:\(Data(count: 16).base64EncodedString())"])
    func malformedMasterKey(configuration: String?) {
        #expect {
            _ = try Sealer(configuration: configuration)
        } throws: { error in
            let message = "\(error)"
            return message.hasPrefix("BATCH_MASTER_KEY") && !message.contains("\n")
        }
    }

    @Test("instance state counts follow every insert and update of instances, as a recount finds them")
    func instanceCounts() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let client = database.client
            let user = try await UserStore(database: database).createUser(name: "counter").userID.rawValue
            try await client.query(
                """
                INSERT INTO jobs (job_id, user_id, state, dependency_rule, dependences, spec_sealed)
                VALUES ('job-counts01', \(user), 'RUNNING', 'PRE_TASK_SUCCEED', '[]', 'x')
                """)
            for task in ["a", "b"] {
                try await client.query(
                    """
                    INSERT INTO tasks (job_id, task_name, position, state, instance_num, max_retry_count,
                        timeout_seconds, spec_sealed)
                    VALUES ('job-counts01', \(task), 0, 'RUNNING', 1000, 0, 60, 'x')
                    """)
            }
            try await client.query(
                """
                INSERT INTO task_instances (job_id, task_name, instance_index, state)
                SELECT 'job-counts01', t, i, 'RUNNABLE' FROM unnest(ARRAY['a', 'b']) t, generate_series(0, 999) i
                """)
            try await client.query(
                "UPDATE task_instances SET state = 'RUNNING' WHERE task_name = 'a' AND instance_index < 300")
            try await client.query(
                "UPDATE task_instances SET state = 'SUCCEED' WHERE task_name = 'a' AND instance_index < 100")
            try await client.query(
                "UPDATE task_instances SET state = 'FAILED' WHERE task_name = 'b' AND instance_index % 7 = 0")
            // An update that changes no state changes no count.
            try await client.query("UPDATE task_instances SET dispatched = true WHERE task_name = 'b'")
            func rows(_ query: PostgresQuery) async throws -> [String: Int] {
                var rows: [String: Int] = [:]
                for try await (task, state, count) in try await client.query(query).decode((String, String, Int).self) {
                    if count != 0 { rows["\(task) \(state)"] = count }
                }
                return rows
            }
            let kept = try await rows("SELECT task_name, state, count::bigint FROM task_instance_counts")
            let recounted = try await rows(
                "SELECT task_name, state, count(*) FROM task_instances GROUP BY task_name, state")
            #expect(kept == recounted)
            #expect(
                kept == ["a RUNNABLE": 700, "a RUNNING": 200, "a SUCCEED": 100, "b RUNNABLE": 857, "b FAILED": 143])
            // Deleting the job takes its counts with it.
            try await client.query("DELETE FROM jobs WHERE job_id = 'job-counts01'")
            #expect(try await rows("SELECT task_name, state, count::bigint FROM task_instance_counts").isEmpty)
        }
    }

    @Test("a heartbeat of a node's process recorded after the node was removed does not bring it back")
    func removedNodesStayRemoved() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let user = try await UserStore(database: database).createUser(name: "nodes").userID
            let envs = ComputeEnvStore(database: database)
            let env = try await envs.create(
                user: user, spec: NamedComputeEnv(envName: "e", desiredComputeNodeCount: 1), zone: nil)
            let node = NodeID.generate()
            func beat(pid: Int32) -> NodeHeartbeat {
                NodeHeartbeat(nodeID: node, envID: env, slots: 2, freeSlots: 2, host: "h", pid: pid, at: Date())
            }
            func rows() async throws -> [String] {
                try await database.client.query(
                    "SELECT state FROM compute_nodes WHERE node_id = \(node.rawValue)"
                ).decode(String.self).collect()
            }
            try await envs.nodeCreating(node, env: env, slots: 2, host: "h", cause: "test")
            try await envs.heartbeats([beat(pid: 100)])
            #expect(try await rows() == ["RUNNING"])
            try await envs.deleteNode(node, cause: "the node stopped")
            // Its last beat, queued behind its end.
            try await envs.heartbeats([beat(pid: 100)])
            #expect(try await rows().isEmpty)
            // A new process under the same id (an attached machine's executor started again) joins.
            try await envs.heartbeats([beat(pid: 200)])
            #expect(try await rows() == ["RUNNING"])
        }
    }

    @Test("a removed node's instances are counted lost through node.gone, which comes after its last reports")
    func removedNodeGoesThroughTheScheduler() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let client = database.client
            let envs = ComputeEnvStore(database: database)
            let scheduler = SchedulerStore(database: database)
            let (env, node) = try await runningJob("job-gone0001", instances: 3, in: database)
            try await envs.heartbeats([
                NodeHeartbeat(nodeID: node, envID: env, slots: 2, freeSlots: 0, host: "h", pid: 100, at: Date())
            ])
            // Instance 0 on the node, 1 on a node never heard of, 2 waiting.
            try await client.query(
                """
                INSERT INTO task_instances (job_id, task_name, instance_index, state, dispatched, node_id, attempt)
                VALUES ('job-gone0001', 'work', 0, 'RUNNING', true, \(node.rawValue), 1),
                    ('job-gone0001', 'work', 1, 'RUNNING', true, 'node-unknown', 1),
                    ('job-gone0001', 'work', 2, 'RUNNABLE', false, NULL, 0)
                """)
            func lost() async throws -> [Int] {
                try await database.transaction { connection in
                    try await scheduler.onLostNodes(lostAfter: .seconds(30), on: connection).map(\.key.index).sorted()
                }
            }
            #expect(try await lost() == [1])
            try await envs.deleteNode(node, cause: "the node stopped")
            // Its row is gone, but its last ends may still be queued: the sweep leaves it to node.gone.
            #expect(try await lost() == [1])
            let gone = try await client.query(
                "SELECT routing_key, correlation_id FROM outbox WHERE routing_key = 'node.gone'"
            ).decode((String, String).self).collect()
            #expect(gone.map(\.1) == [env.rawValue])
            let onNode = try await database.transaction { connection in
                try await scheduler.onNodes([node], on: connection)
            }
            #expect(onNode.map(\.key.index) == [0])
            #expect(onNode.map(\.attempt) == [1])
            // Should the word never come, the sweep counts the node lost once it has been gone for `lostAfter`.
            try await client.query(
                """
                UPDATE compute_node_tombstones SET deleted_at = now() - interval '1 minute'
                WHERE node_id = \(node.rawValue)
                """)
            #expect(try await lost() == [0, 1])
        }
    }

    @Test("a node is silent only up to where the provisioner has recorded heartbeats (its last mark), never back")
    func silenceCountsUpToTheMark() async throws {
        try await TestDatabase.withDatabase { database, _ in
            let envs = ComputeEnvStore(database: database)
            let scheduler = SchedulerStore(database: database)
            let (env, node) = try await runningJob("job-silent01", instances: 1, in: database)
            // Its last beat a minute ago; the provisioner took its last mark 50 s ago (it stopped then).
            let beat = NodeHeartbeat(
                nodeID: node, envID: env, slots: 2, freeSlots: 0, host: "h", pid: 100, at: Date() - 60)
            try await envs.heartbeats([beat], recordedUntil: Date() - 50)
            try await database.client.query(
                """
                INSERT INTO task_instances (job_id, task_name, instance_index, state, dispatched, node_id, attempt)
                VALUES ('job-silent01', 'work', 0, 'RUNNING', true, \(node.rawValue), 1)
                """)
            func lost() async throws -> Int {
                try await database.transaction { connection in
                    try await scheduler.onLostNodes(lostAfter: .seconds(30), on: connection).count
                }
            }
            // 10 s of silence up to the mark: neither lost to the scheduler nor silent to the provisioner.
            #expect(try await lost() == 0)
            #expect(try await envs.silentNodes(of: env, silentAfter: .seconds(30)).isEmpty)
            // The provisioner catches up with no beat of the node in its queue: now it is silent.
            try await envs.heartbeats([], recordedUntil: Date())
            #expect(try await lost() == 1)
            #expect(try await envs.silentNodes(of: env, silentAfter: .seconds(30)) == [node])
            // A mark of a redelivered batch does not take it back.
            try await envs.heartbeats([], recordedUntil: Date() - 50)
            #expect(try await lost() == 1)
        }
    }

    /// An environment with one node being created, and a running job `jobID` with task `work` of `instances` (its
    /// instance rows are the test's to write).
    func runningJob(_ jobID: String, instances: Int, in database: Database) async throws -> (EnvID, NodeID) {
        let user = try await UserStore(database: database).createUser(name: "user-\(jobID)").userID
        let envs = ComputeEnvStore(database: database)
        let env = try await envs.create(
            user: user, spec: NamedComputeEnv(envName: "e", desiredComputeNodeCount: 1), zone: nil)
        let node = NodeID.generate()
        try await envs.nodeCreating(node, env: env, slots: 2, host: "h", cause: "test")
        try await database.client.query(
            """
            INSERT INTO jobs (job_id, user_id, state, dependency_rule, dependences, spec_sealed)
            VALUES (\(jobID), \(user.rawValue), 'RUNNING', 'PRE_TASK_SUCCEED', '[]', 'x')
            """)
        try await database.client.query(
            """
            INSERT INTO tasks (job_id, task_name, position, state, instance_num, max_retry_count, timeout_seconds,
                spec_sealed)
            VALUES (\(jobID), 'work', 0, 'RUNNING', \(instances), 0, 60, 'x')
            """)
        return (env, node)
    }

    func tableNames(_ database: Database) async throws -> Set<String> {
        Set(
            try await database.client.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).decode(String.self).collect())
    }
}

extension AsyncSequence where Element: Sendable {
    func collect() async throws -> [Element] {
        var result: [Element] = []
        for try await element in self { result.append(element) }
        return result
    }
}
