import Foundation
import Testing

@testable import BatchCore

struct NodeRow: Sendable, CustomTestStringConvertible {
    var name: String
    var start: ComputeNodeLifecycle
    var event: ComputeNodeLifecycle.Event
    var recreate = true
    var to: ComputeNodeState
    var actions: [ComputeNodeLifecycle.Action] = []
    var ignored = false
    var testDescription: String { name }
}

func node(_ state: ComputeNodeState, free: Int = 2, heartbeat: Date? = t0) -> ComputeNodeLifecycle {
    ComputeNodeLifecycle(state: state, slots: 2, freeSlots: free, lastHeartbeat: heartbeat)
}

let nodeRows: [NodeRow] = [
    NodeRow(
        name: "pending, submitted", start: node(.pending), event: .submitted, to: .submitted, actions: [.createOnDriver]
    ),
    NodeRow(name: "submitted, creating", start: node(.submitted), event: .creating, to: .creating),
    NodeRow(
        name: "creating, created", start: node(.creating), event: .created(at: t0), to: .created,
        actions: [.recordActivity(type: "create", cause: "node created"), .publish(.computeNodeCreated)]),
    NodeRow(
        name: "creating, creation failed", start: node(.creating), event: .creationFailed(reason: "no binary"),
        to: .creationFailed,
        actions: [.recordActivity(type: "create", cause: "no binary"), .publish(.computeNodeCreationFailed)]),
    NodeRow(
        name: "created, heartbeat", start: node(.created), event: .heartbeat(at: t0 + 3, freeSlots: 2), to: .running,
        actions: [.publish(.computeNodeRunning)]),
    NodeRow(
        name: "running, heartbeat", start: node(.running), event: .heartbeat(at: t0 + 3, freeSlots: 1), to: .running),
    NodeRow(
        name: "creating, first heartbeat", start: node(.creating, heartbeat: nil),
        event: .heartbeat(at: t0, freeSlots: 2), to: .running,
        actions: [.publish(.computeNodeCreated), .publish(.computeNodeRunning)]),
    NodeRow(
        name: "abnormal, heartbeat again, NOTHING", start: node(.abnormal),
        event: .heartbeat(at: t0 + 30, freeSlots: 2),
        recreate: false, to: .running, actions: [.publish(.computeNodeRunning)]),
    NodeRow(
        name: "abnormal and being replaced, heartbeat again", start: node(.abnormal),
        event: .heartbeat(at: t0 + 30, freeSlots: 2), to: .abnormal, ignored: true),
    NodeRow(
        name: "deleting, heartbeat", start: node(.deleting), event: .heartbeat(at: t0 + 3, freeSlots: 2),
        to: .deleting, ignored: true),
    NodeRow(
        name: "creation failed, heartbeat", start: node(.creationFailed), event: .heartbeat(at: t0 + 3, freeSlots: 2),
        to: .creationFailed, ignored: true),
    NodeRow(
        name: "running, silent too long", start: node(.running), event: .heartbeatCheck(now: t0 + 31, timeout: 30),
        to: .abnormal, actions: [.reportLost, .publish(.computeNodeAbnormal), .replace]),
    NodeRow(
        name: "running, silent too long, NOTHING", start: node(.running),
        event: .heartbeatCheck(now: t0 + 31, timeout: 30), recreate: false, to: .abnormal,
        actions: [.reportLost, .publish(.computeNodeAbnormal)]),
    NodeRow(
        name: "idle, delete", start: node(.running), event: .deleteRequested(cause: "scale down"), to: .deleting,
        actions: [
            .recordActivity(type: "destroy", cause: "scale down"), .publish(.computeNodeDeleting), .destroyOnDriver,
        ]),
    NodeRow(
        name: "busy, delete drains first", start: node(.running, free: 0), event: .deleteRequested(cause: "scale down"),
        to: .deleting,
        actions: [.recordActivity(type: "destroy", cause: "scale down"), .publish(.computeNodeDeleting), .drain]),
    NodeRow(
        name: "abnormal, delete", start: node(.abnormal, free: 0), event: .deleteRequested(cause: "lost"),
        to: .deleting,
        actions: [.recordActivity(type: "destroy", cause: "lost"), .publish(.computeNodeDeleting), .destroyOnDriver]),
    NodeRow(
        name: "deleting, drained", start: node(.deleting, free: 0), event: .drained, to: .deleting,
        actions: [.destroyOnDriver]),
    NodeRow(name: "deleting, destroyed", start: node(.deleting), event: .destroyed, to: .deleting),
    NodeRow(name: "creation failed, destroyed", start: node(.creationFailed), event: .destroyed, to: .creationFailed),
    // Ignored.
    NodeRow(name: "running, submitted", start: node(.running), event: .submitted, to: .running, ignored: true),
    NodeRow(
        name: "running, older heartbeat", start: node(.running), event: .heartbeat(at: t0 - 5, freeSlots: 0),
        to: .running, ignored: true),
    NodeRow(
        name: "running, heard lately", start: node(.running), event: .heartbeatCheck(now: t0 + 10, timeout: 30),
        to: .running, ignored: true),
    NodeRow(
        name: "deleting, delete again", start: node(.deleting), event: .deleteRequested(cause: "x"), to: .deleting,
        ignored: true),
    NodeRow(name: "running, destroyed", start: node(.running), event: .destroyed, to: .running, ignored: true),
    NodeRow(name: "running, created", start: node(.running), event: .created(at: t0), to: .running, ignored: true),
]

@Suite("Compute node state machine")
struct ComputeNodeLifecycleTests {
    @Test("transitions and their actions", arguments: nodeRows)
    func transitions(_ row: NodeRow) {
        var lifecycle = row.start
        let transition = lifecycle.handle(row.event, recreate: row.recreate)
        #expect((transition.ignored != nil) == row.ignored, "\(row.name): \(transition.ignored ?? "applied")")
        #expect(lifecycle.state == row.to)
        #expect(transition.actions == row.actions)
        if row.ignored { #expect(lifecycle == row.start) }
        #expect(lifecycle.freeSlots >= 0 && lifecycle.freeSlots <= lifecycle.slots)
    }

    @Test("a removed node takes no more events")
    func removed() {
        var lifecycle = node(.deleting)
        _ = lifecycle.handle(.destroyed)
        #expect(lifecycle.removed)
        #expect(lifecycle.handle(.heartbeat(at: t0 + 100, freeSlots: 2)).ignored != nil)
    }
}

extension Date {
    static func + (date: Date, seconds: Double) -> Date { date.addingTimeInterval(seconds) }
    static func - (date: Date, seconds: Double) -> Date { date.addingTimeInterval(-seconds) }
}
