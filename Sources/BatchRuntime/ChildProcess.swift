import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process started with `posix_spawn` in a process group of its own, so that it and everything it starts
/// can be signalled together. One long-lived thread starts every child and reaps it (``ProcessThread``).
public final class ChildProcess: Sendable {
    public let pid: pid_t
    /// The child's end, once it has been reaped: from then on its pid (and process group id) may belong to another
    /// process, and signalling it could hit a stranger.
    private let ending: Ending
    /// The child is a wrapper (a sandbox) that ends with what it runs: ``terminate(grace:)`` sends SIGTERM to the
    /// rest of its group, not to it, so that they get their grace (a sandbox that died first would take them with
    /// it at once).
    private let wrapper: Bool
    /// Every process that belongs to the child (its cgroup's), when its processes may leave its process group (a
    /// sandbox that gives its command a session of its own): ``terminate(grace:)`` signals these instead.
    private let members: (@Sendable () -> [pid_t])?

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

        /// A `waitpid` status.
        public init(status: Int32) {
            let signal = status & 0x7f
            self = signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
        }
    }

    public struct SpawnError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts `executable` with `arguments` and exactly `environment`, in `directory`, with stdin from /dev/null and
    /// stdout/stderr appended to the given files (or inherited when nil). `wrapper`: `executable` is a sandbox that
    /// runs the real command and ends with it. Holds the calling thread while the child starts, which
    /// ``start(executable:arguments:environment:directory:stdout:stderr:wrapper:)`` does not.
    public convenience init(
        executable: String, arguments: [String], environment: [String: String], directory: String? = nil,
        stdout: String? = nil, stderr: String? = nil, wrapper: Bool = false
    ) throws {
        let ending = Ending()
        let pid = try ProcessThread.shared.run {
            Result {
                try Self.spawnAndReap(
                    executable: executable, arguments: arguments, environment: environment, directory: directory,
                    stdout: stdout, stderr: stderr, ending: ending)
            }
        }.get()
        self.init(pid: pid, ending: ending, wrapper: wrapper, members: nil)
    }

    /// Starts a child as ``init(executable:arguments:environment:directory:stdout:stderr:wrapper:)`` does, but the
    /// calling task waits for it to start, not its thread (a node starts hundreds of children a second on a
    /// cooperative pool as wide as its cores). `members` lists every process of the child when they may leave its
    /// process group (its cgroup's). `descriptor3`: what the child reads from descriptor 3 (a memory file), for what
    /// must not be on its command line, which every process of the machine may read.
    /// `descriptors`: descriptors of the caller's that the child gets as its descriptors 3, 4, … (instead of
    /// `descriptor3`).
    public static func start(
        executable: String, arguments: [String], environment: [String: String], directory: String? = nil,
        stdout: String? = nil, stderr: String? = nil, descriptor3: [UInt8]? = nil, descriptors: [Int32] = [],
        wrapper: Bool = false, members: (@Sendable () -> [pid_t])? = nil
    ) async throws -> ChildProcess {
        let ending = Ending()
        let pid = try await withCheckedThrowingContinuation { continuation in
            ProcessThread.shared.submit {
                continuation.resume(
                    with: Result {
                        try Self.spawnAndReap(
                            executable: executable, arguments: arguments, environment: environment,
                            directory: directory, stdout: stdout, stderr: stderr, descriptor3: descriptor3,
                            descriptors: descriptors, ending: ending)
                    })
            }
        }
        return ChildProcess(pid: pid, ending: ending, wrapper: wrapper, members: members)
    }

    /// Starts a child as ``start(executable:arguments:environment:directory:stdout:stderr:descriptor3:descriptors:wrapper:members:)``
    /// does, but from the calling thread, so in the network namespace the process started in, not the one
    /// ``isolateNetwork()`` made for children (a user-mode network stack for that namespace runs there). It is reaped
    /// as every child is; it does not die with its parent on its own.
    public static func startInProcessNetwork(
        executable: String, arguments: [String], environment: [String: String], stdout: String? = nil,
        stderr: String? = nil, descriptors: [Int32] = []
    ) throws -> ChildProcess {
        let ending = Ending()
        let pid = try spawn(
            executable: executable, arguments: arguments, environment: environment, directory: nil, stdout: stdout,
            stderr: stderr, descriptor3: nil, descriptors: descriptors)
        // Reaped on the thread, as every child (until then it stays a zombie: its pid is not reused).
        ProcessThread.shared.run { ProcessThread.shared.reap(pid) { ending.end(Termination(status: $0)) } }
        return ChildProcess(pid: pid, ending: ending, wrapper: false, members: nil)
    }

    /// The network namespace children are started in (``isolateNetwork()``'s, once made), as a path for
    /// `setns`-based tools: that of the thread that starts them.
    public static var childrenNetworkNamespace: String {
        let thread = ProcessThread.shared.run { () -> Int32 in Self.threadID?() ?? 0 }
        return "/proc/\(getpid())/task/\(thread)/ns/net"
    }

    /// glibc's `gettid` (2.30+), which its headers hide from Swift.
    private static let threadID: (@convention(c) () -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "gettid") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) () -> Int32).self)
    }()

    /// A process that another process started and reaps (a slot's sandbox): it has no process group of its own to
    /// signal, only `members`, and it ends when `end` is called. Returns the child and `end`.
    public static func adopted(
        members: @escaping @Sendable () -> [pid_t]
    ) -> (child: ChildProcess, end: @Sendable (Termination) -> Void) {
        let ending = Ending()
        return (ChildProcess(pid: 0, ending: ending, wrapper: true, members: members), { ending.end($0) })
    }

    private init(pid: pid_t, ending: Ending, wrapper: Bool, members: (@Sendable () -> [pid_t])?) {
        self.pid = pid
        self.ending = ending
        self.wrapper = wrapper
        self.members = members
    }

    /// Starts the child and watches for its end, on ``ProcessThread``: a child that asks to die with its parent
    /// (bwrap's --die-with-parent, PR_SET_PDEATHSIG) dies when the thread that started it ends, and pool threads end
    /// when idle. `ending` hears how it ended once it is reaped.
    private static func spawnAndReap(
        executable: String, arguments: [String], environment: [String: String], directory: String?,
        stdout: String?, stderr: String?, descriptor3: [UInt8]? = nil, descriptors: [Int32] = [], ending: Ending
    ) throws -> pid_t {
        let pid = try spawn(
            executable: executable, arguments: arguments, environment: environment, directory: directory,
            stdout: stdout, stderr: stderr, descriptor3: descriptor3, descriptors: descriptors)
        ProcessThread.shared.reap(pid) { ending.end(Termination(status: $0)) }
        return pid
    }

    private static func spawn(
        executable: String, arguments: [String], environment: [String: String], directory: String?,
        stdout: String?, stderr: String?, descriptor3: [UInt8]?, descriptors: [Int32] = []
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
        // Descriptor 3, when given: a memory file (no name on any file system) read from its start. The parent's
        // copy goes once the child has it.
        var memory: Int32 = -1
        defer { if memory >= 0 { close(memory) } }
        if let descriptor3 {
            memory = Self.memfdCreate?("batch-child", 0) ?? -1
            guard memory >= 0 else {
                throw SpawnError(description: "cannot make a memory file: \(String(cString: strerror(errno)))")
            }
            var written = 0
            while written < descriptor3.count {
                let count = descriptor3[written...].withUnsafeBytes { write(memory, $0.baseAddress, $0.count) }
                guard count > 0 else {
                    throw SpawnError(description: "cannot fill a memory file: \(String(cString: strerror(errno)))")
                }
                written += count
            }
            lseek(memory, 0, SEEK_SET)
            posix_spawn_file_actions_adddup2(&actions, memory, 3)
        } else {
            for (offset, descriptor) in descriptors.enumerated() {
                posix_spawn_file_actions_adddup2(&actions, descriptor, 3 + Int32(offset))
            }
        }
        // Nothing of the parent's beyond stdin, stdout and stderr (and descriptor 3 when given): its sockets (the
        // broker, the database) and files are no business of an instance.
        guard let addCloseFrom = Self.addCloseFrom else {
            throw SpawnError(description: "this C library cannot close a child's inherited descriptors")
        }
        _ = addCloseFrom(&actions, descriptor3 == nil ? 3 + Int32(descriptors.count) : 4)
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

    /// glibc's `memfd_create` (2.27+), which its headers hide from Swift.
    private static let memfdCreate: (@convention(c) (UnsafePointer<CChar>, UInt32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafePointer<CChar>, UInt32) -> Int32).self)
    }()

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

    /// Gives every child started from now on a network namespace of its own, shared by them all: the thread that
    /// starts them leaves the process's (`unshare(CLONE_NEWNET)` applies to the calling thread), and its loopback is
    /// brought up. Nothing started after it reaches the host's network, its loopback included; the calling process's
    /// own sockets are untouched. Needs `CAP_SYS_ADMIN`.
    public static func isolateNetwork() throws {
        guard let unshare = Self.unshare else {
            throw SpawnError(description: "this C library has no unshare(2)")
        }
        let failure = ProcessThread.shared.run { () -> Int32 in unshare(Self.newNetworkNamespace) == 0 ? 0 : errno }
        guard failure == 0 else {
            throw SpawnError(description: "cannot make a network namespace: \(String(cString: strerror(failure)))")
        }
        let up = ProcessThread.shared.run { () -> Bool in
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var request = ifreq()
            withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { name in
                for (index, byte) in "lo".utf8.enumerated() { name[index] = byte }
            }
            guard ioctl(fd, UInt(SIOCGIFFLAGS), &request) == 0 else { return false }
            request.ifr_ifru.ifru_flags |= Int16(IFF_UP)
            return ioctl(fd, UInt(SIOCSIFFLAGS), &request) == 0
        }
        guard up else {
            throw SpawnError(description: "cannot bring up the loopback of the instances' network namespace")
        }
    }

    /// `CLONE_NEWNET`, which glibc's headers hide from Swift.
    private static let newNetworkNamespace: Int32 = 0x4000_0000

    /// glibc's `unshare`, which its headers hide from Swift.
    private static let unshare: (@convention(c) (Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "unshare") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Int32).self)
    }()

    /// Waits for the child to end.
    public func wait() async -> Termination { await ending.wait() }

    /// Sends `signal` to the child's whole process group, unless the child has been reaped: its pid may have been
    /// given to another process group since (a late SIGKILL once killed an unrelated instance that way).
    public func signalGroup(_ signal: Int32) {
        guard pid > 0, !ending.ended else { return }
        kill(-pid, signal)
    }

    /// The processes of the child: its cgroup's when it has one, else its group's, from /proc (field 5 of `stat` is
    /// the process group).
    private func groupMembers() -> [pid_t] {
        if let members { return members() }
        guard !ending.ended,
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
            if let members { for member in members() { kill(member, SIGKILL) } }
        }
        let termination = await wait()
        killer.cancel()
        return termination
    }
}

/// A child's end, for any number of waiters: set once, by the thread that reaps it.
private final class Ending: Sendable {
    private let state = Mutex<
        (termination: ChildProcess.Termination?, waiters: [CheckedContinuation<ChildProcess.Termination, Never>])
    >((nil, []))

    var ended: Bool { state.withLock { $0.termination != nil } }

    func end(_ termination: ChildProcess.Termination) {
        let waiters = state.withLock { state in
            state.termination = termination
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: termination) }
    }

    func wait() async -> ChildProcess.Termination {
        await withCheckedContinuation { waiter in
            let termination = state.withLock { state in
                if state.termination == nil { state.waiters.append(waiter) }
                return state.termination
            }
            if let termination { waiter.resume(returning: termination) }
        }
    }
}

/// One thread that lives as long as the process, starts every child (see ``ChildProcess/init``) and reaps each as
/// it ends: it waits in `poll` on a pidfd of each child, and on a pipe that brings it work. A thread per child
/// blocked in `waitpid` cost a thread's creation, its stack and two switches for every instance a node ran.
final class ProcessThread: @unchecked Sendable {
    static let shared = ProcessThread()
    /// Guards `work` and `woken`: work for the thread, and whether it has been woken for it since it last looked.
    private let lock = NSLock()
    private var work: [() -> Void] = []
    private var woken = false
    /// The thread's end of the wake-up pipe, and the caller's.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// The children being watched, each by its pidfd: touched on the thread only.
    private var watched: [(pid: pid_t, pidfd: Int32, ended: (Int32) -> Void)] = []

    private init() {
        var ends: [Int32] = [-1, -1]
        precondition(pipe(&ends) == 0, "no pipe for the thread that starts and reaps children: \(errno)")
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        (wakeRead, wakeWrite) = (ends[0], ends[1])
        let thread = Thread { [self] in
            while true { turn() }
        }
        thread.name = "batch-processes"
        thread.start()
    }

    /// Waits for work or a child's end, then does the work and reaps the children that ended.
    private func turn() {
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        fds += watched.map { pollfd(fd: $0.pidfd, events: Int16(POLLIN), revents: 0) }
        guard poll(&fds, nfds_t(fds.count), -1) > 0 else { return }
        // Reaped first (the work may watch more children than `fds` has), back to front, so that the indices of those
        // still to look at stay put (`fds` is one longer).
        for index in watched.indices.reversed() where fds[index + 1].revents != 0 {
            let child = watched[index]
            var status: Int32 = 0
            var reaped = waitpid(child.pid, &status, WNOHANG)
            while reaped == -1 && errno == EINTR { reaped = waitpid(child.pid, &status, WNOHANG) }
            guard reaped != 0 else { continue }
            close(child.pidfd)
            watched.remove(at: index)
            child.ended(status)
        }
        if fds[0].revents != 0 {
            var bytes = [UInt8](repeating: 0, count: 64)
            while read(wakeRead, &bytes, bytes.count) > 0 {}
            let jobs = lock.withLock {
                defer { (work, woken) = ([], false) }
                return work
            }
            for job in jobs { job() }
        }
    }

    /// Runs `body` on the thread and returns its result.
    func run<T>(_ body: @escaping () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox<T>()
        submit {
            box.value = body()
            done.signal()
        }
        done.wait()
        return box.value!
    }

    /// Runs `job` on the thread, soon.
    func submit(_ job: @escaping () -> Void) {
        let wake = lock.withLock {
            work.append(job)
            defer { woken = true }
            return !woken
        }
        if wake {
            var byte: UInt8 = 1
            _ = write(wakeWrite, &byte, 1)
        }
    }

    /// Calls `ended` with the `waitpid` status of child `pid` once it has ended and been reaped. On the thread only,
    /// right after the child's start (the pid is the child's until it is reaped). Without pidfds (a kernel before
    /// 5.3, a C library before 2.36) a thread of its own waits for it.
    func reap(_ pid: pid_t, ended: @escaping @Sendable (Int32) -> Void) {
        if let open = Self.pidfdOpen {
            let pidfd = open(pid, 0)
            if pidfd >= 0 {
                watched.append((pid, pidfd, ended))
                return
            }
        }
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            ended(status)
        }
    }

    /// glibc's `pidfd_open` (2.36+), which its headers do not show Swift.
    private static let pidfdOpen: (@convention(c) (pid_t, UInt32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pidfd_open") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (pid_t, UInt32) -> Int32).self)
    }()
}

private final class ResultBox<T>: @unchecked Sendable {
    var value: T?
}
