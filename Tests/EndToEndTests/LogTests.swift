import Foundation
import TestSupport
import Testing

/// An instance's output, read from its node while it runs and after.
@Suite("Logs: live output of running instances", .serialized, .timeLimit(.minutes(5)))
struct LogTests {
    @Test("a running instance's output is readable before it ends: DescribeTaskLogs, GetTaskInstanceLog, logs -f")
    func liveLogs() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            // The instance prints a line, then waits for the test to open this gate before printing the next.
            let gate = stack.directory.appendingPathComponent("shared/gate").path
            let jobID = try await stack.submit(
                "talking", env: env,
                tasks: [
                    [
                        "TaskName": "talk",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command":
                                "echo first line; echo oops >&2; while [ ! -e \(gate) ]; do sleep 0.1; done; "
                                + "echo second line",
                        ],
                    ]
                ])
            func read(_ stream: String = "stdout", from offset: Int = 0) async throws -> (String, Bool, Int) {
                let response = try await stack.call(
                    "GetTaskInstanceLog",
                    ["JobId": jobID, "TaskName": "talk", "TaskInstanceIndex": 0, "Stream": stream, "Offset": offset])
                let log = String(
                    decoding: Data(base64Encoded: response["Log"] as? String ?? "") ?? Data(), as: UTF8.self)
                return (log, response["Running"] as? Bool ?? false, response["NextOffset"] as? Int ?? -1)
            }
            try await waitUntil("the instance runs") { try await stack.runningInstances(jobID, "talk") == 1 }
            try await waitUntil("the first line is readable while the instance runs") {
                let (log, running, _) = try await read()
                return log == "first line\n" && running
            }
            #expect(try await read("stderr").0 == "oops\n")
            let logs = try await stack.call("DescribeTaskLogs", ["JobId": jobID, "TaskName": "talk"])
            let tail = try unwrap((logs["TaskInstanceLogSet"] as? [[String: Any]])?.first)
            #expect(Data(base64Encoded: tail["StdoutLog"] as? String ?? "") == Data("first line\n".utf8))
            #expect(Data(base64Encoded: tail["StderrLog"] as? String ?? "") == Data("oops\n".utf8))

            // `batchctl logs -f` follows the instance to its end.
            let batchctl = Stack.binDirectory.appendingPathComponent("batchctl").path
            async let followed = TestServers.run(
                batchctl,
                [
                    "logs", jobID, "talk", "0", "-f", "--endpoint", stack.endpoint, "--secret-id", stack.secretID,
                    "--secret-key", stack.secretKey,
                ], environment: ["PATH": "/usr/bin:/bin"])
            try await waitUntil("batchctl follows") {
                !(try await processes(matching: "batchctl logs \(jobID)")).isEmpty
            }
            #expect(FileManager.default.createFile(atPath: gate, contents: Data()))
            let result = try await followed
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "first line\nsecond line\n")

            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let (rest, running, next) = try await read(from: 11)
            #expect(rest == "second line\n")
            #expect(!running)
            #expect(next == 23)
        }
    }
}
