import Foundation
import TestSupport
import Testing

/// The official clients are the proof of compatibility: Tencent Cloud's Python SDK and `tccli`, installed from
/// PyPI by `scripts/python-env`, unchanged, pointed at the gateway.
@Suite("Official Tencent Cloud clients against the gateway", .serialized, .timeLimit(.minutes(5)))
struct CompatibilityTests {
    @Test("the Python SDK: environments, templates, jobs, logs, termination, retry, deletion; a wrong key refused")
    func pythonSDK() async throws {
        let python = try TestServers.pythonTool("BATCH_PYTHON", name: "python")
        try await Stack.run { stack in
            let script = TestServers.repositoryRoot.appendingPathComponent(
                "Tests/EndToEndTests/Python/sdk_compatibility.py")
            let result = try await TestServers.run(
                python, [script.path],
                environment: [
                    "BATCH_ENDPOINT": stack.endpoint, "BATCH_PROTOCOL": "http", "BATCH_SECRET_ID": stack.secretID,
                    "BATCH_SECRET_KEY": stack.secretKey, "PATH": "/usr/bin:/bin",
                ])
            #expect(
                result.status == 0,
                "\(result.stdout)\n\(result.stderr)\n--- scheduler\n\(stack.log("SchedulerService"))")
            #expect(result.stdout.contains("all steps passed"))
        }
    }

    @Test("tccli over HTTPS: create an environment, submit, describe, list and terminate; a wrong key refused")
    func tccli() async throws {
        let tccli = try TestServers.pythonTool("BATCH_TCCLI", name: "tccli")
        try await Stack.run(tls: true) { stack in
            // The SDK under tccli verifies servers against certifi's bundle only (it ignores REQUESTS_CA_BUNDLE), so
            // the test trusts its certificate the way a user would add a CA: a `certifi` whose bundle is ours,
            // first on tccli's PYTHONPATH.
            let shim = stack.directory.appendingPathComponent("trust/certifi")
            try FileManager.default.createDirectory(at: shim, withIntermediateDirectories: true)
            try
                "def where():\n    return \(String(reflecting: stack.certificatePath))\n\ndef contents():\n    return open(where()).read()\n"
                .write(to: shim.appendingPathComponent("__init__.py"), atomically: true, encoding: .utf8)
            func run(_ action: String, _ parameters: [String: Any], secretKey: String? = nil) async throws
                -> TestServers.ProgramResult
            {
                var arguments = ["batch", action]
                for (name, value) in parameters.sorted(by: { $0.key < $1.key }) {
                    let text =
                        value is String
                        ? value as! String
                        : String(decoding: try JSONSerialization.data(withJSONObject: value), as: UTF8.self)
                    arguments += ["--\(name)", text]
                }
                arguments += [
                    "--endpoint", stack.endpoint, "--region", "ap-guangzhou", "--secretId", stack.secretID,
                    "--secretKey", secretKey ?? stack.secretKey,
                ]
                return try await TestServers.run(
                    tccli, arguments,
                    environment: [
                        "REQUESTS_CA_BUNDLE": stack.certificatePath, "HOME": stack.directory.path,
                        "PYTHONPATH": shim.deletingLastPathComponent().path, "PATH": "/usr/bin:/bin",
                    ])
            }
            func json(_ result: TestServers.ProgramResult) throws -> [String: Any] {
                guard result.status == 0,
                    let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
                else { throw StackError("tccli failed (\(result.status)): \(result.stdout) \(result.stderr)") }
                return object
            }

            let env = try unwrap(
                try json(
                    await run(
                        "CreateComputeEnv",
                        [
                            "ComputeEnv": ["EnvName": "cli", "DesiredComputeNodeCount": 1],
                            "Placement": ["Zone": "ap-guangzhou-2"],
                        ]))[
                        "EnvId"] as? String)
            let job = try unwrap(
                try json(
                    await run(
                        "SubmitJob",
                        [
                            "Placement": ["Zone": "ap-guangzhou-2"],
                            "Job": [
                                "JobName": "from-tccli",
                                "Tasks": [
                                    [
                                        "TaskName": "sleepy", "EnvId": env,
                                        "Application": ["DeliveryForm": "LOCAL", "Command": "sleep 120"],
                                    ]
                                ],
                            ],
                        ]))["JobId"] as? String)
            let described = try json(await run("DescribeJob", ["JobId": job]))
            #expect(described["JobId"] as? String == job)
            let listed = try json(await run("DescribeJobs", ["JobIds": [job]]))
            #expect(listed["TotalCount"] as? Int == 1)
            _ = try await stack.waitForJob(job, until: ["RUNNING", "RUNNABLE"])
            _ = try json(await run("TerminateJob", ["JobId": job]))
            let terminated = try await stack.waitForJob(job)
            #expect(terminated["JobState"] as? String == "FAILED")

            let refused = try await run("DescribeJobs", [:], secretKey: "wrong-key")
            #expect(refused.status != 0)
            #expect((refused.stdout + refused.stderr).contains("AuthFailure.SignatureFailure"))
        }
    }
}
