import Foundation
import Testing

@testable import TestSupport

@Suite("Multi-host: executors in network namespaces of their own", .serialized, .timeLimit(.minutes(5)))
struct MultiHostTests {
    @Test(
        "a job spreads over three hosts; one cut off mid-job has its instances run on the others, and rejoins without running anything twice"
    )
    func partition() async throws {
        // The scheduler counts a silent node lost after 10 s; a node that cannot reach the broker for 3 s stops
        // what it runs (its lease), so a cut-off host never runs an instance at the same time as its rerun. One
        // wave of 12 s instances, two per host: the cut comes long before any ends.
        try await Stack.run(settings: ["BATCH_NODE_LOST_AFTER": "10"]) { stack in
            let broker = try TestServers.rabbitMQ()
            try await VirtualNetwork.with(hosts: 3, brokerPort: broker.port) { network in
                let env = try await stack.createEnv(nodes: 0)
                var executors: [ServiceProcess] = []
                defer { for executor in executors { executor.signal(SIGKILL) } }
                for host in network.hosts.indices {
                    executors.append(try network.startExecutor(on: host, env: env, stack: stack))
                }
                var nodes: [String: String] = [:]  // host name → node id
                try await waitUntil("the three hosts' executors join the environment") {
                    let view = try await stack.call("DescribeComputeEnv", ["EnvId": env])
                    for node in try unwrap(view["ComputeNodeSet"] as? [[String: Any]])
                    where node["ComputeNodeState"] as? String == "RUNNING" {
                        nodes[node["ComputeNodeInstanceId"] as? String ?? ""] = node["ComputeNodeId"] as? String
                    }
                    return nodes.count == 3
                }
                let cutHost = network.hosts[0].name
                let cutNode = try unwrap(nodes[cutHost])

                let records = try stack.recordsDirectory()
                let first = try await stack.submit(
                    "spread", env: env, tasks: [fencedTask("work", instances: 6, seconds: 12, records: records)])
                try await waitUntil("instances run on every host") {
                    let running = try await stack.instances(first, "work").filter {
                        $0["TaskInstanceState"] as? String == "RUNNING"
                    }
                    guard Set(running.compactMap { $0["ComputeNodeInstanceId"] as? String }) == Set(nodes.values)
                    else { return false }
                    // RUNNING is the scheduler's record of a start it cleared; the host runs the command once the
                    // clearance reaches it.
                    return network.hosts.indices.allSatisfy {
                        network.log(of: $0, stack: stack).contains("instance started")
                    }
                }
                try await network.setLink(of: 0, up: false)
                let job = try await stack.waitForJob(first)
                #expect(job["JobState"] as? String == "SUCCEED")
                try await network.setLink(of: 0, up: true)
                try await waitUntil("the cut-off host's executor reaches the broker again", deadline: .seconds(120)) {
                    network.log(of: 0, stack: stack).contains("broker reachable again")
                }

                // Every instance succeeded once, in its final attempt; the cut-off host's runs were stopped, and no
                // two runs of one instance overlapped in time.
                let instances = try await stack.instances(first, "work")
                #expect(instances.count == 6)
                #expect(instances.allSatisfy { $0["TaskInstanceState"] as? String == "SUCCEED" })
                let runs = try readFencedRuns(records)
                for index in 0..<6 {
                    let mine = runs.filter { $0.index == index }.sorted { $0.start < $1.start }
                    #expect(mine.filter(\.completed).count == 1, "instance \(index) completed \(mine)")
                    #expect(mine.last?.completed == true, "instance \(index): its last run completed")
                    for (earlier, later) in zip(mine, mine.dropFirst()) {
                        #expect(earlier.end <= later.start, "instance \(index): runs overlapped: \(mine)")
                    }
                }
                let cutOff = runs.filter { $0.node == cutNode && !$0.completed }
                #expect(!cutOff.isEmpty, "the cut-off host stopped the instances it ran")
                #expect(cutOff.allSatisfy { run in runs.contains { $0.index == run.index && $0.completed } })
                let attempts = instances.map { $0["Attempt"] as? Int ?? 0 }

                // Back on the network, the host takes work again; the first job's late reports changed nothing.
                try await waitUntil("the cut-off host's node is back in the environment", deadline: .seconds(120)) {
                    try await stack.nodeStates(env)[cutNode] == "RUNNING"
                }
                let second = try await stack.submit(
                    "rejoined", env: env, tasks: [fencedTask("again", instances: 12, seconds: 1, records: records)])
                #expect(try await stack.waitForJob(second)["JobState"] as? String == "SUCCEED")
                let ranOn = Set(
                    try await stack.instances(second, "again").compactMap { $0["ComputeNodeInstanceId"] as? String })
                #expect(ranOn.contains(cutNode), "the rejoined host ran instances of the next job")
                let after = try await stack.instances(first, "work")
                #expect(after.allSatisfy { $0["TaskInstanceState"] as? String == "SUCCEED" })
                #expect(after.map { $0["Attempt"] as? Int ?? 0 } == attempts)
                #expect(try readFencedRuns(records).filter { $0.task == "work" } == runs.filter { $0.task == "work" })
            }
        }
    }
}

/// A task whose instances sleep `seconds` and record their run (node, start, end, and whether it completed or was
/// stopped by SIGTERM) in `records`, in one line whichever of the shell and its sleep hears the SIGTERM first: the
/// shell passes it on to the sleep, and the run completed only when the sleep did.
func fencedTask(_ name: String, instances: Int, seconds: Int, records: URL) -> [String: Any] {
    let command = """
        f="\(records.path)/$BATCH_TASK_NAME.$BATCH_TASK_INSTANCE_INDEX.$BATCH_TASK_ATTEMPT"; s=$(date +%s%N); \
        trap 'kill $p 2>/dev/null' TERM; sleep \(seconds) & p=$!; wait $p; r=$?; \
        if [ $r -gt 128 ] && kill -0 $p 2>/dev/null; then wait $p; r=$?; fi; \
        if [ $r = 0 ]; then how=completed; else how=stopped; fi; \
        echo "$BATCH_TASK_NAME $BATCH_TASK_INSTANCE_INDEX $BATCH_NODE_ID $s $(date +%s%N) $how" >> "$f"; exit $r
        """
    return [
        "TaskName": name, "TaskInstanceNum": instances, "Application": ["DeliveryForm": "LOCAL", "Command": command],
    ]
}

struct FencedRun: Hashable, CustomStringConvertible {
    var task: String
    var index: Int
    var node: String
    var start: Int
    var end: Int
    var completed: Bool
    var description: String { "\(node) \(start)–\(end) \(completed ? "completed" : "stopped")" }
}

func readFencedRuns(_ directory: URL) throws -> [FencedRun] {
    try FileManager.default.contentsOfDirectory(atPath: directory.path).flatMap { file in
        try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8).split(separator: "\n").map {
            let fields = $0.split(separator: " ").map(String.init)
            return FencedRun(
                task: fields[0], index: Int(fields[1])!, node: fields[2], start: Int(fields[3])!,
                end: Int(fields[4])!, completed: fields[5] == "completed")
        }
    }
}

/// Hosts on a virtual network: each a network namespace joined by a veth pair to a bridge in the test's namespace,
/// with addresses in a /24 of 10.231.0.0/16. The broker is reached at the bridge's address, through a relay
/// (socat) to RabbitMQ on 127.0.0.1: the hosts see the broker only over the virtual network, as machines on a LAN
/// would.
struct VirtualNetwork {
    struct Host {
        var name: String
        var namespace: String
        var hostSide: String
        var address: String
    }

    let tag: String
    let subnet: Int
    let bridge: String
    let hosts: [Host]
    let brokerPort: Int
    var bridgeAddress: String { "10.231.\(subnet).1" }

    static func with<R>(hosts count: Int, brokerPort: Int, _ body: (VirtualNetwork) async throws -> R) async throws
        -> R
    {
        let tag = String(UUID().uuidString.prefix(4)).lowercased()
        let subnet = Int.random(in: 1...250)
        let hosts = (0..<count).map { index in
            Host(
                name: "host-\(index)", namespace: "batch-\(tag)-\(index)", hostSide: "bvh\(tag)\(index)",
                address: "10.231.\(subnet).\(10 + index)")
        }
        let network = VirtualNetwork(
            tag: tag, subnet: subnet, bridge: "bbr\(tag)", hosts: hosts, brokerPort: brokerPort)
        var relay: ServiceProcess?
        do {
            try await network.create()
            relay = try ServiceProcess(
                "/usr/bin/socat",
                [
                    "TCP-LISTEN:\(brokerPort),bind=\(network.bridgeAddress),fork,reuseaddr",
                    "TCP:127.0.0.1:\(brokerPort)",
                ], environment: [:], log: "/dev/null")
            let result = try await body(network)
            relay?.signal(SIGKILL)
            await network.destroy()
            return result
        } catch {
            relay?.signal(SIGKILL)
            await network.destroy()
            throw error
        }
    }

    private func create() async throws {
        try await ip(["link", "add", bridge, "type", "bridge"])
        try await ip(["addr", "add", "\(bridgeAddress)/24", "dev", bridge])
        try await ip(["link", "set", bridge, "up"])
        for (index, host) in hosts.enumerated() {
            let inside = "bvn\(tag)\(index)"
            try await ip(["netns", "add", host.namespace])
            try await ip(["link", "add", host.hostSide, "type", "veth", "peer", "name", inside])
            try await ip(["link", "set", inside, "netns", host.namespace])
            try await ip(["link", "set", host.hostSide, "master", bridge])
            try await ip(["link", "set", host.hostSide, "up"])
            try await ip(["-n", host.namespace, "addr", "add", "\(host.address)/24", "dev", inside])
            try await ip(["-n", host.namespace, "link", "set", inside, "up"])
            try await ip(["-n", host.namespace, "link", "set", "lo", "up"])
        }
    }

    private func destroy() async {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for host in hosts {
            _ = await TestServers.runProgram("/usr/sbin/ip", ["netns", "del", host.namespace])
        }
        _ = await TestServers.runProgram("/usr/sbin/ip", ["link", "del", bridge])
    }

    /// Takes a host's link down (its packets go nowhere, as with a pulled cable) or brings it back.
    func setLink(of host: Int, up: Bool) async throws {
        try await ip(["link", "set", hosts[host].hostSide, up ? "up" : "down"])
    }

    func logURL(of host: Int, stack: Stack) -> URL {
        stack.directory.appendingPathComponent("\(hosts[host].name).log")
    }

    /// What the host's executor has logged so far ("" before it wrote anything).
    func log(of host: Int, stack: Stack) -> String {
        (try? String(contentsOf: logURL(of: host, stack: stack), encoding: .utf8)) ?? ""
    }

    /// Starts an executor in the host's namespace that joins `env` on its own (as `AttachInstances` machines do),
    /// reaching the broker at the bridge's address.
    func startExecutor(on host: Int, env: String, stack: Stack) throws -> ServiceProcess {
        var environment = try stack.executorEnvironment(env)
        environment["BATCH_AMQP_URL"] = environment["BATCH_AMQP_URL"]?.replacingOccurrences(
            of: "@127.0.0.1:", with: "@\(bridgeAddress):")
        // nsenter enters only the network namespace: `ip netns exec` would also mount a sysfs of its own over /sys,
        // without the cgroup file systems the executor limits its instances with.
        return try ServiceProcess(
            "/usr/bin/nsenter",
            [
                "--net=/run/netns/\(hosts[host].namespace)",
                Stack.binDirectory.appendingPathComponent("ExecutorService").path,
                "--env-id", env, "--instance-id", hosts[host].name, "--slots", "2", "--lease", "3",
                "--heartbeat-interval", "1", "--work-dir",
                stack.directory.appendingPathComponent(hosts[host].name).path,
            ], environment: environment, log: logURL(of: host, stack: stack).path)
    }

    private func ip(_ arguments: [String]) async throws {
        let result = try await TestServers.run("/usr/sbin/ip", arguments, environment: nil)
        guard result.status == 0 else {
            throw StackError(
                "ip \(arguments.joined(separator: " ")) failed (the multi-host test needs root and iproute2): "
                    + result.stderr)
        }
    }
}
