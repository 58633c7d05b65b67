import Synchronization

/// The node's slots: an attempt takes one before it starts and gives it back when it has ended. A run message can
/// carry several attempts (``InstanceRuns``), so the messages in hand can hold more attempts than the node runs at
/// once; those wait here, first come first served.
final class Slots: Sendable {
    private struct State {
        var free: Int
        var waiters: [(id: Int, continuation: CheckedContinuation<Bool, Never>)] = []
        var nextID = 0
    }

    private let state: Mutex<State>

    init(_ count: Int) { state = Mutex(State(free: count)) }

    /// The slots free now.
    var free: Int { state.withLock { $0.free } }

    /// Takes a free slot if there is one that nobody waits for.
    func takeIfFree() -> Bool {
        state.withLock { state in
            guard state.free > 0, state.waiters.isEmpty else { return false }
            state.free -= 1
            return true
        }
    }

    /// Takes a free slot, waiting for one if none is; false when the task was cancelled while it waited.
    func acquire() async -> Bool {
        takeIfFree() ? true : await take()
    }

    /// Waits for a free slot and takes it; false when the task was cancelled while it waited.
    func take() async -> Bool {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let taken = state.withLock { state in
                    if Task.isCancelled { return false as Bool? }
                    if state.free > 0, state.waiters.isEmpty {
                        state.free -= 1
                        return true
                    }
                    state.waiters.append((id, continuation))
                    return nil
                }
                if let taken { continuation.resume(returning: taken) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0) }
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Gives a slot back: to the first waiter, if any.
    func give() {
        let waiter = state.withLock { state in
            if state.waiters.isEmpty {
                state.free += 1
                return nil as CheckedContinuation<Bool, Never>?
            }
            return state.waiters.removeFirst().continuation
        }
        waiter?.resume(returning: true)
    }
}

/// A slot of ``Slots`` an attempt may hold, given back at most once: when the attempt no longer needs it, or at the
/// latest when it ends (`defer { permit.release() }`).
struct Permit {
    let slots: Slots
    private(set) var held: Bool

    /// Gives the slot back, if held.
    mutating func release() {
        guard held else { return }
        held = false
        slots.give()
    }
}

/// Settles a run message once each of its attempts has: acked when every one started (or is not to run here),
/// requeued when one could not be announced.
final class Settlement: Sendable {
    private let state: Mutex<(left: Int, announced: Bool)>
    private let done: @Sendable (_ allAnnounced: Bool) -> Void

    init(count: Int, done: @escaping @Sendable (_ allAnnounced: Bool) -> Void) {
        state = Mutex((count, true))
        self.done = done
    }

    /// One attempt is settled: `announced` false when its start could not be announced.
    func settle(announced: Bool) {
        let finished: Bool? = state.withLock { state in
            state.left -= 1
            state.announced = state.announced && announced
            return state.left == 0 ? state.announced : nil
        }
        if let finished { done(finished) }
    }
}
