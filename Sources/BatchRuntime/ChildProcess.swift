import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process started with `posix_spawn` in a process group of its own, so that it and everything it starts
/// can be signalled together; its exit is awaited on a thread of its own (`waitpid` blocks).
public final class ChildProcess: Sendable {
    public let pid: pid_t
    private let exit: Task<Termination, Never>
    /// Set once the child has been reaped: from then on its pid (and process group id) may belong to another
    /// process, and signalling it could hit a stranger.
    private let reaped: Flag
    /// The child is a wrapper (a sandbox) that ends with what it runs: ``terminate(grace:)`` sends SIGTERM to the
    /// rest of its group, not to it, so that they get their grace (a sandbox that died first would take them with
    /// it at once).
    private let wrapper: Bool

    /// How a child ended.
    public enum Termination: Sendable, Hashable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)

        /// The shell's convention: the exit status, or 128 + the signal number.
        public var code: Int {
            switch self {
            case .exited(let status): Int(status)
            case .signalled(let signal): 128 + Int(signal)
            }
        }

        public var description: String {
            switch self {
            case .exited(let status): "exited with code \(status)"
            case .signalled(let signal): "killed by signal \(signal)"
            }
        }
    }

    public struct SpawnError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts `executable` with `arguments` and exactly `environment`, in `directory`, with stdin from /dev/null and
    /// stdout/stderr appended to the given files (or inherited when nil). `wrapper`: `executable` is a sandbox that
    /// runs the real command and ends with it.
    public init(
        executable: String, arguments: [String], environment: [String: String], directory: String? = nil,
        stdout: String? = nil, stderr: String? = nil, wrapper: Bool = false
    ) throws {
        // Spawned from one long-lived thread: a child that asks to die with its parent (bwrap's --die-with-parent,
        // PR_SET_PDEATHSIG) dies when the thread that spawned it ends, and pool threads end when idle.
        let pid = try SpawnThread.shared.run {
            Result {
                try Self.spawn(
                    executable: executable, arguments: arguments, environment: environment, directory: directory,
                    stdout: stdout, stderr: stderr)
            }
        }.get()
        self.pid = pid
        self.wrapper = wrapper
        let child = pid
        let reaped = Flag()
        self.reaped = reaped
        self.exit = Task.detached {
            await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    var status: Int32 = 0
                    while waitpid(child, &status, 0) == -1 && errno == EINTR {}
                    reaped.value.store(true, ordering: .sequentiallyConsistent)
                    let signal = status & 0x7f
                    let termination: Termination = signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
                    continuation.resume(returning: termination)
                }
            }
        }
    }

    private static func spawn(
        executable: String, arguments: [String], environment: [String: String], directory: String?,
        stdout: String?, stderr: String?
    ) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let stdout {
            posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        }
        if let stderr {
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        }
        // Nothing of the parent's beyond stdin, stdout and stderr: its sockets (the broker, the database) and files
        // are no business of an instance.
        guard let addCloseFrom = Self.addCloseFrom else {
            throw SpawnError(description: "this C library cannot close a child's inherited descriptors")
        }
        _ = addCloseFrom(&actions, 3)
        if let directory {
            guard let addChdir = Self.addChdir else {
                throw SpawnError(description: "this C library cannot set a child's working directory")
            }
            _ = addChdir(&actions, directory)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaultSignals = sigset_t()
        sigfillset(&defaultSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else {
            throw SpawnError(description: "cannot start \(executable): \(String(cString: strerror(status)))")
        }
        return pid
    }

    /// glibc's `posix_spawn_file_actions_addchdir_np` (2.29+), which its headers hide from Swift.
    private static let addChdir:
        (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32)? = {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np")
            else {
                return nil
            }
            return unsafeBitCast(
                symbol,
                to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32)
                    .self)
        }()

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which its headers hide from Swift.
    private static let addCloseFrom:
        (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
            else {
                return nil
            }
            return unsafeBitCast(
                symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
        }()

    /// Waits for the child to end.
    public func wait() async -> Termination { await exit.value }

    /// Sends `signal` to the child's whole process group, unless the child has been reaped: its pid may have been
    /// given to another process group since (a late SIGKILL once killed an unrelated instance that way).
    public func signalGroup(_ signal: Int32) {
        guard !reaped.value.load(ordering: .sequentiallyConsistent) else { return }
        kill(-pid, signal)
    }

    /// The processes of the child's group, from /proc (field 5 of `stat` is the process group).
    private func groupMembers() -> [pid_t] {
        guard !reaped.value.load(ordering: .sequentiallyConsistent),
            let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc")
        else { return [] }
        return entries.compactMap { entry -> pid_t? in
            guard let member = pid_t(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && pid_t(fields[2]) == pid ? member : nil
        }
    }

    /// SIGTERM to the group (but a wrapper), then SIGKILL to the group after `grace` if it is still there; returns
    /// how it ended.
    @discardableResult
    public func terminate(grace: Duration = .seconds(5)) async -> Termination {
        if wrapper {
            for member in groupMembers() where member != pid { kill(member, SIGTERM) }
        } else {
            signalGroup(SIGTERM)
        }
        let killer = Task {
            try await Task.sleep(for: grace)
            signalGroup(SIGKILL)
        }
        let termination = await wait()
        killer.cancel()
        return termination
    }
}

/// A flag shared between a child and the thread that reaps it.
private final class Flag: Sendable {
    let value = Atomic<Bool>(false)
}

/// One thread that lives as long as the process and starts every child (see ``ChildProcess/init``).
final class SpawnThread: @unchecked Sendable {
    static let shared = SpawnThread()
    private let condition = NSCondition()
    private var work: [() -> Void] = []

    private init() {
        let thread = Thread { [self] in
            while true {
                condition.lock()
                while work.isEmpty { condition.wait() }
                let job = work.removeFirst()
                condition.unlock()
                job()
            }
        }
        thread.name = "batch-spawner"
        thread.start()
    }

    /// Runs `body` on the spawning thread and returns its result.
    func run<T>(_ body: @escaping () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox<T>()
        condition.lock()
        work.append {
            box.value = body()
            done.signal()
        }
        condition.signal()
        condition.unlock()
        done.wait()
        return box.value!
    }
}

private final class ResultBox<T>: @unchecked Sendable {
    var value: T?
}
