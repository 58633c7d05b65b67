import BatchCore
import BatchRuntime
import Foundation
import Synchronization

/// How instances are isolated from each other and from the node.
///
/// With bubblewrap (Debian's `bubblewrap`), each instance gets a new root: the system directories read-only, a
/// private `/tmp`, its own work dir, and each storage mapping's path bind-mounted from its work dir, so absolute
/// paths work as on a dedicated machine and no instance sees another's files. Without it (no bwrap, no user
/// namespaces, or turned off for trusted work), instances run directly on the node, and two instances that map the
/// same path never run at once.
enum Sandbox: Sendable, Equatable {
    case bubblewrap(path: String)
    case none(reason: String)

    static let bwrapCandidates = ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]

    /// Finds bubblewrap and checks that it can make a sandbox here (it needs user namespaces, or root).
    static func probe(enabled: Bool) async -> Sandbox {
        guard enabled else { return .none(reason: "the sandbox is turned off for this node") }
        guard let bwrap = bwrapCandidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return .none(reason: "bubblewrap (bwrap) is not installed")
        }
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("batch-sandbox-probe-\(getpid())")
        try? FileManager.default.createDirectory(at: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: probe) }
        let log = probe.appendingPathComponent("probe.log").path
        do {
            let arguments =
                Sandbox.bubblewrap(path: bwrap).arguments(
                    attemptDirectory: probe, workDirectory: probe, mounts: []) + ["/bin/true"]
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

    /// bwrap's arguments (before the command) for one attempt: `mounts` maps paths inside the instance to
    /// directories of its work dir.
    func arguments(
        attemptDirectory: URL, workDirectory: URL, mounts: [(inside: String, host: URL)], shared: [String] = []
    ) -> [String] {
        var arguments = [
            "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
        ]
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
        for path in shared where files.fileExists(atPath: path) { arguments += ["--bind", path, path] }
        arguments += ["--bind", attemptDirectory.path, attemptDirectory.path]
        for mount in mounts { arguments += ["--bind", mount.host.path, mount.inside] }
        arguments += ["--chdir", workDirectory.path, "--"]
        return arguments
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
    /// variables, and the command through `/bin/sh -c`. `DockerRunOption` goes before the image, split on spaces.
    static func arguments(
        docker: Docker, name: String, attempt: URL, work: URL, environment: [String: String],
        mounts: [(inside: String, host: URL)], command: String
    ) -> [String] {
        var arguments = ["run", "--rm", "--name", name, "-v", "\(attempt.path):\(attempt.path)", "-w", work.path]
        for mount in mounts { arguments += ["-v", "\(mount.host.path):\(mount.inside)"] }
        for name in environment.keys.sorted() where name != "PATH" { arguments += ["-e", name] }
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
