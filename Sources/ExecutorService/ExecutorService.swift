import ArgumentParser
import BatchCore
import BatchRuntime
import Foundation
import Hummingbird
import Logging
import Messaging
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// The agent on a compute node: takes `instance.run` messages from its environment's work queue (prefetch = its
/// slots), runs each instance, and reports start and end. A run message is acked once its start is confirmed by the
/// broker: from then on the scheduler owns the attempt (a lost node's attempts run again, as new attempts), so a
/// broker restart never hands a running instance to a second node. It never touches the database.
@main
struct ExecutorService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ExecutorService",
        abstract: "Run task instances for one compute environment.",
        discussion: "Example: ExecutorService --env-id env-ab12cd34 --slots 4",
        version: BatchRelease.version)

    @Option(help: "The compute environment whose work this node takes (BATCH_ENV_ID).")
    var envId: String = Environment.value("BATCH_ENV_ID", default: "")

    @Option(help: "This node's id (BATCH_NODE_ID, default a new node-… id).")
    var nodeId: String = Environment.value("BATCH_NODE_ID", default: NodeID.generate().rawValue)

    @Option(
        name: .customLong("slots"),
        help: """
            Instances run at once (BATCH_NODE_SLOTS; default from the node's CPUs, its memory and --instance-memory, \
            see NodeSizing: 8 a CPU, 256 MiB each at least, 64 at most).
            """)
    var slotsOption: Int?

    /// The slots given, or the node's size (``NodeSizing``).
    var slots: Int {
        slotsOption ?? Environment.value("BATCH_NODE_SLOTS").flatMap(Int.init)
            ?? NodeSizing.slots(
                cpus: ProcessInfo.processInfo.activeProcessorCount, memoryBytes: Self.nodeMemoryBytes,
                instanceMemoryBytes: (instanceMemory ?? Environment.value("BATCH_INSTANCE_MEMORY").flatMap(Int.init))
                    .map { Int64($0) << 20 })
    }

    /// The node's memory: the machine's, or its cgroup's limit if lower (an executor in a container).
    static var nodeMemoryBytes: Int64 {
        let physical = Int64(ProcessInfo.processInfo.physicalMemory)
        let limited =
            (try? String(contentsOfFile: "/sys/fs/cgroup/memory/memory.limit_in_bytes", encoding: .utf8))
            .flatMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? physical
        return min(physical, limited)
    }

    @Option(help: "Where instances' work dirs and logs go (BATCH_WORK_DIR, default .batch/nodes/<node id>).")
    var workDir: String?

    /// A host attached by hand may name its environment's nodes' user without a password
    /// (`amqp://batch-node-<env id>@host/`): the node derives it from its node key.
    @Option(help: "RabbitMQ URL (BATCH_EXECUTOR_AMQP_URL, else BATCH_AMQP_URL).")
    var amqpURL: String = Environment.amqpURL(role: "EXECUTOR")

    @Option(help: "Seconds between heartbeats.")
    var heartbeatInterval: Int = Environment.int("BATCH_HEARTBEAT_INTERVAL", default: 3)

    /// Seconds without a confirmed heartbeat after which running instances stop (0: never). Keep it below the
    /// scheduler's `BATCH_NODE_LOST_AFTER` (30 s), after which they run again elsewhere. Default 20.
    @Option(help: "Seconds the broker may be out of reach before running instances stop, 0 never (BATCH_NODE_LEASE).")
    var lease: Int = Environment.int("BATCH_NODE_LEASE", default: 20)

    /// With the sandbox on (the default), a node that cannot make a sandbox or limit its instances refuses to start:
    /// it never runs a tenant's work unisolated.
    @Option(help: "Run each instance in the node's sandbox: on, off (trusted work) (BATCH_SANDBOX, default on).")
    var sandbox: String = Environment.value("BATCH_SANDBOX", default: "on")

    @Option(help: "The sandbox helper (BATCH_SANDBOX_HELPER, default batch-sandbox beside this executable).")
    var sandboxHelper: String?

    /// `none`: sandboxed instances have no network but a loopback of theirs. `egress`: they may open connections out
    /// of the node, never to its loopback or private addresses (``Egress``). The provisioner sets it from the
    /// environment's `Egress`.
    @Option(help: "Sandboxed instances' network: none, egress (BATCH_INSTANCE_NETWORK, default none).")
    var instanceNetwork: String = Environment.value("BATCH_INSTANCE_NETWORK", default: "none")

    @Option(help: "Comma-separated IPv4 ranges egress may reach though private (BATCH_EGRESS_ALLOW, default none).")
    var egressAllow: String = Environment.value("BATCH_EGRESS_ALLOW", default: "")

    /// Directories of shared file systems that `file://` paths may name; none by default (no `file://` at all).
    @Option(help: "Colon-separated directories file:// paths may be inside (BATCH_STORAGE_ROOTS, default none).")
    var storageRoots: String = Environment.value("BATCH_STORAGE_ROOTS", default: "")

    /// MiB of memory each instance may use; default the node's memory divided by its slots.
    @Option(help: "MiB of memory each instance may use (BATCH_INSTANCE_MEMORY, default memory / slots).")
    var instanceMemory: Int?

    @Option(help: "Processes and threads each instance may have (BATCH_INSTANCE_PIDS, default 1024).")
    var instancePids: Int = Environment.int("BATCH_INSTANCE_PIDS", default: InstanceLimits.defaultPids)

    @Option(help: "MiB the largest file an instance writes may have (BATCH_INSTANCE_FILE_SIZE, default 10240).")
    var instanceFileSize: Int = Environment.int(
        "BATCH_INSTANCE_FILE_SIZE", default: Int(InstanceLimits.defaultFileBytes >> 20))

    @Option(help: "MiB an instance's attempt directory may hold on disk (BATCH_INSTANCE_DISK, default 20480).")
    var instanceDisk: Int = Environment.int("BATCH_INSTANCE_DISK", default: Int(InstanceLimits.defaultDiskBytes >> 20))

    @Option(help: "Colon-separated directories (shared file systems) sandboxed instances see (BATCH_SHARED_PATHS).")
    var sharedPaths: String = Environment.value("BATCH_SHARED_PATHS", default: "")

    /// The unprivileged user instances run as; "" for the executor's own. Default `BATCH_RUN_AS`, else `nobody`
    /// when the executor is root.
    @Option(help: "User instances run as, \"\" for the executor's own (BATCH_RUN_AS, default nobody when root).")
    var runAs: String = Environment.value("BATCH_RUN_AS", default: geteuid() == 0 ? "nobody" : "")

    @Option(help: "This machine's id, as AttachInstances names it (BATCH_INSTANCE_ID, default the host name).")
    var instanceId: String = Environment.value("BATCH_INSTANCE_ID", default: ProcessInfo.processInfo.hostName)

    @Option(help: "Port for /healthz and /metrics (on --ops-host), 0 for none (BATCH_EXECUTOR_OPS_PORT).")
    var opsPort: Int = Environment.int("BATCH_EXECUTOR_OPS_PORT", default: 0)

    @Option(help: "Address of /healthz, /readyz and /metrics (BATCH_OPS_HOST, default 127.0.0.1).")
    var opsHost: String = Environment.value("BATCH_OPS_HOST", default: "127.0.0.1")

    @Option(
        help: "File holding the environment's node key (else BATCH_NODE_KEY; `batchctl admin node-key` prints it).")
    var nodeKeyFile: String?

    @Flag(help: "Exit when the parent process (the provisioner that started this node) exits.")
    var exitWithParent = false

    func validate() throws {
        guard EnvID(validating: envId) != nil else {
            throw ValidationError("--env-id (or BATCH_ENV_ID) must be an environment id such as env-ab12cd34")
        }
        guard NodeID(validating: nodeId) != nil else {
            throw ValidationError("--node-id must be a node id such as node-ab12cd34")
        }
        guard slots >= 1 else { throw ValidationError("--slots must be at least 1") }
        guard lease >= 0 else { throw ValidationError("--lease must be 0 (never) or a number of seconds") }
        guard ["on", "off"].contains(sandbox) else { throw ValidationError("--sandbox must be on or off") }
        if let memory = instanceMemory ?? Environment.value("BATCH_INSTANCE_MEMORY").flatMap(Int.init), memory < 16 {
            throw ValidationError("--instance-memory must be at least 16 (MiB)")
        }
        guard instancePids >= 16 else { throw ValidationError("--instance-pids must be at least 16") }
        guard instanceFileSize >= 1 else { throw ValidationError("--instance-file-size must be at least 1 (MiB)") }
        guard instanceDisk >= 1 else { throw ValidationError("--instance-disk must be at least 1 (MiB)") }
        for root in storageRoots.split(separator: ":") where !root.hasPrefix("/") || root.contains("/..") {
            throw ValidationError("--storage-roots: \(root) is not an absolute path")
        }
    }

    /// Each instance's limits: the memory given, or the node's (its cgroup's limit, if lower) over its slots.
    func instanceLimits() -> InstanceLimits {
        var limits = InstanceLimits.defaults(nodeMemoryBytes: Self.nodeMemoryBytes, slots: slots)
        if let memory = instanceMemory ?? Environment.value("BATCH_INSTANCE_MEMORY").flatMap(Int.init) {
            limits.memoryBytes = Int64(memory) << 20
        }
        limits.pids = instancePids
        limits.fileBytes = Int64(instanceFileSize) << 20
        limits.diskBytes = Int64(instanceDisk) << 20
        return limits
    }

    /// The environment's key, from `--node-key-file` or `BATCH_NODE_KEY`; the variable is cleared once read, so
    /// that no process the node starts inherits it.
    func readNodeKey() throws -> NodeKey {
        defer { unsetenv("BATCH_NODE_KEY") }
        if let nodeKeyFile {
            let text: String
            do {
                text = try String(contentsOfFile: nodeKeyFile, encoding: .utf8)
            } catch {
                throw StartupError("--node-key-file \(nodeKeyFile) cannot be read: \(error.localizedDescription)")
            }
            return try NodeKey(base64: text)
        }
        guard let value = Environment.value("BATCH_NODE_KEY"), !value.isEmpty else {
            throw StartupError(
                "BATCH_NODE_KEY is not set: a node proves its environment with the key `batchctl admin node-key "
                    + "--env-id \(envId)` prints (the provisioner gives it to the nodes it starts)")
        }
        return try NodeKey(base64: value)
    }

    /// `url` with the password of `env`'s nodes' broker user filled in when it names that user and no password.
    static func withNodePassword(_ url: String, env: EnvID, key: NodeKey) -> String {
        guard var components = URLComponents(string: url), components.user == Topology.nodeUser(env: env.rawValue),
            components.password == nil
        else { return url }
        components.password = key.brokerPassword
        return components.string ?? url
    }

    func run() async throws {
        var logger = Observability.bootstrap(service: "executor")
        logger[metadataKey: "node.id"] = "\(nodeId)"
        let envID = EnvID(rawValue: envId)
        let nodeID = NodeID(rawValue: nodeId)
        let root = URL(fileURLWithPath: workDir ?? ".batch/nodes/\(nodeId)", isDirectory: true).standardizedFileURL
        let nodeKey: NodeKey
        do {
            nodeKey = try readNodeKey()
        } catch {
            exitWithError("ExecutorService", error)
        }
        let amqp: AMQPClient
        do {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            amqp = AMQPClient(
                configuration: .init(
                    url: try Environment.brokerURL(
                        Self.withNodePassword(amqpURL, env: envID, key: nodeKey), role: "EXECUTOR"),
                    connectionName: "batch-executor-\(nodeId)"),
                // Its own queue only: the control plane declares the rest (the node's broker user may not).
                topology: .nodeQueue(forNode: nodeId, env: envID.rawValue),
                logger: logger)
        } catch {
            exitWithError("ExecutorService", error)
        }
        let user: InstanceUser?
        do {
            user = try InstanceUser.resolve(runAs)
        } catch {
            exitWithError("ExecutorService", error)
        }
        guard ["none", "egress"].contains(instanceNetwork) else {
            exitWithError(
                "ExecutorService", StartupError("--instance-network must be none or egress, not \(instanceNetwork)"))
        }
        let sandboxBase = root.appendingPathComponent(".sandbox-root", isDirectory: true)
        try? FileManager.default.createDirectory(
            at: sandboxBase, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let isolation = await Sandbox.probe(
            enabled: sandbox == "on", helper: sandboxHelper ?? Environment.value("BATCH_SANDBOX_HELPER"), user: user,
            base: sandboxBase)
        var cgroups: Cgroups?
        var sandboxes: SlotSandboxes?
        var egress: Egress?
        let limits = instanceLimits()
        switch isolation {
        case .slots(let helper):
            do {
                // One network namespace for the node's instances, with nothing but a loopback: made once here, since
                // a namespace made and torn down for each instance cost a quarter of a node's launch rate.
                try ChildProcess.isolateNetwork()
            } catch {
                exitWithError(
                    "ExecutorService",
                    StartupError("this node cannot cut its instances off the network: \(error) (run it as root)"))
            }
            if instanceNetwork == "egress" {
                do {
                    egress = try await Egress.start(
                        directory: root,
                        allowed: egressAllow.split(separator: ",").map {
                            $0.trimmingCharacters(in: .whitespaces)
                        }, logger: logger)
                } catch {
                    exitWithError(
                        "ExecutorService", StartupError("this node cannot give its instances egress: \(error)"))
                }
            }
            do {
                cgroups = try Cgroups.prepare(node: nodeID, slots: slots, limits: limits)
            } catch {
                exitWithError(
                    "ExecutorService",
                    StartupError(
                        "this node cannot limit its instances' resources: \(error) (run it as root, or give it a "
                            + "delegated cgroup; --sandbox off only for trusted work)"))
            }
            do {
                // One sandbox per slot, started once the node's network namespace is made (they inherit it).
                let slotSandboxes = SlotSandboxes(helper: helper)
                try await slotSandboxes.prepare(slots)
                sandboxes = slotSandboxes
            } catch {
                exitWithError("ExecutorService", StartupError("this node cannot start its slots' sandboxes: \(error)"))
            }
            logger.info(
                "instances run in the node's sandbox",
                metadata: [
                    "helper": "\(helper)", "instance.memory": "\(limits.memoryBytes)",
                    "instance.pids": "\(limits.pids)",
                ])
        case .none(let reason) where sandbox == "on":
            exitWithError(
                "ExecutorService",
                StartupError(
                    "refusing to run instances without a sandbox: \(reason) (run the executor as root beside "
                        + "batch-sandbox; --sandbox off only for trusted work)"))
        case .none(let reason):
            logger.warning(
                "instances run without a sandbox: \(reason); two instances that map the same path never run at once")
        }
        let reporter = Reporter(amqp: amqp, node: nodeID, env: envID, key: nodeKey)
        let runner = InstanceRunner(
            amqp: amqp, nodeID: nodeID, envID: envID, nodeKey: nodeKey, slots: slots, workRoot: root,
            sandbox: isolation,
            sharedPaths: sharedPaths.split(separator: ":").map(String.init), user: user, storage: .fromEnvironment(),
            storageRoots: StorageRoots(
                storageRoots.split(separator: ":").map(String.init),
                // Its work dir, and beside it other nodes' when they share a parent (`<nodes dir>/<node id>`).
                excluding: [root.lastPathComponent == nodeId ? root.deletingLastPathComponent().path : root.path]),
            cgroups: cgroups, sandboxes: sandboxes, egress: egress, limits: limits, reporter: reporter, logger: logger)
        // A node the provisioner started watches it; one started otherwise joined on its own (attached).
        let heartbeat = Heartbeat(
            amqp: amqp, runner: runner, interval: .seconds(heartbeatInterval), lease: lease > 0 ? .seconds(lease) : nil,
            parent: exitWithParent ? getppid() : nil, instanceID: instanceId, logger: logger)
        logger.info(
            "executor starting",
            metadata: [
                "env.id": "\(envID)", "slots": "\(slots)", "work.dir": "\(root.path)",
                "run.as": "\(user?.name ?? "the executor's user")",
            ])
        var operational: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if opsPort > 0 {
            operational.append(
                .init(
                    service: Observability.operationalServer(host: opsHost, port: opsPort, logger: logger) {
                        amqp.isConnected
                    }))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: operational + [
                    .init(service: amqp),
                    // Stops after the instances it reports on have ended (services stop in reverse order).
                    .init(service: reporter),
                    .init(service: heartbeat, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(
                        service: EventConsumer(
                            amqp: amqp, queue: Topology.nodeQueue(node: nodeId, env: envID.rawValue), concurrency: 4,
                            logger: logger,
                            handle: runner.command)),
                    .init(
                        service: EventConsumer(
                            amqp: amqp, queue: Topology.workQueue(env: envID.rawValue), concurrency: slots,
                            prefetch: slots, handlerAcks: true, logger: logger, handle: runner.run),
                        successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(
                        service: Interrupts(runner: runner, logger: logger),
                        successTerminationBehavior: .gracefullyShutdownGroup),
                ], gracefulShutdownSignals: [.sigterm], logger: logger))
        // SIGTERM drains: no new work, running instances finish and report, heartbeats go on until they have (the
        // group stops services in reverse order). SIGINT hands the work back (``Interrupts``).
        runner.onStopRequest { Task { await group.triggerGracefulShutdown() } }
        // Until ``Interrupts`` traps it, a SIGINT must not end the process.
        signal(SIGINT, SIG_IGN)
        try await group.run()
        cgroups?.remove()
    }
}

/// SIGINT hands the node's work back: running instances stop now and run again elsewhere; then the group shuts down
/// (this service returns). It ends with the group's graceful shutdown otherwise.
struct Interrupts: Service {
    let runner: InstanceRunner
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sigint).cancelOnGracefulShutdown() {
            logger.info("interrupted: running instances stop and go back to the scheduler")
            runner.handBack()
            return
        }
    }
}

/// Publishes `node.heartbeat` every few seconds with the node's free slots, and `node.stopped` on shutdown. When no
/// heartbeat has been confirmed for `lease` (the broker, or the network to it, is gone), the node stops its running
/// instances: the scheduler will run them elsewhere, and a node cut off from the others must not run them too.
struct Heartbeat: Service {
    let amqp: AMQPClient
    let runner: InstanceRunner
    let interval: Duration
    let lease: Duration?
    /// When set, the node shuts down once this process is no longer its parent (the provisioner died).
    let parent: pid_t?
    let instanceID: String
    let logger: Logger

    func run() async throws {
        let confirmed = Confirmed()
        await withTaskGroup(of: Void.self) { group in
            if let lease {
                group.addTask { await fence(after: lease, confirmed: confirmed) }
            }
            await beat(confirmed: confirmed)
            group.cancelAll()
        }
        try? await amqp.publish(
            try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.nodeStopped,
                payload: NodeStopped(
                    nodeID: runner.nodeID, envID: runner.envID, at: Date(),
                    proof: runner.nodeKey.proof(node: runner.nodeID))))
    }

    private func beat(confirmed: Confirmed) async {
        let host = ProcessInfo.processInfo.hostName
        let proof = runner.nodeKey.proof(node: runner.nodeID)
        var next = ContinuousClock.now
        var orphaned = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if let parent, !orphaned, getppid() != parent {
                // The node hands its instances back and shuts down; heartbeats go on until they have ended and their
                // interrupted reports are out (the group stops this service last), so the new provisioner keeps
                // the node until then and the scheduler runs them again only once they have stopped.
                logger.warning("the provisioner that started this node is gone; stopping")
                orphaned = true
                runner.handBack()
                runner.requestStop()
            }
            if ContinuousClock.now >= next {
                let sent = ContinuousClock.now
                next = sent + interval
                let beat = NodeHeartbeat(
                    nodeID: runner.nodeID, envID: runner.envID, slots: runner.slots, freeSlots: runner.freeSlots,
                    host: host, pid: getpid(), at: Date(), instanceID: parent == nil ? instanceID : nil,
                    attached: parent == nil, proof: proof)
                do {
                    // Returns once the broker confirmed it: across a lost connection, only after reconnecting.
                    try await amqp.publish(
                        try OutgoingMessage(
                            exchange: Topology.eventsExchange, routingKey: Topology.Event.nodeHeartbeat,
                            payload: beat))
                    // The lease runs from when the beat was made, as the scheduler counts from its time: one held
                    // up by a broker outage renews nothing.
                    confirmed.renew(from: sent)
                } catch {
                    logger.warning("heartbeat not published", metadata: ["error": "\(error)"])
                }
            }
            // Wake every second to notice a vanished parent quickly.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: min(.seconds(1), interval)) }
        }
    }

    /// Every second: stops the running instances once no heartbeat was confirmed for `lease`.
    private func fence(after lease: Duration, confirmed: Confirmed) async {
        var cutOff = false
        while !Task.isCancelled {
            let silence = ContinuousClock.now - confirmed.last
            if silence > lease, !cutOff {
                cutOff = true
                logger.warning(
                    "broker out of reach: running instances stop and run again elsewhere",
                    metadata: ["lease.seconds": "\(lease.components.seconds)"])
                runner.fence()
            } else if silence <= lease, cutOff {
                cutOff = false
                logger.info("broker reachable again: taking work")
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }
}

/// When the broker last confirmed a heartbeat.
final class Confirmed: Sendable {
    private let instant = Mutex(ContinuousClock.now)
    var last: ContinuousClock.Instant { instant.withLock { $0 } }
    func renew(from sent: ContinuousClock.Instant) { instant.withLock { $0 = max($0, sent) } }
}
