import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A service started by a test: posix_spawn with its output appended to a log file, signalled and reaped with
/// waitpid (Foundation's `Process` may never notice the end of a process whose children outlive it).
public final class ServiceProcess: Sendable {
    public let pid: pid_t
    private let exit = Mutex<Int32?>(nil)

    /// Starts `path` with `arguments` and exactly `environment`, output appended to `log`. It runs in the test
    /// process's working directory: give it absolute paths.
    public init(_ path: String, _ arguments: [String], environment: [String: String], log: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, path, &actions, nil, argv, envp)
        guard status == 0 else {
            throw TestServers.Missing(description: "cannot start \(path): \(String(cString: strerror(status)))")
        }
        self.pid = pid
    }

    /// Whether it still runs (reaping it if it ended).
    public var isRunning: Bool {
        exit.withLock { exit in
            guard exit == nil else { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                exit = status
                return false
            }
            return true
        }
    }

    /// Signals the process, unless it has ended and been reaped: its pid may belong to another process by then (a
    /// late SIGKILL to a reaped executor once killed another test's instance).
    public func signal(_ signal: Int32) {
        exit.withLock { exit in
            guard exit == nil else { return }
            _ = kill(pid, signal)
        }
    }

    /// Waits for it to end; returns its raw wait status.
    @discardableResult
    public func wait() async -> Int32 {
        if let status = exit.withLock({ $0 }) { return status }
        let pid = self.pid
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread { [self] in
                var status: Int32 = 0
                var result: pid_t
                repeat { result = waitpid(pid, &status, 0) } while result == -1 && errno == EINTR
                // ECHILD when `isRunning` reaped it meanwhile: its status is recorded already.
                let final = exit.withLock { exit -> Int32 in
                    if exit == nil && result == pid { exit = status }
                    return exit ?? status
                }
                continuation.resume(returning: final)
            }
        }
    }
}
