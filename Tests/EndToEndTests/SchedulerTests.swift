import Foundation
import Messaging
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What one instance run recorded: when it started and ended (nanoseconds since the epoch) and its attempt.
struct RunRecord: Hashable {
    var task: String
    var index: Int
    var attempt: Int
    var start: Int
    var end: Int
}

extension Stack {
    /// A directory instances write their records to.
    func recordsDirectory() throws -> URL {
        let directory = self.directory.appendingPathComponent("shared/records-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o1777])
        return directory
    }

    /// Submits a job of `tasks` (each a dictionary of the API's Task fields; `EnvId` is filled in) and returns its id.
    func submit(
        _ name: String, env: String, tasks: [[String: Any]], dependences: [(String, String)] = [],
        extra: [String: Any] = [:]
    ) async throws -> String {
        var job: [String: Any] = [
            "JobName": name,
            "Tasks": tasks.map { $0.merging(["EnvId": env]) { $1 } },
            "Dependences": dependences.map { ["StartTask": $0.0, "EndTask": $0.1] },
        ]
        job.merge(extra) { $1 }
        return try unwrap(try await call("SubmitJob", ["Job": job])["JobId"] as? String)
    }

    func instances(_ jobID: String, _ task: String) async throws -> [[String: Any]] {
        let view = try await call("DescribeTask", ["JobId": jobID, "TaskName": task, "Limit": 100])
        return try unwrap(view["TaskInstanceSet"] as? [[String: Any]])
    }
}

/// A task whose instances record their start and end in `records`, running `body` in between (in the same shell:
/// end it with a status, not `exit`).
func recordingTask(_ name: String, instances: Int, records: URL, body: String = "true", extra: [String: Any] = [:])
    -> [String: Any]
{
    let command = """
        s=$(date +%s%N); \(body); code=$?; \
        echo "$BATCH_TASK_NAME $BATCH_TASK_INSTANCE_INDEX $BATCH_TASK_ATTEMPT $s $(date +%s%N)" \
        >> "\(records.path)/$BATCH_TASK_NAME.$BATCH_TASK_INSTANCE_INDEX.$BATCH_TASK_ATTEMPT"; exit $code
        """
    return [
        "TaskName": name, "TaskInstanceNum": instances,
        "Application": ["DeliveryForm": "LOCAL", "Command": command],
    ].merging(extra) { $1 }
}

/// Every run recorded in `directory`.
func readRecords(_ directory: URL) throws -> [RunRecord] {
    try FileManager.default.contentsOfDirectory(atPath: directory.path).flatMap { file in
        try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8).split(separator: "\n").map {
            let fields = $0.split(separator: " ")
            return RunRecord(
                task: String(fields[0]), index: Int(fields[1])!, attempt: Int(fields[2])!, start: Int(fields[3])!,
                end: Int(fields[4])!)
        }
    }
}

/// The most runs of `records` that overlapped in time.
func peakOverlap(_ records: [RunRecord]) -> Int {
    let points = records.flatMap { [($0.start, 1), ($0.end, -1)] }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }
    var current = 0
    var peak = 0
    for (_, change) in points {
        current += change
        peak = max(peak, current)
    }
    return peak
}

@Suite("Scheduler: DAGs, retries, limits, timeouts, termination", .serialized, .timeLimit(.minutes(5)))
struct SchedulerTests {
    @Test("a diamond DAG (A → B, C → D) of 3 instances per task runs each task after its predecessors")
    func diamond() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "diamond", env: env,
                tasks: ["A", "B", "C", "D"].map { recordingTask($0, instances: 3, records: records) },
                dependences: [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let runs = try readRecords(records)
            #expect(runs.count == 12)
            for (before, after) in [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")] {
                let lastEnd = try #require(runs.filter { $0.task == before }.map(\.end).max())
                let firstStart = try #require(runs.filter { $0.task == after }.map(\.start).min())
                #expect(lastEnd < firstStart, "\(after) started before \(before) ended")
            }
            #expect(Set(runs.map { "\($0.task)\($0.index)" }).count == 12)
        }
    }

    @Test("PRE_TASK_FINISHED runs D after a failed B; the job still ends FAILED")
    func preTaskFinished() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "finished", env: env,
                tasks: [
                    recordingTask("B", instances: 2, records: records, body: "false"),
                    recordingTask("D", instances: 1, records: records),
                ], dependences: [("B", "D")], extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "FAILED")
            let d = try await stack.instances(jobID, "D")
            #expect(d.map { $0["TaskInstanceState"] as? String } == ["SUCCEED"])
            let b = try await stack.instances(jobID, "B")
            #expect(b.allSatisfy { $0["TaskInstanceState"] as? String == "FAILED" && $0["ExitCode"] as? Int == 1 })
        }
    }

    @Test("an instance failing twice then succeeding is retried under MaxRetryCount; exit-code rules decide first")
    func retries() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "retries", env: env,
                tasks: [
                    // Fails on attempts 1 and 2, succeeds on 3.
                    recordingTask(
                        "flaky", instances: 1, records: records, body: #"[ "$BATCH_TASK_ATTEMPT" -ge 3 ]"#,
                        extra: ["MaxRetryCount": 2]),
                    // Exit 3 is never retried, whatever MaxRetryCount says.
                    recordingTask(
                        "fatal", instances: 1, records: records, body: "(exit 3)",
                        extra: ["MaxRetryCount": 5, "RetryRules": [["OnExitCode": "3", "Action": "EXIT"]]]),
                    // Exit 4 is retried by the catch-all rule; attempt 2 succeeds.
                    recordingTask(
                        "transient", instances: 1, records: records,
                        body: #"[ "$BATCH_TASK_ATTEMPT" -ge 2 ] || (exit 4)"#,
                        extra: [
                            "MaxRetryCount": 5,
                            "RetryRules": [
                                ["OnExitCode": "3", "Action": "EXIT"], ["OnExitCode": "*", "Action": "RETRY"],
                            ],
                        ]),
                ])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "FAILED")
            let flaky = try await stack.instances(jobID, "flaky")
            #expect(flaky.first?["TaskInstanceState"] as? String == "SUCCEED")
            #expect(flaky.first?["Attempt"] as? Int == 3)
            let fatal = try await stack.instances(jobID, "fatal")
            #expect(fatal.first?["TaskInstanceState"] as? String == "FAILED")
            #expect(fatal.first?["Attempt"] as? Int == 1)
            #expect((fatal.first?["StateReason"] as? String)?.contains("rule EXIT") == true)
            let transient = try await stack.instances(jobID, "transient")
            #expect(transient.first?["TaskInstanceState"] as? String == "SUCCEED")
            #expect(transient.first?["Attempt"] as? Int == 2)
            let runs = try readRecords(records)
            #expect(runs.filter { $0.task == "flaky" }.map(\.attempt).sorted() == [1, 2, 3])
            #expect(runs.filter { $0.task == "fatal" }.count == 1)
            #expect(runs.filter { $0.task == "transient" }.map(\.attempt).sorted() == [1, 2])
        }
    }

    @Test("MaxConcurrentNum is never exceeded, with more free slots than the limit")
    func maxConcurrent() async throws {
        try await Stack.run(settings: ["BATCH_NODE_SLOTS": "4"]) { stack in
            let env = try await stack.createEnv(nodes: 2)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "limited", env: env,
                tasks: [
                    recordingTask(
                        "limited", instances: 12, records: records, body: "sleep 0.3", extra: ["MaxConcurrentNum": 3])
                ])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let runs = try readRecords(records)
            #expect(runs.count == 12)
            #expect(peakOverlap(runs) <= 3)
        }
    }

    @Test("a task's instances go out several to a run message, and no node runs more at once than its slots")
    func groupedRuns() async throws {
        try await Stack.run(settings: ["BATCH_NODE_SLOTS": "4"]) { stack in
            let env = try await stack.createEnv(nodes: 2)
            // A copy of every run message sent to the environment.
            let copies = "test.runs.\(UUID().uuidString.prefix(8))"
            try await RabbitManagement.bindQueue(
                vhost: stack.vhost, queue: copies, exchange: Topology.commandsExchange,
                routingKey: Topology.workRoutingKey(env: env))
            let records = try stack.recordsDirectory()
            let command = """
                s=$(date +%s%N); sleep 0.2; \
                echo "$BATCH_NODE_ID $s $(date +%s%N)" >> "\(records.path)/$BATCH_TASK_INSTANCE_INDEX"
                """
            let jobID = try await stack.submit(
                "grouped", env: env,
                tasks: [
                    [
                        "TaskName": "many", "TaskInstanceNum": 24,
                        "Application": ["DeliveryForm": "LOCAL", "Command": command],
                    ]
                ])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")

            var attempts: [Int] = []
            var largest = 0
            for body in try await RabbitManagement.peek(vhost: stack.vhost, queue: copies) {
                let envelope = try unwrap(
                    try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
                #expect(envelope["type"] as? String == "instance.runs")
                let payload = try unwrap(envelope["payload"] as? [String: Any])
                let indices = try unwrap(payload["attempts"] as? [[String: Any]]).compactMap {
                    $0["instanceIndex"] as? Int
                }
                attempts += indices
                largest = max(largest, indices.count)
            }
            #expect(attempts.sorted() == Array(0..<24), "each instance sent once")
            #expect(largest > 1 && largest <= 4, "several instances a message, at most a node's slots")

            // Each instance ran once; on each node, at most its 4 slots at once.
            var byNode: [String: [RunRecord]] = [:]
            for index in 0..<24 {
                let lines = try String(
                    contentsOf: records.appendingPathComponent("\(index)"), encoding: .utf8
                ).split(separator: "\n")
                #expect(lines.count == 1, "instance \(index) ran \(lines.count) times")
                let fields = lines[0].split(separator: " ")
                byNode[String(fields[0]), default: []].append(
                    RunRecord(task: "many", index: index, attempt: 1, start: Int(fields[1])!, end: Int(fields[2])!))
            }
            for (node, runs) in byNode {
                #expect(peakOverlap(runs) <= 4, "node \(node) ran more at once than its slots")
            }
        }
    }

    @Test("an instance outliving its Timeout is killed and fails")
    func timeout() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let marker = "sleep 3000.\(Int.random(in: 100_000...999_999))"
            let jobID = try await stack.submit(
                "timeout", env: env,
                tasks: [
                    [
                        "TaskName": "sleeper", "Timeout": 2,
                        "Application": ["DeliveryForm": "LOCAL", "Command": marker],
                    ]
                ])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "FAILED")
            let instance = try #require(try await stack.instances(jobID, "sleeper").first)
            #expect((instance["StateReason"] as? String)?.contains("timed out after 2 s") == true)
            #expect(try await processes(matching: marker).isEmpty)
        }
    }

    @Test("TerminateJob of a running 50-instance job fails it and leaves no process running")
    func terminate() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let marker = "sleep 3000.\(Int.random(in: 100_000...999_999))"
            let jobID = try await stack.submit(
                "terminate", env: env,
                tasks: [
                    [
                        "TaskName": "sleepers", "TaskInstanceNum": 50,
                        "Application": ["DeliveryForm": "LOCAL", "Command": marker],
                    ]
                ])
            _ = try await stack.waitForJob(jobID, until: ["RUNNING"])
            // The environment's 4 slots are busy; the other 46 instances wait, and say why.
            let waiting = try await stack.instances(jobID, "sleepers").filter {
                $0["TaskInstanceState"] as? String == "RUNNABLE"
            }
            #expect(!waiting.isEmpty)
            #expect(
                waiting.allSatisfy {
                    let reason = $0["StateReason"] as? String ?? ""
                    return reason.hasPrefix("NO_FREE_NODE") || reason.hasPrefix("QUEUED")
                })
            _ = try await stack.call("TerminateJob", ["JobId": jobID])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "FAILED")
            let instances = try await stack.instances(jobID, "sleepers")
            #expect(instances.count == 50)
            #expect(instances.allSatisfy { $0["TaskInstanceState"] as? String == "FAILED" })
            try await waitUntil("every instance's process is gone") { try await processes(matching: marker).isEmpty }
        }
    }

    @Test("RetryJobs re-runs only what failed, and the job then succeeds")
    func retryJobs() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let records = try stack.recordsDirectory()
            let fixed = stack.directory.appendingPathComponent("shared/fixed").path
            let jobID = try await stack.submit(
                "retry-jobs", env: env,
                tasks: [
                    recordingTask("first", instances: 2, records: records),
                    recordingTask(
                        "second", instances: 3, records: records,
                        body: #"[ "$BATCH_TASK_INSTANCE_INDEX" != 1 ] || [ -f "\#(fixed)" ]"#),
                    recordingTask("third", instances: 1, records: records),
                ], dependences: [("first", "second"), ("second", "third")])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            #expect(FileManager.default.createFile(atPath: fixed, contents: Data()))
            _ = try await stack.call("RetryJobs", ["JobIds": [jobID]])
            _ = try await stack.waitForJob(jobID, until: ["PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEED"])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let runs = try readRecords(records)
            // first ran once per instance, second's instance 1 twice (the others once), third once.
            #expect(runs.filter { $0.task == "first" }.count == 2)
            #expect(runs.filter { $0.task == "second" }.map(\.index).sorted() == [0, 1, 1, 2])
            #expect(runs.filter { $0.task == "third" }.count == 1)
        }
    }
}

/// Processes whose command line contains `text`.
func processes(matching text: String) async throws -> [String] {
    let result = try await TestServers.run("/usr/bin/pgrep", ["-f", text], environment: nil)
    return result.stdout.split(separator: "\n").map(String.init)
}

/// Polls `condition` until it holds; the deadline only guards against a hang.
func waitUntil(
    _ what: String, deadline: Duration = .seconds(60), _ condition: () async throws -> Bool
) async throws {
    let end = ContinuousClock.now + deadline
    while ContinuousClock.now < end {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    throw StackError("timed out waiting until \(what)")
}
