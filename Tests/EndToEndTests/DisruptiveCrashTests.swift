import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Crashes in the middle of a job: the scheduler killed with SIGKILL, the broker restarted. Runs alone, after every
/// other test (`scripts/test` filters on "Disruptive"), since a broker restart disturbs everything on it.
@Suite("Disruptive: crashes while a 500-instance DAG runs", .serialized, .timeLimit(.minutes(6)))
struct DisruptiveCrashTests {
    /// A → B → C of 200, 200 and 100 instances, each a tenth of a second of work, on 2 nodes of 4 slots.
    func submitChain(_ stack: Stack, records: URL) async throws -> String {
        let env = try await stack.createEnv(nodes: 2)
        return try await stack.submit(
            "chaos", env: env,
            tasks: [
                recordingTask("A", instances: 200, records: records, body: "sleep 0.1"),
                recordingTask("B", instances: 200, records: records, body: "sleep 0.1"),
                recordingTask("C", instances: 100, records: records, body: "sleep 0.1"),
            ], dependences: [("A", "B"), ("B", "C")])
    }

    /// The job succeeded with each of its 500 instances run to completion exactly once, never two runs at once.
    func expectEachInstanceRanOnce(_ stack: Stack, _ jobID: String, records: URL) async throws {
        let job = try await stack.waitForJob(jobID, deadline: .seconds(240))
        #expect(job["JobState"] as? String == "SUCCEED")
        let metrics = try unwrap(job["TaskInstanceMetrics"] as? [String: Any])
        #expect(metrics["SucceedCount"] as? Int == 500)
        let runs = try readRecords(records)
        let byInstance = Dictionary(grouping: runs) { "\($0.task).\($0.index)" }
        #expect(byInstance.count == 500)
        let repeated = byInstance.filter { $0.value.count > 1 }
        #expect(repeated.isEmpty, "instances run more than once: \(repeated.keys.sorted().prefix(10))")
        for (instance, runs) in byInstance where runs.count > 1 {
            #expect(peakOverlap(runs) == 1, "instance \(instance) ran twice at the same time")
        }
    }

    @Test("SIGKILL of the scheduler at random moments, then a restart: the job still succeeds, each instance once")
    func schedulerKilled() async throws {
        try await Stack.run(settings: ["BATCH_NODE_SLOTS": "4"]) { stack in
            let records = try stack.recordsDirectory()
            let jobID = try await submitChain(stack, records: records)
            var kills = 0
            // The chaos schedule: kill at a random moment, restart at once, five times.
            while kills < 5 {
                try await Task.sleep(for: .milliseconds(Int.random(in: 200...1200)))
                let state = try await stack.call("DescribeJob", ["JobId": jobID])["JobState"] as? String
                if state == "SUCCEED" || state == "FAILED" { break }
                let scheduler = try unwrap(stack.processes["SchedulerService"])
                scheduler.signal(SIGKILL)
                _ = await scheduler.wait()
                try stack.launch("SchedulerService")
                kills += 1
            }
            #expect(kills >= 3, "the job ended before the scheduler was killed three times")
            try await expectEachInstanceRanOnce(stack, jobID, records: records)
        }
    }

    @Test("a broker restart in the middle of the job: it still succeeds, each instance once")
    func brokerRestarted() async throws {
        try await Stack.run(settings: ["BATCH_NODE_SLOTS": "4"]) { stack in
            let records = try stack.recordsDirectory()
            let jobID = try await submitChain(stack, records: records)
            try await waitUntil("task A is half done") {
                try readRecords(records).filter { $0.task == "A" }.count >= 100
            }
            let script = TestServers.repositoryRoot.appendingPathComponent("scripts/servers").path
            #expect(await TestServers.runProgram(script, ["restart-rabbitmq"]) == 0)
            try await expectEachInstanceRanOnce(stack, jobID, records: records)
        }
    }
}
