import BatchCore
import BatchRuntime
import Foundation
import Synchronization

/// How instances are isolated from each other and from the node.
///
/// With bubblewrap (Debian's `bubblewrap`), each instance gets a new root: the system directories read-only, a
/// private `/tmp`, its own work dir, and each storage mapping's path bind-mounted from its work dir, so absolute
/// paths work as on a dedicated machine and no instance sees another's files. It has its own PID, IPC and UTS
/// namespaces, the network namespace the node made for its instances (no network but a loopback of theirs: the
/// node's services, the broker and the database are out of reach; ``ChildProcess/isolateNetwork()``) and a session of
/// its own (no terminal of the node's to push input into). Turned off by the operator for
/// trusted work, instances run directly on the node, and two instances that map the same path never run at once.
enum Sandbox: Sendable, Equatable {
    case bubblewrap(path: String)
    case none(reason: String)

    static let bwrapCandidates = ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]

    /// Finds bubblewrap and checks that it can make a sandbox here (it needs user namespaces, or root); `.none` with
    /// why not otherwise.
    static func probe(enabled: Bool, path: String? = nil) async -> Sandbox {
        guard enabled else { return .none(reason: "the sandbox is turned off for this node") }
        guard
            let bwrap = (path.map { [$0] } ?? bwrapCandidates).first(where: {
                FileManager.default.isExecutableFile(atPath: $0)
            })
        else {
            return .none(reason: "bubblewrap (\(path ?? "bwrap")) is not installed")
        }
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("batch-sandbox-probe-\(getpid())")
        try? FileManager.default.createDirectory(at: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: probe) }
        let log = probe.appendingPathComponent("probe.log").path
        do {
            let arguments =
                Sandbox.bubblewrap(path: bwrap).arguments(
                    attemptDirectory: probe, workDirectory: probe, mounts: []) + ["--", "/bin/true"]
            let child = try ChildProcess(
                executable: bwrap, arguments: arguments, environment: ["PATH": "/usr/bin:/bin"], stdout: log,
                stderr: log)
            let termination = await child.wait()
            guard termination == .exited(0) else {
                let said = (try? String(contentsOfFile: log, encoding: .utf8))?.trimmingCharacters(
                    in: .whitespacesAndNewlines)
                return .none(reason: "bubblewrap cannot make a sandbox here (\(said ?? termination.description))")
            }
        } catch {
            return .none(reason: "bubblewrap cannot be started: \(error)")
        }
        return .bubblewrap(path: bwrap)
    }

    /// bwrap's options (before `--` and the command) for one attempt: `mounts` maps paths inside the instance to
    /// directories of its work dir. With `user`, the command may switch to that user (``InstanceUser/command(_:)``)
    /// and `/tmp` is writable by it. `environment` is the command's whole environment: bubblewrap itself runs with
    /// the executor's own (a task's `LD_PRELOAD` must not reach a process outside the sandbox).
    func arguments(
        attemptDirectory: URL, workDirectory: URL, mounts: [(inside: String, host: URL)], shared: [String] = [],
        user: InstanceUser? = nil, environment: [String: String] = [:]
    ) -> [String] {
        var arguments = [
            "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--proc", "/proc", "--dev", "/dev", "--clearenv",
        ]
        for name in environment.keys.sorted() { arguments += ["--setenv", name, environment[name] ?? ""] }
        if user != nil {
            arguments += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
            arguments += [
                "--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--dir", "/var", "--perms", "1777", "--tmpfs",
                "/var/tmp",
            ]
        } else {
            arguments += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        }
        let files = FileManager.default
        for directory in ["/usr", "/etc", "/opt"] where files.fileExists(atPath: directory) {
            arguments += ["--ro-bind", directory, directory]
        }
        // /bin, /lib and friends are symlinks into /usr on a merged-/usr system, directories on an older one.
        for directory in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            if let target = try? files.destinationOfSymbolicLink(atPath: directory) {
                arguments += ["--symlink", target, directory]
            } else if files.fileExists(atPath: directory) {
                arguments += ["--ro-bind", directory, directory]
            }
        }
        let sharedPaths = shared.filter { files.fileExists(atPath: $0) }
        if user != nil {
            // bwrap makes a bind's missing parents private (0700): the instance's user could not reach its own
            // directories. They are made first, open to all (they hold nothing but the mounts).
            let destinations = sharedPaths + [attemptDirectory.path] + mounts.map(\.inside)
            var parents: Set<String> = []
            for destination in destinations {
                var components = destination.split(separator: "/").map(String.init)
                while components.count > 1 {
                    components.removeLast()
                    parents.insert("/" + components.joined(separator: "/"))
                }
            }
            for parent in parents.subtracting(["/tmp", "/var", "/var/tmp"]).sorted(by: {
                ($0.count, $0) < ($1.count, $1)
            }) {
                arguments += ["--perms", "0755", "--dir", parent]
            }
        }
        for path in sharedPaths { arguments += ["--bind", path, path] }
        arguments += ["--bind", attemptDirectory.path, attemptDirectory.path]
        for mount in mounts { arguments += ["--bind", mount.host.path, mount.inside] }
        arguments += ["--chdir", workDirectory.path]
        return arguments
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
