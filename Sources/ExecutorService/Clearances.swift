import Synchronization

/// The attempts this node took and claimed (``InstanceReports/accepted``) whose commands wait for the scheduler's
/// word: the second phase of a start. A run message can reach two nodes (a publish repeated after a broker restart,
/// an outbox row sent again after a relay died); the scheduler records the first claim it hears of and clears only
/// that node (`instance.cleared`), and refuses the others (`instance.kill`), so one attempt never runs twice.
///
/// A cleared attempt stays here, held, until it has a slot (``release(_:)``): a kill, a hand-back or a cut-off
/// broker while it waits for one still stops it before its command runs.
final class Clearances: Sendable {
    enum Verdict: Sendable, Equatable {
        /// The scheduler recorded this node's start: run the command.
        case cleared
        /// The scheduler refused the start (another node runs the attempt, or it is over): do nothing.
        case refused(String)
        /// The node stops (handed back, cut off from the broker) before the word came.
        case stopped
    }

    private enum Entry {
        case expected
        case waiting(CheckedContinuation<Verdict, Never>)
        case decided(Verdict)
        /// Cleared, and waiting for a slot.
        case held
    }

    private let entries = Mutex<[String: Entry]>([:])

    /// Notes that `key` will wait, before its start is announced: the word can come before ``wait(for:resend:)``.
    func expect(_ key: String) {
        entries.withLock { $0[key] = .expected }
    }

    /// Waits for the word on `key` (expected earlier), calling `resend` every `interval` until it comes: the
    /// clearance goes to a queue that a broker restart empties, and the scheduler answers each announcement.
    func wait(
        for key: String, every interval: Duration = .seconds(5), resend: @escaping @Sendable () async -> Void
    ) async -> Verdict {
        await withTaskGroup(of: Verdict?.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let decided: Verdict? = self.entries.withLock { entries in
                            if case .decided(let verdict) = entries[key] {
                                entries[key] = verdict == .cleared ? .held : nil
                                return verdict
                            }
                            entries[key] = .waiting(continuation)
                            return nil
                        }
                        if let decided { continuation.resume(returning: decided) }
                    }
                } onCancel: {
                    self.decide(key, .stopped)
                }
            }
            group.addTask {
                while (try? await Task.sleep(for: interval)) != nil { await resend() }
                return nil
            }
            var verdict = Verdict.stopped
            for await case let decided? in group {
                verdict = decided
                break
            }
            group.cancelAll()
            return verdict
        }
    }

    /// Gives the word on `key`; false when no attempt of this node expects it. A refusal or a stop also reaches an
    /// attempt already cleared whose command has not started (it waits for a slot).
    @discardableResult
    func decide(_ key: String, _ verdict: Verdict) -> Bool {
        let continuation: CheckedContinuation<Verdict, Never>?? = entries.withLock { entries in
            switch entries[key] {
            case .expected:
                entries[key] = .decided(verdict)
                return .some(nil)
            case .waiting(let continuation):
                entries[key] = verdict == .cleared ? .held : nil
                return .some(continuation)
            case .held, .decided(.cleared):
                guard verdict != .cleared else { return nil }
                entries[key] = .decided(verdict)
                return .some(nil)
            case .decided, nil:
                return nil
            }
        }
        guard let continuation else { return false }
        continuation?.resume(returning: verdict)
        return true
    }

    /// Lets a cleared attempt that now has its slot go: `.cleared` unless it was refused or stopped meanwhile.
    func release(_ key: String) -> Verdict {
        entries.withLock { entries in
            switch entries.removeValue(forKey: key) {
            case .held: .cleared
            case .decided(let verdict): verdict
            case .expected, .waiting, nil: .stopped
            }
        }
    }

    /// Forgets `key` (its start could not be announced).
    func forget(_ key: String) {
        _ = entries.withLock { $0.removeValue(forKey: key) }
    }

    /// Stops every attempt still waiting (the node hands its work back or is cut off).
    func stopAll() {
        for key in entries.withLock({ Array($0.keys) }) { decide(key, .stopped) }
    }
}
