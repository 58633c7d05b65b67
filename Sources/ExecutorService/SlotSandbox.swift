import BatchRuntime
import Dispatch
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One slot's sandbox: a `batch-sandbox` process (Sources/batch-sandbox) that holds the slot's namespaces and starts
/// its instances one after another, each in a mount namespace and root of its own (``Sandbox/request``). The node
/// talks to it on a socket, its descriptor 3: a request for each instance; "started" (or why not) and "ended" with
/// its status back. The slot is clean again (every process the instance left killed and reaped) before "ended" comes.
///
/// An instance's processes are signalled through its cgroup (``InstanceCgroup/members()``), as before: the sandbox
/// starts them in a session of their own, in the slot's PID namespace, where the node cannot name them otherwise.
final class SlotSandbox: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let socket: Int32
    private let process: ChildProcess
    /// Reads the sandbox's replies as they come. Dispatch sources are thread-safe; Swift does not know it.
    private nonisolated(unsafe) let reader: any DispatchSourceRead
    private let state = Mutex(State())

    private struct State {
        var received: [UInt8] = []
        /// The launch waiting for "started".
        var starting: CheckedContinuation<Result<Void, Failure>, Never>?
        /// Ends the instance that runs now.
        var running: (@Sendable (ChildProcess.Termination) -> Void)?
        var closed = false
    }

    private init(socket: Int32, process: ChildProcess) {
        self.socket = socket
        self.process = process
        reader = DispatchSource.makeReadSource(fileDescriptor: socket, queue: Self.queue)
    }

    /// False once the sandbox has ended or its socket closed: it takes no more instances.
    var isAlive: Bool { !state.withLock { $0.closed } }

    /// Starts a slot's sandbox. It inherits the node's network namespace and dies with the executor.
    static func start(helper: String) async throws -> SlotSandbox {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw Failure(description: "cannot make a socket pair: \(String(cString: strerror(errno)))")
        }
        defer { close(pair[1]) }
        let process: ChildProcess
        do {
            process = try await ChildProcess.start(
                executable: helper, arguments: [], environment: ["PATH": "/usr/bin:/bin"], descriptors: [pair[1]])
        } catch {
            close(pair[0])
            throw error
        }
        let sandbox = SlotSandbox(socket: pair[0], process: process)
        sandbox.reader.setEventHandler { [weak sandbox] in sandbox?.readable() }
        sandbox.reader.setCancelHandler { [socket = pair[0]] in close(socket) }
        sandbox.reader.resume()
        Task { [weak sandbox] in
            _ = await process.wait()
            sandbox?.stop()
        }
        return sandbox
    }

    /// Where every slot's replies are read: they are a few bytes each.
    private static let queue = DispatchQueue(label: "batch.slot-sandboxes")

    /// Starts an instance (`request`, ``Sandbox/request``) and returns it once its command runs; throws why it could
    /// not start. `members` lists its processes (its cgroup's), for signals.
    func launch(_ request: [String], members: @escaping @Sendable () -> [pid_t]) async throws -> ChildProcess {
        let (child, end) = ChildProcess.adopted(members: members)
        let payload: [UInt8] = request.flatMap { item -> [UInt8] in Array(item.utf8) + [0] }
        let count = UInt32(payload.count)
        let frame =
            [UInt8(count & 0xff), UInt8(count >> 8 & 0xff), UInt8(count >> 16 & 0xff), UInt8(count >> 24)]
            + payload
        let started = await withCheckedContinuation {
            (continuation: CheckedContinuation<Result<Void, Failure>, Never>) in
            // Written while the state is held: the socket is closed only once the sandbox is marked closed.
            let refusal = state.withLock { state -> Failure? in
                if state.closed { return Failure(description: "the slot's sandbox has ended") }
                if state.starting != nil || state.running != nil {
                    return Failure(description: "the slot's sandbox is busy")
                }
                guard Self.write(frame, to: socket) else {
                    return Failure(
                        description: "the slot's sandbox does not listen: \(String(cString: strerror(errno)))")
                }
                state.starting = continuation
                state.running = end
                return nil
            }
            if let refusal {
                stop()
                continuation.resume(returning: .failure(refusal))
            }
        }
        try started.get()
        return child
    }

    /// Ends the sandbox: every instance still in it dies with it.
    func stop() {
        let (starting, running) = state.withLock { state in
            state.closed = true
            defer {
                state.starting = nil
                state.running = nil
            }
            return (state.starting, state.running)
        }
        reader.cancel()
        process.signalGroup(SIGKILL)
        starting?.resume(returning: .failure(Failure(description: "the slot's sandbox ended")))
        running?(.signalled(SIGKILL))
    }

    private static func write(_ bytes: [UInt8], to socket: Int32) -> Bool {
        var written = 0
        while written < bytes.count {
            let count = bytes[written...].withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            written += count
        }
        return true
    }

    /// The socket has something: reads it and acts on every whole reply.
    private func readable() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
        guard count > 0 else { return stop() }
        var replies: [String] = []
        state.withLock { state in
            state.received += buffer[..<count]
            while state.received.count >= 4 {
                let length =
                    Int(state.received[0]) | Int(state.received[1]) << 8 | Int(state.received[2]) << 16
                    | Int(state.received[3]) << 24
                guard state.received.count >= 4 + length else { break }
                replies.append(String(decoding: state.received[4..<(4 + length)], as: UTF8.self))
                state.received.removeFirst(4 + length)
            }
        }
        for reply in replies { handle(reply) }
    }

    private func handle(_ reply: String) {
        switch reply.first {
        case "S":
            let starting = state.withLock { state in
                defer { state.starting = nil }
                return state.starting
            }
            starting?.resume(returning: .success(()))
        case "F":
            let starting = state.withLock { state in
                defer {
                    state.starting = nil
                    state.running = nil
                }
                return state.starting
            }
            starting?.resume(returning: .failure(Failure(description: String(reply.dropFirst()))))
        case "E":
            let running = state.withLock { state in
                defer { state.running = nil }
                return state.running
            }
            running?(ChildProcess.Termination(status: Int32(reply.dropFirst()) ?? 0))
        default:
            stop()
        }
    }
}

/// The node's slot sandboxes: an instance takes a free one and gives it back when it has ended. One that ended
/// (killed, crashed) is replaced by a new one.
final class SlotSandboxes: Sendable {
    let helper: String
    private let free = Mutex<[SlotSandbox]>([])

    init(helper: String) { self.helper = helper }

    /// Starts `count` sandboxes ahead of the first instances.
    func prepare(_ count: Int) async throws {
        for _ in 0..<count {
            let sandbox = try await SlotSandbox.start(helper: helper)
            free.withLock { $0.append(sandbox) }
        }
    }

    func take() async throws -> SlotSandbox {
        while let sandbox = free.withLock({ $0.popLast() }) {
            if sandbox.isAlive { return sandbox }
        }
        return try await SlotSandbox.start(helper: helper)
    }

    func giveBack(_ sandbox: SlotSandbox) {
        guard sandbox.isAlive else { return }
        free.withLock { $0.append(sandbox) }
    }
}
