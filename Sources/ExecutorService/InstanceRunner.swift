import BatchCore
import BatchRuntime
import Foundation
import Logging
import Messaging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the attempts of `instance.run` and `instance.runs` messages: reports each start, runs the command in the
/// instance's work dir with the `BATCH_*` variables, enforces the timeout, and reports the end. A message is acked
/// once the starts of all its attempts are confirmed by the broker.
final class InstanceRunner: Sendable {
    let amqp: AMQPClient
    let nodeID: NodeID
    let envID: EnvID
    /// The environment's key: it opens run messages and proves this node's reports.
    let nodeKey: NodeKey
    let slots: Int
    let workRoot: URL
    let sandbox: Sandbox
    /// Directories of the node (shared file systems) that sandboxed instances see at the same path.
    let sharedPaths: [String]
    /// Who instances run as (nil: the executor's own user).
    let user: InstanceUser?
    let storage: NodeStorage
    /// Where `file://` paths may point (the operator's storage roots, never the node's work dirs).
    let storageRoots: StorageRoots
    /// Each sandboxed instance's cgroup comes from here (nil: the sandbox is off).
    let cgroups: Cgroups?
    /// The slots' sandboxes (nil: the sandbox is off).
    let sandboxes: SlotSandboxes?
    /// Connections out of the node for sandboxed instances (nil: none).
    let egress: Egress?
    /// The empty directory each sandboxed instance's root is built on, in a mount namespace of its own.
    var sandboxBase: URL { workRoot.appendingPathComponent(".sandbox-root", isDirectory: true) }
    /// What one instance may use of the node.
    let limits: InstanceLimits
    /// Sends the starts and ends, several in one message when they come close together.
    let reporter: Reporter
    let logger: Logger
    private let pathLocks = PathLocks()
    private let handingBack = Atomic<Bool>(false)
    /// Attempts stopped because the broker was out of reach (``fence()``): they end as interrupted.
    private let fenced = Mutex<Set<String>>([])
    private let stopRequested = Mutex<(@Sendable () -> Void)?>(nil)
    /// Taken by each attempt while it runs: a run message can carry more attempts than the node has free slots.
    private let slotPermits: Slots
    /// Taken by each attempt from its claim until it has a slot: a node claims at most as many attempts ahead of its
    /// slots as it has slots (those claims' round trips overlap the running commands).
    private let claimPermits: Slots
    /// The attempts running now, by job, task, index and attempt, so that `instance.kill` can reach them; and those
    /// cleared with a slot whose command is not started yet, with why they were killed meanwhile, if they were.
    private let running = Mutex(Running())

    private struct Running {
        var children: [String: ChildProcess] = [:]
        var launching: [String: String?] = [:]

        /// Marks every attempt launching (it has its slot, its command is not started yet) to be stopped as its
        /// command starts, with `reason` unless it was killed already; returns their keys.
        mutating func stopLaunching(_ reason: String) -> [String] {
            for (key, killed) in launching where killed == nil { launching[key] = .some(reason) }
            return Array(launching.keys)
        }
    }
    /// The attempts this node has taken or was told to kill, so a (second) delivery of one is not run.
    private let seen = Mutex(RecentKeys(capacity: 10_000))
    /// The attempts announced and waiting for the scheduler's word before their commands run.
    private let clearances = Clearances()

    static func key(_ job: JobID, _ task: String, _ index: Int, _ attempt: Int) -> String {
        "\(job)/\(task)/\(index)/\(attempt)"
    }

    /// An attempt's directory under the node's work root: `<job>/<task>/<index>-attempt-<n>` (one directory a new
    /// attempt makes there, beside its task's others: directories are the costliest files to make).
    func directory(_ job: JobID, _ task: String, _ index: Int, _ attempt: Int) -> URL {
        workRoot.appendingPathComponent("\(job)/\(task)/\(index)-attempt-\(attempt)", isDirectory: true)
    }

    init(
        amqp: AMQPClient, nodeID: NodeID, envID: EnvID, nodeKey: NodeKey, slots: Int, workRoot: URL, sandbox: Sandbox,
        sharedPaths: [String], user: InstanceUser?, storage: NodeStorage, storageRoots: StorageRoots,
        cgroups: Cgroups?, sandboxes: SlotSandboxes?, egress: Egress?, limits: InstanceLimits, reporter: Reporter,
        logger: Logger
    ) {
        self.storageRoots = storageRoots
        self.cgroups = cgroups
        self.sandboxes = sandboxes
        self.egress = egress
        self.limits = limits
        self.reporter = reporter
        self.user = user
        self.sandbox = sandbox
        self.sharedPaths = sharedPaths
        self.storage = storage
        self.amqp = amqp
        self.nodeID = nodeID
        self.envID = envID
        self.nodeKey = nodeKey
        self.slots = slots
        self.slotPermits = Slots(slots)
        self.claimPermits = Slots(slots)
        self.workRoot = workRoot
        self.logger = logger
    }

    var freeSlots: Int { slotPermits.free }

    /// Runs an `instance.runs` message, sealed for this environment's nodes. Each of its attempts publishes its
    /// claim, waits for the scheduler to clear it, takes a slot as one frees, runs the command and publishes its
    /// start and end. The message is acked once every attempt's claim is confirmed (or the attempt is not to run
    /// here); when one could not be announced (the node drains, the client is shutting down) it goes back to the
    /// queue, and those claimed stay here: the scheduler refuses their copies elsewhere. Throws only when the message
    /// does not decode, or is not sealed. One that does not open with this node's key goes back to the queue, and
    /// the node stops: its key is not its environment's (or is older than the master key).
    @Sendable func run(_ delivery: Delivery) async throws {
        guard delivery.type == InstanceRuns.type else {
            throw PoisonMessage(
                "the executor runs only sealed instance.runs messages, not \(delivery.type ?? "(none)")")
        }
        let message = try delivery.decode(InstanceRuns.self).payload
        guard message.sealed != nil else {
            throw PoisonMessage("an instance.runs message that is not sealed is refused")
        }
        let runs: [InstanceRun]
        do {
            runs = try message.opening(with: nodeKey).runs
        } catch {
            logger.critical(
                "a run message does not open with this node's key (BATCH_NODE_KEY): it goes back to the queue and the node stops",
                metadata: ["job.id": "\(message.jobID)", "error": "\(error)"])
            delivery.nack(requeue: true)
            requestStop()
            return
        }
        let settlement = Settlement(count: runs.count) { [logger] allAnnounced in
            if allAnnounced {
                delivery.ack()
            } else {
                logger.info("not every attempt of a run message was claimed here: it goes back to the queue")
                delivery.nack(requeue: true)
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for run in runs {
                group.addTask { await self.run(run, settlement: settlement) }
            }
        }
    }

    /// Runs one attempt of a run message: claims it (settling it in `settlement` once the claim is confirmed, or
    /// when it is not to run here), waits for the scheduler to clear the claim, then for a slot, runs the command,
    /// and reports its start and end. The claim's round trip overlaps the commands running in the node's slots, so a
    /// slot that frees starts its next attempt at once.
    private func run(_ run: InstanceRun, settlement: Settlement) async {
        var logger = self.logger
        logger[metadataKey: "job.id"] = "\(run.jobID)"
        logger[metadataKey: "task.name"] = "\(run.taskName)"
        logger[metadataKey: "instance.index"] = "\(run.instanceIndex)"
        logger[metadataKey: "instance.attempt"] = "\(run.attempt)"
        let key = Self.key(run.jobID, run.taskName, run.instanceIndex, run.attempt)
        guard seen.withLock({ $0.insert(key) }) else {
            // The same attempt again (a redelivery, or a message published twice), or one killed before it came.
            logger.info("run of an attempt this node has run or was told to kill ignored")
            settlement.settle(announced: true)
            return
        }
        // At most `slots` attempts wait claimed for a slot; the others wait for a claim. A node that drains or hands
        // its work back claims no more: the message goes back to the queue (the attempts of it already claimed are
        // refused wherever it goes next).
        var holdsClaim = false
        if !Task.isShuttingDownGracefully {
            holdsClaim = claimPermits.takeIfFree()
            if !holdsClaim { holdsClaim = await cancelWhenGracefulShutdown { await self.claimPermits.take() } }
        }
        // Given back once this attempt has its slot (the next may claim), or is not to run here.
        var claimPermit = Permit(slots: claimPermits, held: holdsClaim)
        defer { claimPermit.release() }
        guard claimPermit.held, !handingBack.load(ordering: .relaxed) else {
            seen.withLock { $0.remove(key) }
            settlement.settle(announced: false)
            return
        }
        let directory = directory(run.jobID, run.taskName, run.instanceIndex, run.attempt)
        let claim = InstanceStarted(
            jobID: run.jobID, taskName: run.taskName, instanceIndex: run.instanceIndex, attempt: run.attempt,
            nodeID: nodeID, startedAt: Date())
        clearances.expect(key)
        do {
            try Workspace.makeDirectory(directory)
            try await reporter.send(.accepted(claim))
        } catch {
            clearances.forget(key)
            seen.withLock { $0.remove(key) }
            logger.warning("instance claim not announced", metadata: ["error": "\(error)"])
            settlement.settle(announced: false)
            return
        }
        settlement.settle(announced: true)
        if handingBack.load(ordering: .relaxed) { clearances.decide(key, .stopped) }
        var verdict = await clearances.wait(for: key) { [self] in
            try? await reporter.send(.accepted(claim))
        }
        // Cleared: the attempt is STARTING here until a slot frees, and runs even if the node drains meanwhile (a
        // drain finishes what the node claimed). A kill, a hand-back or a cut-off broker meanwhile is in the verdict
        // the slot's release returns.
        var slotPermit = Permit(slots: slotPermits, held: false)
        if verdict == .cleared {
            slotPermit = Permit(slots: slotPermits, held: await slotPermits.acquire())
            // Launching before it leaves the clearances: a kill from now on finds it in one or the other.
            running.withLock { $0.launching[key] = .some(nil) }
            let released = clearances.release(key)
            verdict = slotPermit.held ? released : .stopped
        }
        defer {
            _ = running.withLock { $0.launching.removeValue(forKey: key) }
            _ = fenced.withLock { $0.remove(key) }
        }
        claimPermit.release()
        // Given back once the command has ended: the next attempt may start while this one's end is reported.
        defer { slotPermit.release() }
        if case .refused(let reason) = verdict {
            logger.info("instance not run: the scheduler refused it", metadata: ["reason": "\(reason)"])
            return
        }
        if verdict == .cleared {
            reporter.post(
                .started(
                    InstanceStarted(
                        jobID: run.jobID, taskName: run.taskName, instanceIndex: run.instanceIndex,
                        attempt: run.attempt, nodeID: nodeID, startedAt: Date())))
            logger.info("instance started")
        }

        let result = verdict == .cleared ? await execute(run, in: directory, logger: logger) : nil
        let finished = InstanceFinished(
            jobID: run.jobID, taskName: run.taskName, instanceIndex: run.instanceIndex, attempt: run.attempt,
            nodeID: nodeID, exitCode: result?.code,
            reason: result == nil ? "the node stopped while it ran" : result?.reason, finishedAt: Date(),
            stdoutTail: Self.tail(of: directory.appendingPathComponent("stdout.log")),
            stderrTail: Self.tail(of: directory.appendingPathComponent("stderr.log")),
            interrupted: result == nil ? true : nil)
        slotPermit.release()
        do {
            try await reporter.send(.finished(finished))
        } catch {
            // Only a client shutting down fails a publish; the scheduler finds the attempt when the node is lost.
            logger.error("instance end not published", metadata: ["error": "\(error)"])
            return
        }
        if result == nil {
            logger.info("instance stopped with the node; it will run again elsewhere")
        } else {
            logger.info("instance finished", metadata: ["exit.code": "\(result?.code.map(String.init) ?? "none")"])
        }
    }

    /// How an attempt ended on this node: the exit code (nil when the command did not run or its outputs were not
    /// stored), and why unless all went well.
    struct Outcome {
        var code: Int?
        var reason: String?
    }

    /// Prepares the attempt (package, inputs), runs the command, and stores its outputs and logs. Returns the exit
    /// code (nil when the command did not run or its outputs were not stored) and, unless all went well, why; or nil
    /// when the node shut down while it ran (the command was stopped).
    func execute(_ run: InstanceRun, in directory: URL, logger: Logger) async -> Outcome? {
        let io = run.io ?? InstanceIO()
        let sandboxed = if case .slots = sandbox, io.docker == nil { true } else { false }
        let workspace = Workspace(
            attempt: directory, run: run, sandboxed: sandboxed, nodeStorage: storage, roots: storageRoots,
            user: sandboxed ? user : nil)
        // Unsandboxed instances use the mappings' paths as they are: one at a time per path.
        let paths = sandboxed ? [] : io.inputMappings.map(\.destinationPath) + io.outputMappings.map(\.sourcePath)
        if !paths.isEmpty {
            do { try await pathLocks.lock(paths) } catch { return nil }
        }
        defer { if !paths.isEmpty { pathLocks.unlock(paths) } }

        var outcome: Outcome
        do {
            try await workspace.prepare()
            guard let ran = await launch(run, workspace: workspace, logger: logger) else { return nil }
            outcome = ran
            if outcome.code == 0 { try await workspace.uploadOutputs() }
        } catch {
            logger.warning("instance failed around its run", metadata: ["reason": "\(error)"])
            outcome = Outcome(code: nil, reason: "\(error)")
        }
        if let problem = await workspace.uploadLogs() {
            logger.warning("logs not uploaded", metadata: ["reason": "\(problem)"])
            if outcome.code == 0 { outcome = Outcome(code: nil, reason: problem) }
        }
        return outcome
    }

    /// Runs the command in the sandbox (or the container, or directly), enforcing the timeout and, in the sandbox
    /// or the container, the instance's resource limits.
    func launch(_ run: InstanceRun, workspace: Workspace, logger: Logger) async -> Outcome? {
        let work = workspace.work
        let workPath = work.path
        let temporary = workspace.attempt.appendingPathComponent("tmp", isDirectory: true)
        var environment = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": workPath,
            "TMPDIR": workspace.sandboxed ? "/tmp" : temporary.path,
            "LANG": "C.UTF-8",
        ]
        for variable in run.environment { environment[variable.name] = variable.value }
        environment["BATCH_JOB_ID"] = run.jobID.rawValue
        environment["BATCH_TASK_NAME"] = run.taskName
        environment["BATCH_TASK_INSTANCE_INDEX"] = String(run.instanceIndex)
        environment["BATCH_TASK_INSTANCE_NUM"] = String(run.instanceCount)
        environment["BATCH_TASK_ATTEMPT"] = String(run.attempt)
        environment["BATCH_NODE_ID"] = nodeID.rawValue
        environment["BATCH_WORK_DIR"] = workPath

        // The launcher (the slot's sandbox, the container runtime) runs with the executor's own environment, never the
        // task's: the task's variables exist only inside the sandbox.
        var launcherEnvironment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        let executable: String
        var arguments: [String]
        var request: [String]?
        var cgroup: InstanceCgroup?
        var environmentFile: URL?
        defer { if let environmentFile { try? FileManager.default.removeItem(at: environmentFile) } }
        let mountPoints = workspace.mountPoints.map { ($0, workspace.host($0)) }
        if let docker = run.io?.docker {
            guard let runtime = ContainerRuntime.find() else {
                return Outcome(
                    code: nil,
                    reason: "the node has no container runtime (docker or podman on the PATH) to run \(docker.image)")
            }
            if let refusal = docker.dockerRunOption.flatMap(Isolation.dockerRunOptionRefusal) {
                return Outcome(code: nil, reason: "Docker.DockerRunOption is refused: \(refusal)")
            }
            do {
                environmentFile = try writeEnvironmentFile(environment, key: workspace.attempt.lastPathComponent)
            } catch {
                return Outcome(code: nil, reason: "the container's environment could not be written: \(error)")
            }
            launcherEnvironment["HOME"] = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
            executable = runtime
            arguments = ContainerRuntime.arguments(
                docker: docker, name: "batch-\(nodeID)-\(run.jobID)-\(run.instanceIndex)-\(run.attempt)",
                attempt: workspace.attempt, work: work, environmentFile: environmentFile!,
                mounts: mountPoints, command: run.command, user: user, limits: limits)
        } else if workspace.sandboxed, let user {
            // A sandboxed node always has its cgroups (it does not start without them).
            let slot: InstanceCgroup
            do {
                guard let cgroups else { throw Cgroups.Unusable(description: "the node has no cgroups") }
                slot = try cgroups.take()
            } catch {
                logger.error("instance limits could not be set", metadata: ["error": "\(error)"])
                return Outcome(code: nil, reason: "the node could not limit the instance's resources: \(error)")
            }
            cgroup = slot
            // The task's variables go to the slot's sandbox on its socket, never on a command line.
            request = sandbox.request(
                base: sandboxBase, attemptDirectory: workspace.attempt, workDirectory: work, mounts: mountPoints,
                shared: sharedPaths, user: user, command: run.command, environment: environment,
                stdout: workspace.stdout, stderr: workspace.stderr, cgroup: slot, fileBytes: limits.fileBytes,
                resolvConf: egress?.resolvConf)
            executable = ""
            arguments = []
        } else {
            try? Workspace.makeDirectory(temporary)
            launcherEnvironment = environment
            executable = "/bin/sh"
            arguments = ["-c", run.command]
        }
        let removeCgroup = { [cgroup, cgroups] in if let cgroup { cgroups?.giveBack(cgroup) } }
        let memoryKills = cgroup?.memoryKills() ?? 0
        // In the sandbox, the instance runs as the node's unprivileged user and owns its directories.
        if let user, request != nil {
            for directory in [work, workspace.root] { user.own(directory) }
        }

        // Stopped while it prepared (killed, handed back, fenced): its command is not started at all (a sandbox
        // stopped as it starts would keep its command running until the grace ran out: it has no process to signal
        // yet but itself).
        let key = Self.key(run.jobID, run.taskName, run.instanceIndex, run.attempt)
        if let stopped = running.withLock({ $0.launching[key] ?? nil }) {
            removeCgroup()
            logger.info("instance stopped before its command started", metadata: ["reason": "\(stopped)"])
            if handingBack.load(ordering: .relaxed) || fenced.withLock({ $0.remove(key) != nil }) { return nil }
            return Outcome(code: nil, reason: "stopped before its command started: \(stopped)")
        }
        let child: ChildProcess
        var members: (@Sendable () -> [pid_t])?
        if let cgroup { members = { cgroup.members() } }
        var slotSandbox: SlotSandbox?
        do {
            if let request, let sandboxes {
                let slot = try await sandboxes.take()
                slotSandbox = slot
                child = try await slot.launch(request, members: members ?? { [] })
            } else {
                child = try await ChildProcess.start(
                    executable: executable, arguments: arguments, environment: launcherEnvironment,
                    directory: workPath, stdout: workspace.stdout.path, stderr: workspace.stderr.path)
            }
        } catch {
            if let slotSandbox { sandboxes?.giveBack(slotSandbox) }
            removeCgroup()
            logger.warning("instance could not start", metadata: ["error": "\(error)"])
            return Outcome(code: nil, reason: "could not start: \(error)")
        }
        let killed = running.withLock { running in
            running.children[key] = child
            return running.launching.removeValue(forKey: key) ?? nil
        }
        defer { _ = running.withLock { $0.children.removeValue(forKey: key) } }
        if let killed {
            // Killed after it had its slot, before its command started.
            logger.info("instance killed as it started", metadata: ["reason": "\(killed)"])
            Task { await child.terminate(grace: .seconds(10)) }
        }
        let timedOut = Atomic<Bool>(false)
        let timeout = Task {
            try await Task.sleep(for: .seconds(run.timeoutSeconds))
            timedOut.store(true, ordering: .relaxed)
            logger.info("instance timed out; stopping it", metadata: ["timeout.seconds": "\(run.timeoutSeconds)"])
            await child.terminate()
        }
        // Its attempt directory (work dir, inputs, logs) is measured every few seconds; past the disk limit the
        // instance is stopped.
        let overDisk = Atomic<Bool>(false)
        let diskWatch = Task { [attempt = workspace.attempt, limits] in
            while !Task.isCancelled {
                try await Task.sleep(for: Self.diskCheckInterval)
                guard DiskUsage.exceeds(limits.diskBytes, under: attempt.path) else { continue }
                overDisk.store(true, ordering: .relaxed)
                logger.info(
                    "instance over its disk limit; stopping it", metadata: ["disk.limit": "\(limits.diskBytes)"])
                await child.terminate()
                return
            }
        }
        // A node that drains lets its instances finish; one that hands its work back stops them (`handBack`).
        let termination = await child.wait()
        if let slotSandbox { sandboxes?.giveBack(slotSandbox) }
        timeout.cancel()
        diskWatch.cancel()
        let killedForMemory = (cgroup?.memoryKills() ?? 0) > memoryKills
        removeCgroup()
        let wasFenced = fenced.withLock { $0.remove(key) != nil }
        if (handingBack.load(ordering: .relaxed) || wasFenced) && !timedOut.load(ordering: .relaxed) { return nil }
        if timedOut.load(ordering: .relaxed) {
            return Outcome(
                code: termination.code, reason: "timed out after \(run.timeoutSeconds) s")
        }
        if overDisk.load(ordering: .relaxed) {
            return Outcome(code: termination == .exited(0) ? 137 : termination.code, reason: limits.diskReason)
        }
        if killedForMemory {
            logger.info("instance killed for memory", metadata: ["memory.limit": "\(limits.memoryBytes)"])
            return Outcome(code: termination == .exited(0) ? 137 : termination.code, reason: limits.memoryReason)
        }
        if run.io?.docker != nil, termination == .exited(125) {
            return Outcome(
                code: 125,
                reason: "the container runtime could not run \(run.io?.docker?.image ?? "the image") (see stderr)")
        }
        return Outcome(
            code: termination.code, reason: termination == .exited(0) ? nil : termination.description)
    }

    /// How often a running instance's attempt directory is measured against its disk limit.
    static let diskCheckInterval = Duration.seconds(2)

    /// Writes a container's environment to a file only root reads, outside every directory an instance sees; the
    /// caller removes it once the container has ended.
    private func writeEnvironmentFile(_ environment: [String: String], key: String) throws -> URL {
        let directory = workRoot.appendingPathComponent(".environments", isDirectory: true)
        if mkdir(directory.path, 0o700) != 0 && errno != EEXIST {
            throw Workspace.Failure(description: "cannot make \(directory.path): \(String(cString: strerror(errno)))")
        }
        let file = directory.appendingPathComponent("\(UUID().uuidString)-\(key)")
        // One `NAME=value` a line: a value with a line break cannot be passed this way.
        if let broken = environment.first(where: { $0.value.contains("\n") || $0.key.contains("=") }) {
            throw Workspace.Failure(description: "the variable \(broken.key) holds a line break")
        }
        let text = environment.keys.sorted().filter { $0 != "PATH" }.map { "\($0)=\(environment[$0] ?? "")" }
            .joined(separator: "\n")
        guard
            FileManager.default.createFile(
                atPath: file.path, contents: Data((text + "\n").utf8), attributes: [.posixPermissions: 0o600])
        else {
            throw Workspace.Failure(description: "cannot write \(file.path)")
        }
        return file
    }

    /// Stops every running instance now, to run again elsewhere (each ends as interrupted, not counted against
    /// `MaxRetryCount`): the node is going away without draining.
    func handBack() {
        handingBack.store(true, ordering: .relaxed)
        clearances.stopAll()
        // Those launching (say, fetching their inputs) are stopped as their commands start: one let run to its end
        // would run on while the scheduler runs it again elsewhere.
        let (children, launching) = running.withLock { running in
            (Array(running.children.values), running.stopLaunching("the node handed its work back"))
        }
        for child in children {
            Task { await child.terminate(grace: .seconds(5)) }
        }
        logger.info(
            "work handed back",
            metadata: ["instances.running": "\(children.count)", "instances.launching": "\(launching.count)"])
    }

    /// Stops the instances running now, as ``handBack()`` does, but keeps the node: the broker has been out of
    /// reach for so long that the scheduler will count this node lost and run them elsewhere. Their ends are
    /// reported (as interrupted) once the broker is back, and the node takes new work again.
    func fence() {
        clearances.stopAll()
        // Marked fenced while `running` is held, so that none of them ends (and forgets its mark) in between.
        let children = running.withLock { running in
            let launching = running.stopLaunching("the node lost the broker")
            fenced.withLock {
                $0.formUnion(running.children.keys)
                $0.formUnion(launching)
            }
            return running.children
        }
        for child in children.values {
            Task { await child.terminate(grace: .seconds(5)) }
        }
    }

    /// A command on the node's own queue: `instance.cleared`, `instance.kill`, `instance.log-request` or `node.stop`.
    @Sendable func command(_ delivery: Delivery) async throws {
        switch delivery.type {
        case InstanceCleared.type:
            for cleared in try delivery.decode(InstanceCleared.self).payload.attempts {
                clearances.decide(
                    Self.key(cleared.jobID, cleared.taskName, cleared.instanceIndex, cleared.attempt), .cleared)
            }
        case LogRequest.type: try await serveLog(delivery)
        case NodeStop.type:
            let stop = try delivery.decode(NodeStop.self).payload
            logger.info("asked to stop", metadata: ["drain": "\(stop.drain)", "reason": "\(stop.reason)"])
            if !stop.drain { handBack() }
            requestStop()
        default: try await kill(delivery)
        }
    }

    /// Called when the node is asked to stop (`node.stop`): shuts the node down (draining, unless handed back).
    func onStopRequest(_ handler: @escaping @Sendable () -> Void) { stopRequested.withLock { $0 = handler } }

    /// Shuts the node down through the handler of ``onStopRequest(_:)``.
    func requestStop() { stopRequested.withLock { $0 }?() }

    /// `instance.log-request`: reads a piece of an attempt's stdout or stderr (running or finished) and answers on
    /// the requester's reply queue.
    func serveLog(_ delivery: Delivery) async throws {
        let request = try delivery.decode(LogRequest.self).payload
        let attempt = directory(request.jobID, request.taskName, request.instanceIndex, request.attempt)
        let key = Self.key(request.jobID, request.taskName, request.instanceIndex, request.attempt)
        let running = running.withLock { $0.children[key] != nil }
        var chunk = LogChunk(
            requestID: request.requestID, found: FileManager.default.fileExists(atPath: attempt.path), data: [],
            offset: 0, size: 0, running: running)
        let file = attempt.appendingPathComponent(request.stream == "stderr" ? "stderr.log" : "stdout.log")
        if let handle = Self.openWithoutFollowing(file) {
            defer { try? handle.close() }
            let size = Int(try handle.seekToEnd())
            let start = request.offset < 0 ? max(0, size + request.offset) : min(request.offset, size)
            try handle.seek(toOffset: UInt64(start))
            let data = try handle.read(upToCount: max(0, min(request.limit, 1 << 20, size - start))) ?? Data()
            chunk.data = Array(data)
            chunk.offset = start
            chunk.size = size
        }
        try await amqp.publish(
            try OutgoingMessage(
                exchange: Topology.repliesExchange, routingKey: request.replyTo, payload: chunk, persistent: false))
    }

    /// `instance.kill`: stops the attempt's whole process group if it runs here (SIGTERM, SIGKILL after 10 s), or
    /// makes sure it never starts here.
    @Sendable func kill(_ delivery: Delivery) async throws {
        let kill = try delivery.decode(InstanceKill.self).payload
        let key = Self.key(kill.jobID, kill.taskName, kill.instanceIndex, kill.attempt)
        if clearances.decide(key, .refused(kill.reason)) { return }
        let child = running.withLock { running -> ChildProcess? in
            if running.launching[key] != nil { running.launching[key] = .some(kill.reason) }
            return running.children[key]
        }
        guard let child else {
            // Not running here: should its run message come to this node later, it is skipped.
            _ = seen.withLock { $0.insert(key) }
            return
        }
        logger.info(
            "instance killed",
            metadata: [
                "job.id": "\(kill.jobID)", "task.name": "\(kill.taskName)", "instance.index": "\(kill.instanceIndex)",
                "reason": "\(kill.reason)",
            ])
        await child.terminate(grace: .seconds(10))
    }

    /// `file` opened for reading, unless it is a symbolic link (or missing): an attempt's logs are read as the
    /// executor's user, and a link there must not lead it to a node file.
    static func openWithoutFollowing(_ file: URL) -> FileHandle? {
        let descriptor = open(file.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { return nil }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            close(descriptor)
            return nil
        }
        return FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
    }

    /// The last `count` bytes of a file, or nil when it cannot be read.
    static func tail(of file: URL, count: Int = 2048) -> [UInt8]? {
        guard let handle = openWithoutFollowing(file) else { return nil }
        defer { try? handle.close() }
        guard let size = try? handle.seekToEnd() else { return nil }
        try? handle.seek(toOffset: size > UInt64(count) ? size - UInt64(count) : 0)
        return (try? handle.readToEnd()).map { Array($0) } ?? []
    }
}

/// A bounded set of recent keys: the oldest are forgotten first.
struct RecentKeys: ~Copyable {
    let capacity: Int
    private var keys: Set<String> = []
    private var order: [String] = []
    private var start = 0

    init(capacity: Int) { self.capacity = capacity }

    /// Adds `key`; false when it was there already.
    mutating func insert(_ key: String) -> Bool {
        guard keys.insert(key).inserted else { return false }
        order.append(key)
        if keys.count > capacity {
            keys.remove(order[start])
            start += 1
            if start > capacity {
                order.removeFirst(start)
                start = 0
            }
        }
        return true
    }

    mutating func remove(_ key: String) { keys.remove(key) }
}
