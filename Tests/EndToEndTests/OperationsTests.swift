import BatchCore
import Foundation
import Persistence
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Running the services as an operator does: two schedulers at once, metrics, queues.
@Suite("Operations: two schedulers, metrics, queues", .serialized, .timeLimit(.minutes(5)))
struct OperationsTests {
    /// A port nothing listens on now (the kernel's pick, released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw StackError("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// The value of every sample of `metric` in a Prometheus text page, summed.
    static func total(_ metric: String, in page: String) -> Double {
        page.split(separator: "\n").filter {
            $0.hasPrefix(metric + (metric.hasSuffix("}") ? " " : "{")) || $0.hasPrefix(metric + " ")
        }
        .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
    }

    static func scrape(_ port: Int, host: String = "127.0.0.1") async throws -> String {
        let result = try await TestServers.run(
            "/usr/bin/curl", ["-fsS", "http://\(host):\(port)/metrics"], environment: nil)
        guard result.status == 0 else { throw StackError("no metrics on port \(port): \(result.stderr)") }
        return result.stdout
    }

    @Test(
        "every binary prints its release with --version, the services that migrate with their schema",
        arguments: [
            ("APIGateway", BatchRelease.serviceVersion), ("SchedulerService", BatchRelease.serviceVersion),
            ("ProvisionerService", BatchRelease.serviceVersion), ("ExecutorService", BatchRelease.version),
            ("batchctl", BatchRelease.version), ("batch-sandbox", BatchRelease.version),
        ])
    func version(binary: String, expected: String) async throws {
        let result = try await TestServers.run(
            Stack.binDirectory.appendingPathComponent(binary).path, ["--version"],
            environment: ["PATH": "/usr/bin:/bin"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == expected + "\n")
        #expect(BatchRelease.serviceVersion.hasPrefix(BatchRelease.version + " (database schema \(Migration.latest))"))
    }

    @Test("SchedulerService reseal re-seals under the first key of BATCH_MASTER_KEY and refuses a missing key")
    func reseal() async throws {
        let (name, url) = try await TestDatabase.create()
        let (old, new) = (Sealer.Key.generate(id: "k1"), Sealer.Key.generate(id: "k2"))
        try await TestDatabase.withDatabase(url: url, key: old) { database in
            _ = try await UserStore(database: database).createUser(name: "alice")
        }
        let binary = Stack.binDirectory.appendingPathComponent("SchedulerService").path
        guard let ca = ProcessInfo.processInfo.environment["BATCH_POSTGRES_CA"] else {
            throw TestServers.Missing(description: "BATCH_POSTGRES_CA is not set: eval \"$(scripts/servers env)\"")
        }
        func reseal(_ keys: [Sealer.Key]) async throws -> TestServers.ProgramResult {
            try await TestServers.run(
                binary, ["reseal"],
                environment: [
                    "PATH": "/usr/bin:/bin", "BATCH_LOG_LEVEL": "error",
                    // Over TLS, checking the server's certificate (scripts/servers makes it).
                    "BATCH_DATABASE_URL": url + "?sslmode=verify-full&sslrootcert=\(ca)",
                    "BATCH_MASTER_KEY": keys.map(\.configurationString).joined(separator: ","),
                ])
        }
        let missing = try await reseal([new])
        #expect(missing.status == 1)
        #expect(
            missing.stderr.hasPrefix(
                "SchedulerService reseal: credentials.secret_key_sealed: value sealed with key k1, which is not"))
        let rotated = try await reseal([new, old])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        #expect(rotated.stdout == "credentials.secret_key_sealed: 1 re-sealed\n1 values re-sealed under key k2\n")
        let alone = try await reseal([new])
        #expect(alone.status == 0, "\(alone.stderr)")
        #expect(alone.stdout == "0 values re-sealed under key k2\n")
        try await TestDatabase.drop(name)
    }

    @Test("two schedulers at once, the first killed mid-job: the job succeeds, no instance dispatched twice")
    func twoSchedulers() async throws {
        try await Stack.run { stack in
            let second = try ServiceProcess(
                Stack.binDirectory.appendingPathComponent("SchedulerService").path, [],
                environment: stack.environment,
                log: stack.directory.appendingPathComponent("SchedulerService-2.log").path)
            defer { second.signal(SIGKILL) }
            let env = try await stack.createEnv(nodes: 2)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "two-schedulers", env: env,
                tasks: [
                    recordingTask("A", instances: 100, records: records),
                    recordingTask("B", instances: 100, records: records),
                ], dependences: [("A", "B")])
            try await waitUntil("a third of the work is done") { try readRecords(records).count >= 60 }
            stack.processes["SchedulerService"]?.signal(SIGKILL)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let runs = try readRecords(records)
            for task in ["A", "B"] {
                #expect(runs.filter { $0.task == task }.map(\.index).sorted() == Array(0..<100))
            }
            #expect(runs.allSatisfy { $0.attempt == 1 })
            #expect(second.isRunning)
        }
    }

    @Test("every service's /metrics moves during a job; batchctl queues shows the queues with their consumers")
    func metricsAndQueues() async throws {
        let (schedulerPort, provisionerPort) = (try Self.freePort(), try Self.freePort())
        let opsHost = "127.0.0.2"
        try await Stack.run(
            settings: [
                "BATCH_SCHEDULER_OPS_PORT": "\(schedulerPort)", "BATCH_PROVISIONER_OPS_PORT": "\(provisionerPort)",
                // Another loopback address than the default: --ops-host is where /metrics answers.
                "BATCH_OPS_HOST": opsHost,
            ]
        ) { stack in
            let env = try await stack.createEnv(nodes: 1)
            let before = (
                gateway: Self.total("batch_api_requests_total", in: try await Self.scrape(stack.port)),
                scheduler: Self.total(
                    "batch_messages_consumed_total", in: try await Self.scrape(schedulerPort, host: opsHost)),
                provisioner: Self.total(
                    "batch_messages_consumed_total", in: try await Self.scrape(provisionerPort, host: opsHost))
            )
            let jobID = try await stack.submit(
                "observed", env: env,
                tasks: [
                    [
                        "TaskName": "t", "TaskInstanceNum": 5,
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                    ]
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            #expect(Self.total("batch_api_requests_total", in: try await Self.scrape(stack.port)) > before.gateway)
            #expect(
                Self.total("batch_messages_consumed_total", in: try await Self.scrape(schedulerPort, host: opsHost))
                    > before.scheduler
            )
            try await waitUntil("the provisioner has taken heartbeats") {
                Self.total("batch_messages_consumed_total", in: try await Self.scrape(provisionerPort, host: opsHost))
                    > before.provisioner
            }
            // What was published (the gateway's outbox relay sent job.submitted), and the gauges read from the
            // database every few seconds: instances by state, the outbox backlog, nodes by state.
            #expect(Self.total("batch_messages_published_total", in: try await Self.scrape(stack.port)) >= 1)
            try await waitUntil("the gauges show the finished instances and the running node") {
                let scheduler = try await Self.scrape(schedulerPort, host: opsHost)
                let provisioner = try await Self.scrape(provisionerPort, host: opsHost)
                return Self.total("batch_instances{state=\"SUCCEED\"}", in: scheduler) == 5
                    && scheduler.contains("batch_outbox_backlog")
                    && Self.total("batch_nodes{state=\"RUNNING\"}", in: provisioner) == 1
            }

            func queues() async throws -> (result: TestServers.ProgramResult, rows: [[String]]) {
                let result = try await TestServers.run(
                    Stack.binDirectory.appendingPathComponent("batchctl").path, ["queues"],
                    environment: [
                        "PATH": "/usr/bin:/bin", "BATCH_AMQP_URL": stack.environment["BATCH_AMQP_URL"]!,
                        "BATCH_RABBITMQ_MANAGEMENT_URL": TestServers.managementURL,
                    ])
                return (result, result.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) })
            }
            let first = try await queues()
            #expect(first.result.status == 0, "\(first.result.stderr)")
            #expect(first.rows.first == ["QUEUE", "READY", "UNACKED", "CONSUMERS", "IN/s", "ACKED/s"])
            // The management API refreshes its figures every few seconds.
            try await waitUntil("the queues show their consumers") {
                let rows = try await queues().rows
                return ["batch.scheduler", "batch.provisioner", "batch.env.\(env)"].allSatisfy { queue in
                    rows.contains { $0.first == queue && (Int($0[3]) ?? 0) >= 1 }
                }
            }
        }
    }
}
