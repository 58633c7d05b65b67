import Foundation
import Testing

@testable import BatchCore

let t0 = Date(timeIntervalSince1970: 1_800_000_000)
let nodeA: NodeID = "node-aaaaaaaa"
let nodeB: NodeID = "node-bbbbbbbb"

/// One row of the table: an instance in some state, an event, what must follow.
struct InstanceRow: Sendable, CustomTestStringConvertible {
    var name: String
    var start: InstanceLifecycle
    var event: InstanceLifecycle.Event
    var policy = RetryPolicy(maxRetryCount: 0)
    var failedAction = FailedAction.terminate
    var to: ExecutionState
    var actions: [InstanceLifecycle.Action] = []
    var ignored = false
    var testDescription: String { name }
}

extension InstanceLifecycle {
    static let queued = InstanceLifecycle(state: .runnable)
    static func out(_ state: ExecutionState, attempt: Int = 1, node: NodeID? = nodeA) -> InstanceLifecycle {
        InstanceLifecycle(state: state, attempt: attempt, dispatched: true, node: state == .runnable ? nil : node)
    }
}

let legalInstanceTransitions: [InstanceRow] = [
    InstanceRow(name: "submitted, released", start: InstanceLifecycle(), event: .released, to: .runnable),
    InstanceRow(name: "pending, released", start: InstanceLifecycle(state: .pending), event: .released, to: .runnable),
    InstanceRow(
        name: "runnable, dispatched", start: .queued, event: .dispatched(at: t0), to: .runnable,
        actions: [.dispatch(attempt: 1)]),
    InstanceRow(
        name: "dispatched, accepted by a node", start: .out(.runnable), event: .accepted(attempt: 1, node: nodeA),
        to: .starting),
    InstanceRow(
        name: "dispatched, started", start: .out(.runnable), event: .started(attempt: 1, node: nodeA), to: .running,
        actions: [.publish(.taskInstanceRunning)]),
    InstanceRow(
        name: "starting, started", start: .out(.starting), event: .started(attempt: 1, node: nodeA), to: .running,
        actions: [.publish(.taskInstanceRunning)]),
    InstanceRow(
        name: "running, exit 0", start: .out(.running), event: .exited(attempt: 1, exitCode: 0, reason: nil, at: t0),
        to: .succeed, actions: [.publish(.taskInstanceSucceed)]),
    InstanceRow(
        name: "starting, exit 0 (start not seen)", start: .out(.starting),
        event: .exited(attempt: 1, exitCode: 0, reason: nil, at: t0), to: .succeed,
        actions: [.publish(.taskInstanceSucceed)]),
    InstanceRow(
        name: "dispatched, exit 0 (start not seen)", start: .out(.runnable),
        event: .exited(attempt: 1, exitCode: 0, reason: nil, at: t0), to: .succeed,
        actions: [.publish(.taskInstanceSucceed)]),
    InstanceRow(
        name: "running, exit 3, TERMINATE", start: .out(.running),
        event: .exited(attempt: 1, exitCode: 3, reason: nil, at: t0), to: .failed,
        actions: [.publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "running, exit 3, INTERRUPT", start: .out(.running),
        event: .exited(attempt: 1, exitCode: 3, reason: nil, at: t0), failedAction: .interrupt, to: .failedInterrupted,
        actions: [.keepNode(nodeA), .publish(.taskInstanceFailedInterrupted)]),
    InstanceRow(
        name: "running, exit 3, FAST_INTERRUPT", start: .out(.running),
        event: .exited(attempt: 1, exitCode: 3, reason: nil, at: t0), failedAction: .fastInterrupt,
        to: .failedInterrupted,
        actions: [
            .keepNode(nodeA), .publish(.taskInstanceFailedInterrupted),
            .stopTask(reason: "exited with code 3; failed (MaxRetryCount is 0)"),
        ]),
    InstanceRow(
        name: "running, exit 3, retries left", start: .out(.running),
        event: .exited(attempt: 1, exitCode: 3, reason: nil, at: t0), policy: RetryPolicy(maxRetryCount: 2),
        to: .runnable),
    InstanceRow(
        name: "running, exit 137, rule EXIT on 137", start: .out(.running),
        event: .exited(attempt: 1, exitCode: 137, reason: nil, at: t0),
        policy: RetryPolicy(maxRetryCount: 5, rules: [RetryRule(onExitCode: "137", action: "EXIT")]), to: .failed,
        actions: [.publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "running, timed out", start: .out(.running), event: .timedOut(attempt: 1, after: 60, at: t0), to: .failed,
        actions: [.kill(node: nodeA, attempt: 1), .publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "running, timed out, retries left", start: .out(.running),
        event: .timedOut(attempt: 1, after: 60, at: t0), policy: RetryPolicy(maxRetryCount: 1), to: .runnable,
        actions: [.kill(node: nodeA, attempt: 1)]),
    InstanceRow(name: "running, node lost", start: .out(.running), event: .nodeLost(nodeA), to: .runnable),
    InstanceRow(name: "starting, node lost", start: .out(.starting), event: .nodeLost(nodeA), to: .runnable),
    InstanceRow(
        name: "submitted, terminated", start: InstanceLifecycle(), event: .terminated(reason: "job terminated"),
        to: .failed, actions: [.publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "queued, terminated", start: .queued, event: .terminated(reason: "job terminated"), to: .failed,
        actions: [.publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "running, terminated", start: .out(.running), event: .terminated(reason: "job terminated"), to: .failed,
        actions: [.kill(node: nodeA, attempt: 1), .publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "failed and kept, terminated",
        start: InstanceLifecycle(state: .failedInterrupted, attempt: 1, node: nodeA),
        event: .terminated(reason: "released"), to: .failed,
        actions: [.releaseNode(nodeA), .publish(.taskInstanceFailed)]),
    InstanceRow(
        name: "failed, retried", start: InstanceLifecycle(state: .failed, attempt: 2, failures: 2), event: .retried,
        to: .runnable),
    InstanceRow(
        name: "failed and kept, retried",
        start: InstanceLifecycle(state: .failedInterrupted, attempt: 1, failures: 1, node: nodeA), event: .retried,
        to: .runnable, actions: [.releaseNode(nodeA)]),
]

let illegalInstanceEvents: [InstanceRow] = {
    let succeeded = InstanceLifecycle(state: .succeed, attempt: 1, node: nodeA, exitCode: 0)
    var rows: [InstanceRow] = [
        .released, .dispatched(at: t0), .accepted(attempt: 1, node: nodeA), .started(attempt: 1, node: nodeA),
        .exited(attempt: 1, exitCode: 1, reason: nil, at: t0), .timedOut(attempt: 1, after: 1, at: t0),
        .nodeLost(nodeA),
        .terminated(reason: "x"), .retried,
    ].map { InstanceRow(name: "succeeded, \($0)", start: succeeded, event: $0, to: .succeed, ignored: true) }
    rows += [
        InstanceRow(
            name: "running, result of an older attempt", start: .out(.running, attempt: 2),
            event: .exited(attempt: 1, exitCode: 0, reason: nil, at: t0), to: .running, ignored: true),
        InstanceRow(
            name: "running, start of an older attempt", start: .out(.running, attempt: 2),
            event: .started(attempt: 1, node: nodeB), to: .running, ignored: true),
        InstanceRow(
            name: "queued, started without dispatch", start: .queued, event: .started(attempt: 0, node: nodeA),
            to: .runnable, ignored: true),
        InstanceRow(
            name: "queued, exited without dispatch", start: .queued,
            event: .exited(attempt: 0, exitCode: 0, reason: nil, at: t0), to: .runnable, ignored: true),
        InstanceRow(
            name: "dispatched, dispatched again", start: .out(.runnable), event: .dispatched(at: t0), to: .runnable,
            ignored: true),
        InstanceRow(name: "running, released", start: .out(.running), event: .released, to: .running, ignored: true),
        InstanceRow(
            name: "running, accepted", start: .out(.running), event: .accepted(attempt: 1, node: nodeA), to: .running,
            ignored: true),
        InstanceRow(
            name: "running, started again", start: .out(.running), event: .started(attempt: 1, node: nodeA),
            to: .running, ignored: true),
        InstanceRow(
            name: "starting, started on another node", start: .out(.starting),
            event: .started(attempt: 1, node: nodeB), to: .starting, ignored: true),
        InstanceRow(
            name: "starting, accepted by another node", start: .out(.starting),
            event: .accepted(attempt: 1, node: nodeB), to: .starting, ignored: true),
        InstanceRow(
            name: "running, another node lost", start: .out(.running), event: .nodeLost(nodeB), to: .running,
            ignored: true),
        InstanceRow(name: "queued, node lost", start: .queued, event: .nodeLost(nodeA), to: .runnable, ignored: true),
        InstanceRow(
            name: "queued, timed out", start: .out(.runnable), event: .timedOut(attempt: 1, after: 1, at: t0),
            to: .runnable, ignored: true),
        InstanceRow(
            name: "in back-off, dispatched too early",
            start: InstanceLifecycle(state: .runnable, attempt: 1, failures: 1, notBefore: t0.addingTimeInterval(5)),
            event: .dispatched(at: t0), to: .runnable, ignored: true),
        InstanceRow(
            name: "failed, terminated", start: InstanceLifecycle(state: .failed, attempt: 1),
            event: .terminated(reason: "x"), to: .failed, ignored: true),
        InstanceRow(name: "running, retried", start: .out(.running), event: .retried, to: .running, ignored: true),
    ]
    return rows
}()

@Suite("Task instance state machine")
struct InstanceLifecycleTests {
    @Test("every legal transition gives its state and actions", arguments: legalInstanceTransitions)
    func legal(_ row: InstanceRow) {
        var instance = row.start
        let transition = instance.handle(row.event, policy: row.policy, failedAction: row.failedAction)
        #expect(transition.ignored == nil, "\(row.name): \(transition.ignored ?? "")")
        #expect(instance.state == row.to)
        #expect(transition.actions == row.actions)
        checkInvariants(instance, before: row.start, policy: row.policy)
    }

    @Test("illegal and stale events change nothing", arguments: illegalInstanceEvents)
    func illegal(_ row: InstanceRow) {
        var instance = row.start
        let transition = instance.handle(row.event, policy: row.policy, failedAction: row.failedAction)
        #expect(transition.ignored != nil)
        #expect(transition.actions.isEmpty)
        #expect(instance == row.start)
    }

    @Test("retries: back-off doubles, attempts count up, and the last failure is final")
    func retries() {
        var instance = InstanceLifecycle()
        let policy = RetryPolicy(maxRetryCount: 2)
        _ = instance.handle(.released, policy: policy)
        var now = t0
        for attempt in 1...3 {
            #expect(instance.handle(.dispatched(at: now), policy: policy).actions == [.dispatch(attempt: attempt)])
            _ = instance.handle(.started(attempt: attempt, node: nodeA), policy: policy)
            let end = instance.handle(.exited(attempt: attempt, exitCode: 1, reason: nil, at: now), policy: policy)
            if attempt < 3 {
                #expect(instance.state == .runnable)
                #expect(instance.notBefore == now.addingTimeInterval(Double(1 << (attempt - 1))))
                #expect(instance.handle(.dispatched(at: now), policy: policy).ignored == "in retry back-off")
                now = instance.notBefore!
            } else {
                #expect(instance.state == .failed)
                #expect(end.actions == [.publish(.taskInstanceFailed)])
                #expect(instance.reason == "exited with code 1; failed after 3 attempts (MaxRetryCount 2)")
            }
        }
        #expect(instance.failures == 3)
    }

    @Test("a lost node does not count against MaxRetryCount")
    func nodeLossIsFree() {
        var instance = InstanceLifecycle.out(.running)
        _ = instance.handle(.nodeLost(nodeA))
        #expect(instance.failures == 0)
        #expect(instance.handle(.dispatched(at: t0)).actions == [.dispatch(attempt: 2)])
    }

    @Test("random event sequences keep the invariants", arguments: Array(UInt64(1)...300))
    func randomWalk(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        let policy = RetryPolicy(maxRetryCount: Int.random(in: 0...3, using: &random))
        let failedAction = FailedAction.allCases.randomElement(using: &random)!
        var instance = InstanceLifecycle()
        var now = t0
        for _ in 0..<40 {
            now = now.addingTimeInterval(Double(Int.random(in: 0...3, using: &random)))
            let attempt = max(0, instance.attempt - Int.random(in: 0...1, using: &random))
            let node = Bool.random(using: &random) ? nodeA : nodeB
            let event: InstanceLifecycle.Event = [
                .released, .dispatched(at: now), .accepted(attempt: attempt, node: node),
                .started(attempt: attempt, node: node),
                .exited(
                    attempt: attempt, exitCode: [0, 1, 137, nil].randomElement(using: &random)!, reason: nil, at: now),
                .timedOut(attempt: attempt, after: 10, at: now), .nodeLost(node), .terminated(reason: "stop"), .retried,
            ].randomElement(using: &random)!
            let before = instance
            let transition = instance.handle(event, policy: policy, failedAction: failedAction)
            if transition.ignored != nil {
                #expect(instance == before, "seed \(seed): an ignored \(event) changed the instance")
            }
            checkInvariants(instance, before: before, policy: policy, seed: seed)
        }
    }

    func checkInvariants(
        _ instance: InstanceLifecycle, before: InstanceLifecycle, policy: RetryPolicy, seed: UInt64 = 0
    ) {
        #expect(instance.attempt >= before.attempt, "seed \(seed): attempt went back")
        if instance.state.isFinal { #expect(!instance.dispatched, "seed \(seed): final but dispatched") }
        if instance.state == .starting || instance.state == .running {
            #expect(instance.node != nil && instance.attempt >= 1, "seed \(seed): on no node")
        }
        #expect(instance.failures <= policy.maxRetryCount + 1, "seed \(seed): too many failures")
        if instance.state == .succeed { #expect(instance.exitCode == 0) }
    }
}
