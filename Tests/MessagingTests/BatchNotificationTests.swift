import BatchCore
import Foundation
import Messaging
import Testing

@Suite("BatchNotification: events in messages")
struct BatchNotificationTests {
    static func event(_ name: String, job: String = "job-1", index: Int? = nil) -> BatchNotification.Event {
        BatchNotification.Event(
            EventName(rawValue: name)!, at: Date(timeIntervalSince1970: 1_796_000_000), job: JobID(rawValue: job),
            jobName: "j", task: "t", instance: index, state: .running)
    }

    /// Each message as its events' names (with the job where it is not job-1).
    static func shape(_ notifications: [BatchNotification]) -> [[String]] {
        notifications.map { message in
            message.events.map { event in
                let name = event.eventName + (event.batch.taskInstanceIndex.map { "#\($0)" } ?? "")
                return event.batch.jobId == "job-1" ? name : "\(event.batch.jobId):\(name)"
            }
        }
    }

    @Test(
        "a run of events of one name and job is one message, in order, up to the most a message holds",
        arguments: [
            ([String](), 100, [[String]]()),
            (["JOB_RUNNING"], 100, [["JOB_RUNNING"]]),
            // Instances that start and end together: one message for the starts, one for the ends.
            (
                [
                    "TASK_INSTANCE_RUNNING#0", "TASK_INSTANCE_RUNNING#1", "TASK_INSTANCE_SUCCEED#0",
                    "TASK_INSTANCE_SUCCEED#1",
                ],
                100,
                [
                    ["TASK_INSTANCE_RUNNING#0", "TASK_INSTANCE_RUNNING#1"],
                    ["TASK_INSTANCE_SUCCEED#0", "TASK_INSTANCE_SUCCEED#1"],
                ]
            ),
            // Interleaved names stay interleaved: an instance's end never goes out before its start.
            (
                ["TASK_INSTANCE_SUCCEED#0", "TASK_INSTANCE_RUNNING#1", "TASK_INSTANCE_SUCCEED#1", "TASK_SUCCEED"],
                100,
                [
                    ["TASK_INSTANCE_SUCCEED#0"], ["TASK_INSTANCE_RUNNING#1"], ["TASK_INSTANCE_SUCCEED#1"],
                    ["TASK_SUCCEED"],
                ]
            ),
            // At most `mostPerMessage` a message.
            (
                ["TASK_INSTANCE_SUCCEED#0", "TASK_INSTANCE_SUCCEED#1", "TASK_INSTANCE_SUCCEED#2"], 2,
                [["TASK_INSTANCE_SUCCEED#0", "TASK_INSTANCE_SUCCEED#1"], ["TASK_INSTANCE_SUCCEED#2"]]
            ),
            // Another job's event of the same name is another message (its routing key names its job).
            (
                ["JOB_SUCCEED", "job-2:JOB_SUCCEED"], 100, [["JOB_SUCCEED"], ["job-2:JOB_SUCCEED"]]
            ),
        ])
    func grouped(events: [String], most: Int, expected: [[String]]) {
        let parsed = events.map { text -> BatchNotification.Event in
            let (job, rest) =
                text.contains(":")
                ? (String(text.split(separator: ":")[0]), String(text.split(separator: ":")[1])) : ("job-1", text)
            let parts = rest.split(separator: "#")
            return Self.event(String(parts[0]), job: job, index: parts.count > 1 ? Int(parts[1]) : nil)
        }
        let notifications = BatchNotification.grouped(parsed, mostPerMessage: most)
        #expect(Self.shape(notifications) == expected)
        #expect(notifications.flatMap(\.events) == parsed, "every event once, in order")
    }

    @Test("a message of several events is Tencent Cloud's format: one Events array")
    func wireFormat() throws {
        let message = BatchNotification(events: [
            Self.event("TASK_INSTANCE_SUCCEED", index: 0), Self.event("TASK_INSTANCE_SUCCEED", index: 1),
        ])
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(BatchJSON.encode(message))) as? [String: Any])
        let events = try #require(object["Events"] as? [[String: Any]])
        #expect(events.count == 2)
        #expect(events.map { $0["EventName"] as? String } == ["TASK_INSTANCE_SUCCEED", "TASK_INSTANCE_SUCCEED"])
        #expect(events.map { ($0["Batch"] as? [String: Any])?["TaskInstanceIndex"] as? Int } == [0, 1])
        #expect(events[0]["EventTime"] as? String == "2026-11-30T00:53:20Z")
        #expect(events[0]["EventVersion"] as? String == "1.0")
    }
}
