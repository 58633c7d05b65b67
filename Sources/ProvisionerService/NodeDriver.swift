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
    func createNode(_ node: NodeID, env: EnvID, slots: Int) async throws
    /// Stops a node; it finishes or hands back its work first.
    func destroyNode(_ node: NodeID) async
    /// The nodes of `env` this driver runs now.
    func nodes(of env: EnvID) async -> [NodeID]
    /// Calls `handler` whenever a node ends without being asked to.
    func onNodeExit(_ handler: @escaping @Sendable (NodeID, EnvID, String) async -> Void) async
    /// Stops every node (the provisioner is shutting down).
    func shutdown() async
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
    private var exitHandler: (@Sendable (NodeID, EnvID, String) async -> Void)?

    init(executable: String, nodesDirectory: URL, amqpURL: String, logger: Logger) {
        self.executable = executable
        self.nodesDirectory = nodesDirectory
        self.amqpURL = amqpURL
        self.logger = logger
    }

    func onNodeExit(_ handler: @escaping @Sendable (NodeID, EnvID, String) async -> Void) {
        exitHandler = handler
    }

    func createNode(_ node: NodeID, env: EnvID, slots: Int) throws {
        let directory = nodesDirectory.appendingPathComponent(node.rawValue, isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var environment = ["BATCH_AMQP_URL": amqpURL, "PATH": "/usr/local/bin:/usr/bin:/bin"]
        let passed = [
            "BATCH_LOG_LEVEL", "BATCH_S3_ENDPOINT", "BATCH_S3_REGION", "BATCH_SANDBOX", "BATCH_SHARED_PATHS", "HOME",
            "LANG",
        ]
        for name in passed {
            if let value = ProcessInfo.processInfo.environment[name] { environment[name] = value }
        }
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
            await exitHandler?(node, env, termination.description)
        }
    }

    func destroyNode(_ node: NodeID) async {
        guard let child = children[node] else { return }
        stopping.insert(node)
        await child.process.terminate(grace: .seconds(30))
    }

    func nodes(of env: EnvID) -> [NodeID] {
        children.filter { $0.value.env == env }.map(\.key).sorted { $0.rawValue < $1.rawValue }
    }

    func shutdown() async {
        let all = Array(children.keys)
        await withTaskGroup(of: Void.self) { group in
            for node in all { group.addTask { await self.destroyNode(node) } }
        }
    }
}
