import AsyncHTTPClient
import BatchClient
import BatchCore
import Foundation
import NIOCore
import NIOFoundationCompat

// Load on a running gateway: SubmitJob, then DescribeJob, from several concurrent clients, each a user of its
// own, every request signed with TC3-HMAC-SHA256. Reports throughput and latency percentiles.
// `--scenario scheduler` measures scheduling instead (SchedulerBench.swift).
//
//   api-bench --endpoint 127.0.0.1:18999 --credentials users.json [--clients 16] [--requests 5000]
//
// Each user gets a compute environment of no nodes: the jobs are scheduled and their instances queued, not run.
//
// users.json is a JSON array of {"secretId", "secretKey"}, one per client (scripts/bench makes it).

/// The value after `name` on the command line.
func option(_ name: String) -> String? {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

@main
struct ApiBench {
    static func main() async throws {
        let clients = Int(option("--clients") ?? "") ?? 16
        let requests = Int(option("--requests") ?? "") ?? 5000
        let users = try JSONDecoder().decode(
            [Credentials].self, from: Data(contentsOf: URL(fileURLWithPath: option("--credentials") ?? "users.json")))
        if option("--scenario") == "scheduler" {
            let bench = Bench(endpoint: option("--endpoint") ?? "127.0.0.1:18999", users: users, clients: 1)
            try await SchedulerBench.run(bench)
            try await bench.http.shutdown()
            return
        }
        guard users.count >= clients else { throw Failure(description: "need \(clients) users, got \(users.count)") }
        var setup = Bench(endpoint: option("--endpoint") ?? "127.0.0.1:18999", users: users, clients: clients)
        for user in users.prefix(clients) {
            let env = try await setup.call(
                "CreateComputeEnv", ["ComputeEnv": ["EnvName": "load", "DesiredComputeNodeCount": 0]], as: user)
            setup.envs[user.secretId] = env["EnvId"] as? String
        }

        // Warm up connections and caches, then measure.
        let bench = setup
        _ = try await bench.measure(clients * 4) { _, user in
            _ = try await bench.call("DescribeJobs", ["Limit": 1], as: user)
        }
        let jobIDs = JobIDs()
        let submit = try await bench.measure(requests) { index, user in
            let id = try await bench.call("SubmitJob", bench.job(index, for: user), as: user)["JobId"] as? String
            await jobIDs.add(index, id ?? "")
        }
        bench.report("SubmitJob", submit)
        let ids = await jobIDs.all
        let describe = try await bench.measure(requests) { index, user in
            _ = try await bench.call("DescribeJob", ["JobId": ids[index] ?? ""], as: user)
        }
        bench.report("DescribeJob", describe)
        try await bench.http.shutdown()
    }
}

struct Credentials: Decodable, Sendable {
    var secretId: String
    var secretKey: String
}

struct Failure: Error, CustomStringConvertible {
    var description: String
}

actor JobIDs {
    var all: [Int: String] = [:]
    func add(_ index: Int, _ id: String) { all[index] = id }
}

struct Bench: Sendable {
    let endpoint: String
    var envs: [String: String] = [:]
    let users: [Credentials]
    let clients: Int
    let http: HTTPClient

    init(endpoint: String, users: [Credentials], clients: Int) {
        self.endpoint = endpoint
        self.users = users
        self.clients = clients
        self.http = HTTPClient(
            eventLoopGroupProvider: .singleton,
            configuration: .init(
                connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: clients)))
    }

    /// Sends one signed call; returns the `Response` object, after checking it holds no error.
    func call(_ action: String, _ body: [String: Any], as user: Credentials) async throws -> [String: Any] {
        let client = BatchClient(
            endpoint: endpoint, keyPair: .init(secretID: user.secretId, secretKey: user.secretKey), http: http)
        return try await client.call(action, body)
    }

    func job(_ index: Int, for user: Credentials) -> [String: Any] {
        [
            "Job": [
                "JobName": "bench-\(index)",
                "Tasks": [
                    [
                        "TaskName": "t", "TaskInstanceNum": 1, "EnvId": envs[user.secretId] ?? "",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                    ]
                ],
            ]
        ]
    }

    /// Runs `count` calls spread over the clients; returns each call's latency in seconds and the wall time.
    func measure(_ count: Int, _ body: @escaping @Sendable (Int, Credentials) async throws -> Void) async throws
        -> (latencies: [Double], seconds: Double)
    {
        let start = ContinuousClock.now
        let clients = self.clients
        let users = self.users
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for client in 0..<clients {
                group.addTask {
                    var latencies: [Double] = []
                    var index = client
                    while index < count {
                        let begin = ContinuousClock.now
                        try await body(index, users[client])
                        latencies.append(Self.seconds(ContinuousClock.now - begin))
                        index += clients
                    }
                    return latencies
                }
            }
            var all: [Double] = []
            for try await part in group { all += part }
            return all.sorted()
        }
        return (latencies, Self.seconds(ContinuousClock.now - start))
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    func report(_ name: String, _ result: (latencies: [Double], seconds: Double)) {
        let latencies = result.latencies
        func percentile(_ p: Double) -> Double {
            latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] * 1000
        }
        print(
            "\(name.padding(toLength: 12, withPad: " ", startingAt: 0)) \(latencies.count) requests, \(clients) clients: "
                + String(
                    format: "%.0f req/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms",
                    Double(latencies.count) / result.seconds, percentile(0.5), percentile(0.99),
                    (latencies.last ?? 0) * 1000))
    }
}
