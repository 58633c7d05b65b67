import Foundation
import TestSupport
import Testing

@Suite("End to end: four executables, real RabbitMQ and PostgreSQL", .serialized, .timeLimit(.minutes(5)))
struct WalkingSkeletonTests {
    @Test("a job of 20 instances reaches SUCCEED and every instance sees its own environment variables")
    func twentyInstances() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let out = stack.directory.appendingPathComponent("shared/out")
            try FileManager.default.createDirectory(
                at: out, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o1777])
            let command = #"""
                printf '%s %s %s %s %s\n' "$BATCH_JOB_ID" "$BATCH_TASK_NAME" "$BATCH_TASK_INSTANCE_INDEX" \
                  "$BATCH_TASK_INSTANCE_NUM" "$GREETING" > "$OUT/$BATCH_TASK_INSTANCE_INDEX.txt"
                """#
            let submitted = try await stack.call(
                "SubmitJob",
                [
                    "Job": [
                        "JobName": "twenty",
                        "Tasks": [
                            [
                                "TaskName": "fan-out", "TaskInstanceNum": 20, "EnvId": env,
                                "Application": ["DeliveryForm": "LOCAL", "Command": command],
                                "EnvVars": [
                                    ["Name": "OUT", "Value": out.path], ["Name": "GREETING", "Value": "hello"],
                                ],
                            ]
                        ],
                    ]
                ])
            let jobID = try unwrap(submitted["JobId"] as? String)
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let metrics = try unwrap(job["TaskInstanceMetrics"] as? [String: Any])
            #expect(metrics["SucceedCount"] as? Int == 20)

            for index in 0..<20 {
                let line = try String(contentsOf: out.appendingPathComponent("\(index).txt"), encoding: .utf8)
                #expect(line == "\(jobID) fan-out \(index) 20 hello\n")
            }
            let task = try await stack.call("DescribeTask", ["JobId": jobID, "TaskName": "fan-out"])
            #expect(task["TaskInstanceTotalCount"] as? Int == 20)
            let instances = try unwrap(task["TaskInstanceSet"] as? [[String: Any]])
            #expect(instances.count == 20)
            #expect(
                instances.allSatisfy { $0["TaskInstanceState"] as? String == "SUCCEED" && $0["ExitCode"] as? Int == 0 })
            // Both nodes of the environment took part.
            #expect(Set(instances.compactMap { $0["ComputeNodeInstanceId"] as? String }).count == 2)
        }
    }

    @Test("a job whose command fails ends FAILED with the exit code recorded")
    func failingCommand() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let submitted = try await stack.call(
                "SubmitJob",
                [
                    "Job": [
                        "JobName": "failing",
                        "Tasks": [
                            [
                                "TaskName": "broken", "TaskInstanceNum": 3, "EnvId": env,
                                "Application": ["DeliveryForm": "LOCAL", "Command": "echo oops >&2; exit 3"],
                            ]
                        ],
                    ]
                ])
            let jobID = try unwrap(submitted["JobId"] as? String)
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "FAILED")
            #expect((job["StateReason"] as? String)?.contains("broken") == true)
            let task = try await stack.call("DescribeTask", ["JobId": jobID, "TaskName": "broken"])
            let instances = try unwrap(task["TaskInstanceSet"] as? [[String: Any]])
            #expect(instances.count == 3)
            for instance in instances {
                #expect(instance["TaskInstanceState"] as? String == "FAILED")
                #expect(instance["ExitCode"] as? Int == 3)
                #expect((instance["StateReason"] as? String)?.contains("3") == true)
            }
        }
    }

    @Test("bad input gets the API's error code and a message naming the field, and writes nothing")
    func badInput() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            await #expect {
                _ = try await stack.call(
                    "SubmitJob",
                    [
                        "Job": [
                            "Tasks": [
                                [
                                    "TaskName": "a", "TaskInstanceNum": 0, "EnvId": env,
                                    "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                                ]
                            ]
                        ]
                    ])
            } throws: { error in
                "\(error)".contains("InvalidParameterValue.TaskInstanceNum")
                    && "\(error)".contains("Job.Tasks[0].TaskInstanceNum")
            }
            await #expect {
                _ = try await stack.call("SubmitJob", ["Job": ["Tasks": [["TaskName": 5]]]])
            } throws: { error in
                "\(error)".contains("InvalidParameter") && "\(error)".contains("Job.Tasks[0].TaskName")
            }
            await #expect {
                _ = try await stack.call("DescribeJob", ["JobId": "job-nosuchjb"])
            } throws: { error in "\(error)".contains("ResourceNotFound.Job") }
            #expect(try await stack.rowCount("jobs") == 0)
            #expect(try await stack.rowCount("tasks") == 0)
        }
    }
}

@Suite("Service start-up refusals")
struct StartupRefusalTests {
    @Test(
        "a service without a usable master key stops with one line on stderr",
        arguments: [
            ("APIGateway", nil as String?), ("SchedulerService", "k1:tooshort"), ("ProvisionerService", "nonsense"),
        ])
    func masterKeyRequired(service: String, key: String?) throws {
        let process = Process()
        process.executableURL = Stack.binDirectory.appendingPathComponent(service)
        var environment = [
            "PATH": "/usr/bin:/bin", "BATCH_DATABASE_URL": TestServers.databaseURLString, "BATCH_INSECURE_HTTP": "1",
        ]
        environment["BATCH_MASTER_KEY"] = key
        environment["BATCH_EXECUTOR_PATH"] = Stack.binDirectory.appendingPathComponent("ExecutorService").path
        process.environment = environment
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let output = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 1)
        #expect(output.hasPrefix("\(service): BATCH_MASTER_KEY"))
        #expect(output.split(separator: "\n").count == 1)
    }
}
