import Foundation
import Messaging
import TestSupport
import Testing

/// Notifications: every state change of a job, its tasks and their instances is published on `batch.events`, and
/// the events a job's `Notifications` select go to its topic too.
@Suite("Notifications: every state change, in order, on batch.events", .timeLimit(.minutes(5)))
struct NotificationTests {
    /// One event of a notification message, with the routing key its message came with.
    struct Received: Equatable {
        var routingKey: String
        var name: String
        var task: String?
        var index: Int?
        var state: String
    }

    /// The events of every message waiting in `queue`, in the order they were published.
    static func events(in queue: String, of stack: Stack) async throws -> [Received] {
        var received: [Received] = []
        for message in try await RabbitManagement.peekMessages(vhost: stack.vhost, queue: queue, count: 500) {
            let object = try unwrap(
                try JSONSerialization.jsonObject(with: Data(message.body.utf8)) as? [String: Any])
            for event in try unwrap(object["Events"] as? [[String: Any]]) {
                let subject = try unwrap(event["Batch"] as? [String: Any])
                received.append(
                    Received(
                        routingKey: message.routingKey, name: try unwrap(event["EventName"] as? String),
                        task: subject["TaskName"] as? String, index: subject["TaskInstanceIndex"] as? Int,
                        state: try unwrap(subject["State"] as? String)))
            }
        }
        return received
    }

    @Test("a job's events arrive in the order they happened, each under its own name, and its topic gets those chosen")
    func jobEvents() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let all = "test.notify.\(UUID().uuidString.prefix(8))"
            let topic = "test.topic.\(UUID().uuidString.prefix(8))"
            try await RabbitManagement.bindQueue(
                vhost: stack.vhost, queue: all, exchange: Topology.eventsExchange, routingKey: "notify.#")
            try await RabbitManagement.bindQueue(
                vhost: stack.vhost, queue: topic, exchange: Topology.eventsExchange,
                routingKey: Topology.topicRoutingKey(topic: "results"))
            let jobID = try await stack.submit(
                "notified", env: env,
                tasks: [
                    [
                        "TaskName": "A", "TaskInstanceNum": 6,
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                    ],
                    ["TaskName": "B", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]],
                ], dependences: [("A", "B")],
                extra: [
                    "Notifications": [
                        [
                            "TopicName": "results",
                            "EventConfigs": [["EventName": "TASK_INSTANCE_SUCCEED"], ["EventName": "JOB_SUCCEED"]],
                        ]
                    ]
                ])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            // Published once their state is committed: wait for the last.
            try await waitUntil("the job's last event is published") {
                try await Self.events(in: all, of: stack).last?.name == "JOB_SUCCEED"
            }
            let events = try await Self.events(in: all, of: stack)
            for event in events {
                #expect(event.routingKey == Topology.notificationRoutingKey(event: event.name, job: jobID))
            }
            let names = events.map {
                [$0.name, $0.task, $0.index.map(String.init)].compactMap { $0 }.joined(separator: " ")
            }
            // The job stays RUNNING between A's end and B's start: JOB_RUNNING once.
            var expected = [
                "JOB_RUNNING", "TASK_RUNNING A", "TASK_SUCCEED A", "TASK_RUNNING B", "TASK_SUCCEED B", "JOB_SUCCEED",
            ]
            expected += ["TASK_INSTANCE_RUNNING B 0", "TASK_INSTANCE_SUCCEED B 0"]
            for index in 0..<6 { expected += ["TASK_INSTANCE_RUNNING A \(index)", "TASK_INSTANCE_SUCCEED A \(index)"] }
            #expect(names.sorted() == expected.sorted(), "each state change once: \(names)")
            /// Where an event is in the order they arrived.
            func position(_ name: String) -> Int { names.firstIndex(of: name) ?? -1 }
            #expect(position("JOB_RUNNING") >= 0 && position("JOB_RUNNING") < position("TASK_SUCCEED A"))
            #expect(position("JOB_SUCCEED") == names.count - 1)
            for index in 0..<6 {
                #expect(position("TASK_INSTANCE_RUNNING A \(index)") < position("TASK_INSTANCE_SUCCEED A \(index)"))
                #expect(position("TASK_INSTANCE_SUCCEED A \(index)") < position("TASK_SUCCEED A"))
            }
            #expect(position("TASK_RUNNING A") < position("TASK_SUCCEED A"))
            #expect(position("TASK_SUCCEED A") < position("TASK_INSTANCE_RUNNING B 0"))
            #expect(position("TASK_INSTANCE_RUNNING B 0") < position("TASK_INSTANCE_SUCCEED B 0"))
            #expect(position("TASK_INSTANCE_SUCCEED B 0") < position("TASK_SUCCEED B"))
            #expect(position("TASK_RUNNING B") < position("TASK_SUCCEED B"))
            #expect(events.filter { $0.name == "TASK_INSTANCE_SUCCEED" }.allSatisfy { $0.state == "SUCCEED" })

            // The topic gets the events the job chose, and only those.
            try await waitUntil("the topic has the job's end") {
                try await Self.events(in: topic, of: stack).last?.name == "JOB_SUCCEED"
            }
            let chosen = try await Self.events(in: topic, of: stack)
            #expect(chosen.allSatisfy { $0.routingKey == Topology.topicRoutingKey(topic: "results") })
            #expect(chosen.filter { $0.name == "TASK_INSTANCE_SUCCEED" }.count == 7)
            #expect(chosen.map(\.name).filter { $0 != "TASK_INSTANCE_SUCCEED" } == ["JOB_SUCCEED"])
        }
    }
}
