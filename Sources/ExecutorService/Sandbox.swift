import BatchCore
import BatchRuntime
import Foundation
import Synchronization

/// How instances are isolated from each other and from the node.
///
/// With the node's sandbox (`batch-sandbox`, built with the executor), each slot has a process that holds the slot's
/// PID, IPC and UTS namespaces for the node's life and starts the slot's instances one after another
/// (``SlotSandbox``). Each instance gets a mount namespace of its own with a new root: the system directories
/// read-only, a private `/tmp`, `/var/tmp`, `/dev` and `/dev/shm`, its own work dir, and each storage mapping's path
/// bound from its work dir, so absolute paths work as on a dedicated machine and no instance sees another's files. It
/// sees only its slot's processes, runs in the network namespace the node made for its instances (no network but a
/// loopback of theirs: the node's services, the broker and the database are out of reach;
/// ``ChildProcess/isolateNetwork()``), in a session of its own, as the node's unprivileged user with no capability
/// and no way to gain one. Whatever it leaves running is killed before the slot starts another. Turned off by the
/// operator for trusted work, instances run directly on the node, and two instances that map the same path never run
/// at once.
enum Sandbox: Sendable, Equatable {
    case slots(helper: String)
    case none(reason: String)

    /// `batch-sandbox` beside the executor's own binary.
    static var bundledHelper: String {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent("batch-sandbox").path
    }

    /// Finds the helper and checks that it can make a sandbox here and run a command in it as `user` (it needs root);
    /// `.none` with why not otherwise.
    static func probe(enabled: Bool, helper: String? = nil, user: InstanceUser?, base: URL) async -> Sandbox {
        guard enabled else { return .none(reason: "the sandbox is turned off for this node") }
        let helper = helper ?? bundledHelper
        guard FileManager.default.isExecutableFile(atPath: helper) else {
            return .none(reason: "the sandbox helper (\(helper)) is not installed")
        }
        guard let user else {
            return .none(reason: "sandboxed instances need an unprivileged user to run as (--run-as)")
        }
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("batch-sandbox-probe-\(getpid())")
        try? FileManager.default.createDirectory(at: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: probe) }
        let sandbox = Sandbox.slots(helper: helper)
        do {
            let slot = try await SlotSandbox.start(helper: helper)
            defer { slot.stop() }
            let request = sandbox.request(
                base: base, attemptDirectory: probe, workDirectory: probe, mounts: [], user: user, command: "true",
                environment: ["PATH": "/usr/bin:/bin"])
            let termination = try await slot.launch(request, members: { [] }).wait()
            guard termination == .exited(0) else {
                return .none(reason: "the sandbox helper cannot run a command here (\(termination))")
            }
        } catch {
            return .none(reason: "the sandbox helper cannot make a sandbox here: \(error)")
        }
        return sandbox
    }

    /// What the slot's sandbox is asked for one attempt (``SlotSandbox``'s request): the root built on `base` (an
    /// empty directory of the node's), `mounts` mapping paths inside the instance to directories of its work dir,
    /// `shared` directories of the node at the same path, `command` run through `/bin/sh -c` in `workDirectory` as
    /// `user` with exactly `environment`, its stdout and stderr appended to those files, in `cgroup`, and no file
    /// larger than `fileBytes`.
    func request(
        base: URL, attemptDirectory: URL, workDirectory: URL, mounts: [(inside: String, host: URL)],
        shared: [String] = [], user: InstanceUser, command: String, environment: [String: String],
        stdout: URL? = nil, stderr: URL? = nil, cgroup: InstanceCgroup? = nil, fileBytes: Int64? = nil,
        resolvConf: URL? = nil
    ) -> [String] {
        var items = ["base", base.path]
        let files = FileManager.default
        for directory in ["/usr", "/etc", "/opt"] where files.fileExists(atPath: directory) {
            items += ["ro", directory]
        }
        // /bin, /lib and friends are symlinks into /usr on a merged-/usr system, directories on an older one.
        for directory in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            if let target = try? files.destinationOfSymbolicLink(atPath: directory) {
                items += ["link", target, directory]
            } else if files.fileExists(atPath: directory) {
                items += ["ro", directory]
            }
        }
        items += ["tmp", "/tmp", "1777", "tmp", "/var/tmp", "1777"]
        // With egress, names resolve through the network stack's forwarder (the node's own may be out of reach). Bound
        // over the node's file when it is a plain file (a link is never followed for a mount point).
        if let resolvConf,
            (try? files.attributesOfItem(atPath: "/etc/resolv.conf")[.type] as? FileAttributeType) == .typeRegular
        {
            items += ["bind", resolvConf.path, "/etc/resolv.conf"]
        }
        for path in shared where files.fileExists(atPath: path) { items += ["bind", path, path] }
        items += ["bind", attemptDirectory.path, attemptDirectory.path]
        for mount in mounts { items += ["bind", mount.host.path, mount.inside] }
        items += ["cwd", workDirectory.path, "user", String(user.uid), String(user.gid)]
        if let fileBytes { items += ["fsize", String(fileBytes)] }
        if let stdout { items += ["out", stdout.path] }
        if let stderr { items += ["err", stderr.path] }
        for file in cgroup?.procsFiles ?? [] { items += ["cgroup", file] }
        items += ["arg", "/bin/sh", "arg", "-c", "arg", command]
        for name in environment.keys.sorted() { items += ["env", "\(name)=\(environment[name] ?? "")"] }
        return items
    }
}

/// The unprivileged user sandboxed instances run as (`--run-as`, `nobody` by default when the executor is root):
/// the command starts through `setpriv` with that user's ids, no supplementary groups and no capabilities, and the
/// attempt's directories are handed to it. Inside the sandbox it reads what any user of the node may read of the
/// system directories and the shared paths, and writes only its own directories, `/tmp` and what the shared paths
/// let any user write. Unsandboxed instances (trusted work) run as the executor's user.
struct InstanceUser: Sendable, Equatable {
    let name: String
    let uid: uid_t
    let gid: gid_t

    static let setpriv = "/usr/bin/setpriv"

    struct Unusable: Error, CustomStringConvertible {
        var description: String
    }

    /// The user named (or numbered) `spec`; nil for "" (instances run as the executor's own user).
    static func resolve(_ spec: String) throws -> InstanceUser? {
        guard !spec.isEmpty else { return nil }
        guard geteuid() == 0 else {
            throw Unusable(
                description: "--run-as \(spec) needs the executor to run as root (use --run-as \"\" otherwise)")
        }
        guard FileManager.default.isExecutableFile(atPath: setpriv) else {
            throw Unusable(description: "--run-as needs \(setpriv) (util-linux)")
        }
        guard let entry = UInt32(spec).flatMap({ getpwuid($0) }) ?? getpwnam(spec) else {
            throw Unusable(description: "--run-as: no user \(spec) on this node")
        }
        return InstanceUser(
            name: String(cString: entry.pointee.pw_name), uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    /// `command` started as this user.
    func command(_ command: [String]) -> [String] {
        [
            Self.setpriv, "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all",
        ] + command
    }

    /// Gives `directory` and everything in it to this user (links themselves, never what they point to).
    func own(_ directory: URL) {
        let files = FileManager.default
        guard files.fileExists(atPath: directory.path) else { return }
        lchown(directory.path, uid, gid)
        for relative in files.enumerator(atPath: directory.path)?.compactMap({ $0 as? String }) ?? [] {
            lchown(directory.appendingPathComponent(relative).path, uid, gid)
        }
    }
}

/// The node's container runtime, for tasks with a `Docker` image: `docker` or `podman`, whichever is on the PATH.
enum ContainerRuntime {
    static func find() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for name in ["docker", "podman"] {
            for directory in path.split(separator: ":") {
                let candidate = "\(directory)/\(name)"
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            }
        }
        return nil
    }

    /// `run --rm` of the image with the attempt's directory and mappings mounted at the same paths, the task's
    /// variables from `environmentFile` (never the runtime's own environment), and the command through `/bin/sh -c`:
    /// no network, no capabilities, no new privileges, as `user`, within `limits`. `DockerRunOption` goes before the
    /// image, split on spaces, once ``Isolation/dockerRunOptionRefusal(_:)`` has allowed it.
    static func arguments(
        docker: Docker, name: String, attempt: URL, work: URL, environmentFile: URL,
        mounts: [(inside: String, host: URL)], command: String, user: InstanceUser?, limits: InstanceLimits
    ) -> [String] {
        var arguments = ["run", "--rm", "--name", name, "-v", "\(attempt.path):\(attempt.path)", "-w", work.path]
        for mount in mounts { arguments += ["-v", "\(mount.host.path):\(mount.inside)"] }
        arguments += ["--env-file", environmentFile.path, "--network", "none", "--cap-drop", "ALL"]
        arguments += ["--security-opt", "no-new-privileges", "--memory", String(limits.memoryBytes)]
        arguments += ["--memory-swap", String(limits.memoryBytes), "--pids-limit", String(limits.pids)]
        arguments += ["--cpu-shares", String(limits.cpuShares)]
        if let user { arguments += ["--user", "\(user.uid):\(user.gid)"] }
        arguments += (docker.dockerRunOption ?? "").split(separator: " ").map(String.init)
        let image = [docker.server, docker.image].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: "/")
        arguments += [image, "/bin/sh", "-c", command]
        return arguments
    }
}

/// The paths unsandboxed instances map, held while they run: an instance whose paths overlap a running one's waits
/// until a release lets it take them.
final class PathLocks: Sendable {
    private struct State {
        var held: [String: Int] = [:]
        var waiters: [UUID: CheckedContinuation<Bool, Never>] = [:]
    }
    private let state = Mutex(State())

    private static func overlaps(_ a: String, _ b: String) -> Bool {
        a == b || a.hasPrefix(b.hasSuffix("/") ? b : b + "/") || b.hasPrefix(a.hasSuffix("/") ? a : a + "/")
    }

    /// Takes `paths` when none overlaps a held one; false otherwise.
    private static func take(_ paths: [String], in state: inout State) -> Bool {
        guard !paths.contains(where: { path in state.held.keys.contains { overlaps($0, path) } }) else {
            return false
        }
        for path in paths { state.held[path, default: 0] += 1 }
        return true
    }

    /// Waits until `paths` can be taken, then takes them. Throws `CancellationError` when the task is cancelled
    /// while it waits.
    func lock(_ paths: [String]) async throws {
        while true {
            try Task.checkCancellation()
            let id = UUID()
            let taken = await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                    let acquired = state.withLock { state in
                        if Self.take(paths, in: &state) { return true }
                        state.waiters[id] = continuation
                        return false
                    }
                    if acquired { continuation.resume(returning: true) }
                }
            } onCancel: {
                state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(returning: false)
            }
            if taken { return }
        }
    }

    /// Releases `paths`; every waiter tries again.
    func unlock(_ paths: [String]) {
        let waiters = state.withLock { state in
            for path in paths {
                state.held[path, default: 1] -= 1
                if state.held[path] == 0 { state.held[path] = nil }
            }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: false) }
    }
}
