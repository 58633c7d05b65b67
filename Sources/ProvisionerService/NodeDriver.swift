import BatchCore
import BatchRuntime
import Foundation
import Logging

/// Makes and removes compute nodes. The provisioner decides how many; a driver knows how.
///
/// `process` runs nodes as ExecutorService processes on this machine; a `static` driver (nodes started elsewhere)
/// and a cluster driver (Kubernetes pods) implement the same calls.
protocol NodeDriver: Sendable {
    var name: String { get }
    /// Starts a node of `slots` slots for `env`; it announces itself with heartbeats once up.
    func createNode(_ node: NodeID, env: EnvID, slots: Int, settings: NodeSettings) async throws
    /// Asks a node to go: with `drain`, it takes no more work and stops once its running instances have finished;
    /// without, it stops them now (they run again elsewhere). Returns at once; `onNodeExit` reports the end.
    func stopNode(_ node: NodeID, drain: Bool) async
    /// The nodes of `env` this driver runs now, those draining included.
    func nodes(of env: EnvID) async -> [(node: NodeID, draining: Bool)]
    /// Calls `handler` whenever a node ends, with whether it was asked to and how it ended.
    func onNodeExit(_ handler: @escaping @Sendable (NodeExit) async -> Void) async
    /// Stops every node now (the provisioner is shutting down) and waits until they are gone.
    func shutdown() async
}

/// How a node the driver ran ended.
struct NodeExit: Sendable {
    var node: NodeID
    var env: EnvID
    /// True when the provisioner asked it to stop.
    var expected: Bool
    var reason: String
}

/// What a node is started with, from its environment's settings.
struct NodeSettings: Sendable, Hashable {
    /// Run instances in a sandbox (`Sandbox` of the environment; default on).
    var sandbox: Bool = true
    /// Instances may open connections out of the node (`Egress` of the environment; default off).
    var egress: Bool = false
    /// Each instance's memory limit in MiB (`InstanceMemoryLimit` of the environment; nil: the node's default).
    var instanceMemoryLimit: Int?
    /// The environment's ``NodeKey`` in base64, for the node alone (`BATCH_NODE_KEY`, never an argument).
    var nodeKey: String
    /// The broker URL of the environment's nodes' own user (nil: the driver's, the executors' shared user).
    var amqpURL: String?
}

/// Nodes as ExecutorService processes on this machine, each with its own work dir and log.
actor ProcessNodeDriver: NodeDriver {
    nonisolated let name = "process"
    let executable: String
    let nodesDirectory: URL
    let amqpURL: String
    let logger: Logger
    private var children: [NodeID: (env: EnvID, process: ChildProcess)] = [:]
    private var stopping: Set<NodeID> = []
    private var exitHandler: (@Sendable (NodeExit) async -> Void)?

    init(executable: String, nodesDirectory: URL, amqpURL: String, logger: Logger) {
        self.executable = executable
        self.nodesDirectory = nodesDirectory
        self.amqpURL = amqpURL
        self.logger = logger
    }

    func onNodeExit(_ handler: @escaping @Sendable (NodeExit) async -> Void) {
        exitHandler = handler
    }

    func createNode(_ node: NodeID, env: EnvID, slots: Int, settings: NodeSettings) throws {
        let directory = nodesDirectory.appendingPathComponent(node.rawValue, isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var environment = ["BATCH_AMQP_URL": settings.amqpURL ?? amqpURL, "PATH": "/usr/local/bin:/usr/bin:/bin"]
        // What a node needs and nothing more: never the master key or the database URL.
        let passed = [
            "BATCH_LOG_LEVEL", "BATCH_S3_ENDPOINT", "BATCH_S3_REGION", "BATCH_SANDBOX", "BATCH_SHARED_PATHS",
            "BATCH_STORAGE_ROOTS", "BATCH_INSTANCE_MEMORY", "BATCH_INSTANCE_PIDS", "BATCH_INSTANCE_FILE_SIZE",
            "BATCH_INSTANCE_DISK", "BATCH_EGRESS_ALLOW",
            "HOME", "LANG",
        ]
        for name in passed {
            if let value = ProcessInfo.processInfo.environment[name] { environment[name] = value }
        }
        if !settings.sandbox { environment["BATCH_SANDBOX"] = "off" }
        environment["BATCH_INSTANCE_NETWORK"] = settings.egress ? "egress" : "none"
        if let memory = settings.instanceMemoryLimit { environment["BATCH_INSTANCE_MEMORY"] = String(memory) }
        environment["BATCH_NODE_KEY"] = settings.nodeKey
        let log = directory.appendingPathComponent("executor.log").path
        let process = try ChildProcess(
            executable: executable,
            arguments: [
                "--env-id", env.rawValue, "--node-id", node.rawValue, "--slots", String(slots), "--work-dir",
                directory.path, "--exit-with-parent",
            ],
            environment: environment, stdout: log, stderr: log)
        children[node] = (env, process)
        logger.info(
            "node process started", metadata: ["node.id": "\(node)", "env.id": "\(env)", "pid": "\(process.pid)"])
        Task { [weak self] in
            let termination = await process.wait()
            await self?.exited(node, env: env, termination: termination)
        }
    }

    private func exited(_ node: NodeID, env: EnvID, termination: ChildProcess.Termination) async {
        children[node] = nil
        let expected = stopping.remove(node) != nil
        if !expected {
            logger.warning("node process ended", metadata: ["node.id": "\(node)", "termination": "\(termination)"])
        }
        await exitHandler?(NodeExit(node: node, env: env, expected: expected, reason: termination.description))
    }

    /// SIGTERM drains the executor; SIGINT makes it hand its instances back, and SIGKILL follows after 30 s.
    func stopNode(_ node: NodeID, drain: Bool) {
        guard let child = children[node] else { return }
        stopping.insert(node)
        if drain {
            child.process.signalGroup(SIGTERM)
        } else {
            child.process.signalGroup(SIGINT)
            Task {
                try await Task.sleep(for: .seconds(30))
                child.process.signalGroup(SIGKILL)
            }
        }
    }

    func nodes(of env: EnvID) -> [(node: NodeID, draining: Bool)] {
        children.filter { $0.value.env == env }.map { ($0.key, stopping.contains($0.key)) }
            .sorted { $0.node.rawValue < $1.node.rawValue }
    }

    func shutdown() async {
        let all = children
        for node in all.keys { stopNode(node, drain: false) }
        for (_, child) in all { _ = await child.process.wait() }
    }
}
