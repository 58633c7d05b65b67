import Foundation
import Messaging
import TestSupport
import Testing

/// Poison and overload: a message no handler can read, and a flood of submissions from one user.
@Suite("Overload: poison messages and a flood of submissions", .timeLimit(.minutes(12)))
struct OverloadTests {
    @Test("a message the scheduler cannot read goes to the dead-letter queue with a log line; the queue goes on")
    func poisonMessage() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let poison = "{not an envelope \(UUID().uuidString)"
            let routed = try await RabbitManagement.publish(
                vhost: stack.vhost, exchange: Topology.eventsExchange, routingKey: Topology.Event.instanceFinished,
                type: "instance.finished", body: poison)
            #expect(routed, "the broker routed the message to the scheduler's queue")
            // A job submitted after it still runs: the poison message does not block the queue.
            let jobID = try await stack.submit(
                "after-poison", env: env,
                tasks: [["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]]])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            try await waitUntil("the poison message is in the dead-letter queue") {
                try await RabbitManagement.peek(vhost: stack.vhost, queue: Topology.deadLetterQueue).contains(poison)
            }
            let log = try String(
                contentsOf: stack.directory.appendingPathComponent("SchedulerService.log"), encoding: .utf8)
            #expect(log.contains("poison message sent to the dead-letter queue"))
            #expect(stack.isRunning("SchedulerService"))
        }
    }

    /// 10,000 SubmitJob calls from one user, 32 at a time, against a gateway that lets a user make 5 requests a
    /// second (20 at once): every answer is a job id or `RequestLimitExceeded`, every accepted job runs to the end,
    /// and nothing refused left a row. The rate is low so that the work accepted stays small on a slow machine (a
    /// flood that takes longer is let in more).
    @Test("a flood of 10,000 submissions: each accepted and run, or refused with RequestLimitExceeded")
    func flood() async throws {
        let settings = [
            "BATCH_RATE_LIMIT": "5", "BATCH_RATE_BURST": "20", "BATCH_QUOTA_JOBS": "20000", "BATCH_NODE_SLOTS": "4",
        ]
        try await Stack.run(settings: settings) { stack in
            let env = try await stack.createEnv(nodes: 2)
            let job: [String: Any] = [
                "Job": [
                    "JobName": "flood",
                    "Tasks": [
                        ["TaskName": "t", "EnvId": env, "Application": ["DeliveryForm": "LOCAL", "Command": "true"]]
                    ],
                ]
            ]
            let body = Array(try JSONSerialization.data(withJSONObject: job))
            let outcomes = try await withThrowingTaskGroup(of: Result<String, APICallError>.self) { group in
                var outcomes: [Result<String, APICallError>] = []
                var next = 0
                func submit() {
                    group.addTask {
                        do {
                            let answer = try await stack.call("SubmitJob", body)
                            return .success(try unwrap(answer["JobId"] as? String))
                        } catch let error as APICallError {
                            return .failure(error)
                        }
                    }
                    next += 1
                }
                while next < 32 { submit() }
                while let outcome = try await group.next() {
                    outcomes.append(outcome)
                    if next < 10_000 { submit() }
                }
                return outcomes
            }
            var accepted: Set<String> = []
            var refused = 0
            for outcome in outcomes {
                switch outcome {
                case .success(let jobID): accepted.insert(jobID)
                case .failure(let error):
                    #expect(error.code == "RequestLimitExceeded", "\(error)")
                    refused += 1
                }
            }
            print(
                "flood: \(accepted.count) of 10,000 submissions accepted, \(refused) refused with RequestLimitExceeded")
            #expect(outcomes.count == 10_000)
            #expect(accepted.count + refused == 10_000)
            #expect(refused > 0, "the rate limit refused some")
            #expect(accepted.count >= 20, "the burst was accepted")
            // Every accepted job runs to the end; none refused was written.
            let draining = ContinuousClock.now
            do {
                try await waitUntil("every accepted job has succeeded", deadline: .seconds(540)) {
                    try await stack.query("SELECT count(*)::text FROM jobs WHERE state = 'SUCCEED'").first
                        == String(accepted.count)
                }
            } catch {
                let states = try await stack.query(
                    "SELECT state || ' ' || count(*) FROM jobs GROUP BY state ORDER BY state")
                throw StackError("\(error): jobs by state: \(states.joined(separator: ", "))")
            }
            print("flood: the accepted jobs ran to the end \(ContinuousClock.now - draining) after the last answer")
            let written = Set(try await stack.query("SELECT job_id FROM jobs"))
            #expect(written == accepted)
            for service in ["APIGateway", "SchedulerService", "ProvisionerService"] {
                #expect(stack.isRunning(service), "\(service) is still running")
            }
        }
    }
}
