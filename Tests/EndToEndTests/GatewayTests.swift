import AsyncHTTPClient
import BatchCore
import Foundation
import NIOCore
import TestSupport
import Testing

/// A job spec as JSON, on the environment `env`.
func jobBody(_ env: String, name: String = "job", command: String = "true", instances: Int = 1) -> [String: Any] {
    [
        "Job": [
            "JobName": name,
            "Tasks": [
                [
                    "TaskName": "t", "TaskInstanceNum": instances, "EnvId": env,
                    "Application": ["DeliveryForm": "LOCAL", "Command": command],
                ]
            ],
        ]
    ]
}

/// Expects `body` to fail with the API error `code`.
func expectCode(_ code: String, _ body: () async throws -> Any) async {
    do {
        _ = try await body()
        Issue.record("expected \(code), the call succeeded")
    } catch let error as APICallError {
        #expect(error.code == code, "\(error)")
    } catch {
        Issue.record("expected \(code), got \(error)")
    }
}

@Suite("Gateway: tenants, authentication, bad input, quotas", .serialized, .timeLimit(.minutes(5)))
struct GatewayTests {
    @Test("user B cannot see, describe, terminate, retry or delete A's jobs, templates or environments")
    func tenantIsolation() async throws {
        try await Stack.run { stack in
            let bob = try await stack.createUser("bob")
            let env = try await stack.createEnv(nodes: 1)
            let job = try unwrap(
                try await stack.call("SubmitJob", jobBody(env, command: "sleep 60"))["JobId"] as? String)
            let template = try unwrap(
                try await stack.call(
                    "CreateTaskTemplate",
                    [
                        "TaskTemplateName": "mine",
                        "TaskTemplateInfo": [
                            "TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                        ],
                    ])["TaskTemplateId"] as? String)

            // Lists are empty for Bob.
            #expect(try await stack.call("DescribeJobs", [:], as: bob)["TotalCount"] as? Int == 0)
            #expect(try await stack.call("DescribeTaskTemplates", [:], as: bob)["TotalCount"] as? Int == 0)
            #expect(try await stack.call("DescribeComputeEnvs", [:], as: bob)["TotalCount"] as? Int == 0)
            #expect(try await stack.call("DescribeJobs", ["JobIds": [job]], as: bob)["TotalCount"] as? Int == 0)
            // Every single-resource action answers "not found", never "forbidden".
            for (action, body) in [
                ("DescribeJob", ["JobId": job]), ("DescribeJobSubmitInfo", ["JobId": job]),
                ("TerminateJob", ["JobId": job]), ("DeleteJob", ["JobId": job]), ("RetryJobs", ["JobIds": [job]]),
            ] as [(String, [String: Any])] {
                await expectCode("ResourceNotFound.Job") { try await stack.call(action, body, as: bob) }
            }
            await expectCode("ResourceNotFound.Task") {
                try await stack.call("DescribeTask", ["JobId": job, "TaskName": "t"], as: bob)
            }
            await expectCode("ResourceNotFound.Job") {
                try await stack.call(
                    "TerminateTaskInstance", ["JobId": job, "TaskName": "t", "TaskInstanceIndex": 0], as: bob)
            }
            for (action, body) in [
                ("DescribeComputeEnv", ["EnvId": env]), ("ModifyComputeEnv", ["EnvId": env, "EnvName": "x"]),
                ("DeleteComputeEnv", ["EnvId": env]), ("DescribeComputeEnvCreateInfo", ["EnvId": env]),
                ("DescribeComputeEnvActivities", ["EnvId": env]),
                ("AttachInstances", ["EnvId": env, "Instances": [["InstanceId": "host-1"]]]),
            ] as [(String, [String: Any])] {
                await expectCode("ResourceNotFound.ComputeEnv") { try await stack.call(action, body, as: bob) }
            }
            for (action, body) in [
                ("ModifyTaskTemplate", ["TaskTemplateId": template, "TaskTemplateName": "x"]),
                ("DeleteTaskTemplates", ["TaskTemplateIds": [template]]),
            ] as [(String, [String: Any])] {
                await expectCode("ResourceNotFound.TaskTemplate") { try await stack.call(action, body, as: bob) }
            }
            // Bob cannot use Alice's environment or template either.
            await expectCode("ResourceNotFound.ComputeEnv") { try await stack.call("SubmitJob", jobBody(env), as: bob) }
            await expectCode("ResourceNotFound.TaskTemplate") {
                try await stack.call(
                    "SubmitJob", ["Job": ["Tasks": [["TaskName": "t", "TaskTemplateId": template, "EnvId": env]]]],
                    as: bob)
            }
            // Alice's things are untouched.
            let still = try await stack.call("DescribeJob", ["JobId": job])
            #expect(still["JobState"] as? String != "FAILED")
            #expect(try await stack.call("DescribeTaskTemplates", [:])["TotalCount"] as? Int == 1)
            _ = try await stack.call("TerminateJob", ["JobId": job])
        }
    }

    @Test("quotas per user set by the operator; ended jobs leave after the retention and stop counting")
    func quotasAndRetention() async throws {
        try await Stack.run(settings: ["BATCH_QUOTA_JOBS": "1", "BATCH_JOB_RETENTION": "2"]) { stack in
            let env = try await stack.createEnv(nodes: 1)
            let first = try unwrap(try await stack.call("SubmitJob", jobBody(env))["JobId"] as? String)
            await expectCode("LimitExceeded.JobQuota") { try await stack.call("SubmitJob", jobBody(env)) }

            // The operator gives this user three; others keep the default.
            let bob = try await stack.createUser("bob")
            #expect(try await stack.admin(["set-quota", "e2e-user", "--jobs", "3"]).status == 0)
            let second = try unwrap(try await stack.call("SubmitJob", jobBody(env))["JobId"] as? String)
            _ = try await stack.call("SubmitJob", jobBody(env, command: "sleep 300"))
            do {
                _ = try await stack.call("SubmitJob", jobBody(env))
                Issue.record("a fourth job was accepted")
            } catch let error as APICallError {
                #expect(error.code == "LimitExceeded.JobQuota")
                #expect(error.message.contains("quota of 3 jobs"), "\(error.message)")
            }
            let bobEnv = try unwrap(
                try await stack.call(
                    "CreateComputeEnv", ["ComputeEnv": ["EnvName": "bob", "DesiredComputeNodeCount": 0]], as: bob)[
                        "EnvId"] as? String)
            _ = try await stack.call("SubmitJob", jobBody(bobEnv), as: bob)
            await expectCode("LimitExceeded.JobQuota") { try await stack.call("SubmitJob", jobBody(bobEnv), as: bob) }
            let refused = try await stack.admin(["set-quota", "e2e-user", "--jobs=-1"])
            #expect(refused.status == 1 && refused.stderr.contains("JobQuota"), "\(refused.stderr)")

            // Two seconds after they end, the finished jobs are gone as DeleteJob removes them; the running one stays
            // and the quota has room again.
            for job in [first, second] { _ = try await stack.waitForJob(job) }
            try await waitUntil("the ended jobs are removed") {
                try await stack.rowCount("jobs") == 2  // the running job and bob's, which never runs
            }
            await expectCode("ResourceNotFound.Job") { try await stack.call("DescribeJob", ["JobId": first]) }
            _ = try await stack.call("SubmitJob", jobBody(env))
            _ = try await stack.call("SubmitJob", jobBody(env))
            await expectCode("LimitExceeded.JobQuota") { try await stack.call("SubmitJob", jobBody(env)) }
        }
    }

    @Test("bad input answers its code and leaves no row behind")
    func badInput() async throws {
        try await Stack.run(settings: ["BATCH_QUOTA_JOBS": "2", "BATCH_QUOTA_TEMPLATES": "1", "BATCH_QUOTA_ENVS": "1"])
        {
            stack in
            let env = try await stack.createEnv(nodes: 0)
            let tables = ["jobs", "tasks", "task_templates", "compute_envs", "outbox"]
            var before: [String: Int] = [:]
            for table in tables { before[table] = try await stack.rowCount(table) }
            let cases: [(String, String, [UInt8])] = [
                ("InvalidParameter", "SubmitJob", Array("{\"Job\": {".utf8)),
                ("InvalidParameter", "SubmitJob", Array("[1, 2]".utf8)),
                ("InvalidParameter", "SubmitJob", json(["Job": ["Tasks": "not a list"]])),
                ("MissingParameter", "SubmitJob", json(["Job": ["JobName": "x"]])),
                ("MissingParameter", "DescribeJob", json([:])),
                ("InvalidParameter.JobIdMalformed", "DescribeJob", json(["JobId": "12345"])),
                (
                    "InvalidParameterValue.DependenceUnfeasible", "SubmitJob",
                    json([
                        "Job": [
                            "Tasks": [
                                [
                                    "TaskName": "a", "EnvId": env,
                                    "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                                ],
                                [
                                    "TaskName": "b", "EnvId": env,
                                    "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                                ],
                            ],
                            "Dependences": [["StartTask": "a", "EndTask": "b"], ["StartTask": "b", "EndTask": "a"]],
                        ]
                    ])
                ),
                (
                    "ResourceNotFound.TaskTemplate", "SubmitJob",
                    json(["Job": ["Tasks": [["TaskName": "a", "TaskTemplateId": "tmpl-nosuchtp", "EnvId": env]]]])
                ),
                ("InvalidAction", "LaunchMissiles", json([:])),
                (
                    "InvalidParameterValue.InvalidFilter", "DescribeJobs",
                    json(["Filters": [["Name": "owner", "Values": ["x"]]]])
                ),
                ("InvalidParameterValue", "DescribeJobs", json(["Limit": 1000])),
                (
                    "LimitExceeded.ComputeEnvQuota", "CreateComputeEnv",
                    json(["ComputeEnv": ["EnvName": "two", "DesiredComputeNodeCount": 0]])
                ),
            ]
            for (code, action, body) in cases {
                await expectCode(code) { try await stack.call(action, body) }
            }
            // The job quota: two jobs fit, the third is refused.
            for _ in 0..<2 { _ = try await stack.call("SubmitJob", jobBody(env)) }
            let afterTwo = try await stack.rowCount("jobs")
            await expectCode("LimitExceeded.JobQuota") { try await stack.call("SubmitJob", jobBody(env)) }
            #expect(try await stack.rowCount("jobs") == afterTwo)
            let template: [String: Any] = [
                "TaskTemplateName": "t",
                "TaskTemplateInfo": ["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]],
            ]
            _ = try await stack.call("CreateTaskTemplate", template)
            await expectCode("LimitExceeded.TaskTemplateQuota") { try await stack.call("CreateTaskTemplate", template) }
            #expect(try await stack.rowCount("task_templates") == before["task_templates", default: 0] + 1)
            // Nothing else was written by the refused calls.
            #expect(try await stack.rowCount("compute_envs") == before["compute_envs"])
            #expect(try await stack.rowCount("tasks") == before["tasks", default: 0] + 2)

            // An oversized body is refused before it is read, with HTTP 413 and the API's shape.
            let big = Array(repeating: UInt8(ascii: "x"), count: (1 << 20) + 1)
            let (status, response) = try await stack.send(
                headers: [("X-TC-Action", "SubmitJob"), ("Content-Type", "application/json")], body: big)
            #expect(status == 413)
            #expect((response["Error"] as? [String: Any])?["Code"] as? String == "RequestSizeLimitExceeded")
        }
    }

    /// Whether `user`'s key pair is refused (`AuthFailure.SecretIdNotFound`) within 15 s: the gateway caches
    /// credentials for at most 5 s.
    static func refusedSoon(_ user: Stack.User, by stack: Stack) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            do {
                _ = try await stack.call("DescribeJobs", [:], as: user)
                try await Task.sleep(for: .milliseconds(250))
            } catch let error as APICallError {
                #expect(error.code == "AuthFailure.SecretIdNotFound")
                return true
            }
        }
        return false
    }

    @Test("authentication: missing, malformed, wrong, stale, unknown and disabled credentials are refused")
    func authentication() async throws {
        try await Stack.run { stack in
            let body = Array("{}".utf8)
            let now = Int(Date().timeIntervalSince1970)
            func signed(secretID: String? = nil, secretKey: String? = nil, timestamp: Int = now) -> [(String, String)] {
                TC3Signature.signedRequestHeaders(
                    secretID: secretID ?? stack.secretID, secretKey: secretKey ?? stack.secretKey, host: stack.endpoint,
                    action: "DescribeJobs", body: body, timestamp: timestamp)
            }
            func code(_ headers: [(String, String)]) async throws -> String? {
                let (status, response) = try await stack.send(headers: headers, body: body)
                #expect(status == 200)
                #expect(response["RequestId"] is String)
                return (response["Error"] as? [String: Any])?["Code"] as? String
            }
            #expect(try await code(signed()) == nil)
            #expect(try await code(signed().filter { $0.0 != "Authorization" }) == "AuthFailure.MissingAuthorization")
            #expect(
                try await code(signed().map { $0.0 == "Authorization" ? ($0.0, "Bearer token") : $0 })
                    == "AuthFailure.InvalidAuthorization")
            #expect(try await code(signed(secretKey: "wrong")) == "AuthFailure.SignatureFailure")
            #expect(try await code(signed(timestamp: now - 600)) == "AuthFailure.SignatureExpire")
            #expect(
                try await code(signed(secretID: "AKIDunknownunknownunknownunknown00")) == "AuthFailure.SecretIdNotFound"
            )
            // A tampered body no longer matches its signature.
            let (_, tampered) = try await stack.send(headers: signed(), body: Array("{\"Limit\": 5}".utf8))
            #expect((tampered["Error"] as? [String: Any])?["Code"] as? String == "AuthFailure.SignatureFailure")

            let carol = try await stack.createUser("carol")
            #expect(try await stack.call("DescribeJobs", [:], as: carol)["TotalCount"] as? Int == 0)
            #expect(try await stack.admin(["disable-user", "carol"]).status == 0)
            #expect(try await Self.refusedSoon(carol, by: stack))
            let missing = try await stack.admin(["disable-user", "nobody"])
            #expect(missing.status == 1)
            #expect(missing.stderr == "batchctl: ResourceNotFound.User: UserName: no user named nobody\n")
        }
    }

    @Test("key pairs: the operator lists, adds and revokes a user's; a revoked one is refused, the others still work")
    func keyPairs() async throws {
        try await Stack.run { stack in
            func json(_ result: TestServers.ProgramResult) throws -> [String: Any] {
                #expect(result.status == 0, "\(result.stderr)")
                return try unwrap(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            }
            func listed() async throws -> [String: String] {
                let pairs = try json(try await stack.admin(["key-pairs", "dave", "--output", "json"]))["KeyPairs"]
                var status: [String: String] = [:]
                for pair in try unwrap(pairs as? [[String: Any]]) {
                    status[try unwrap(pair["SecretId"] as? String)] = try unwrap(pair["Status"] as? String)
                    #expect(pair["SecretKey"] == nil)
                }
                return status
            }
            let dave = try await stack.createUser("dave")
            let added = try json(try await stack.admin(["add-key-pair", "dave", "--output", "json"]))
            let second = Stack.User(
                name: "dave", secretID: try unwrap(added["secretId"] as? String),
                secretKey: try unwrap(added["secretKey"] as? String))
            #expect(second.secretID != dave.secretID)
            #expect(try await stack.call("DescribeJobs", [:], as: second)["TotalCount"] as? Int == 0)
            #expect(try await listed() == [dave.secretID: "ACTIVE", second.secretID: "ACTIVE"])

            #expect(try await stack.admin(["revoke-key-pair", "dave", dave.secretID]).status == 0)
            #expect(try await listed() == [dave.secretID: "REVOKED", second.secretID: "ACTIVE"])
            #expect(try await Self.refusedSoon(dave, by: stack))
            #expect(try await stack.call("DescribeJobs", [:], as: second)["TotalCount"] as? Int == 0)

            let unknown = try await stack.admin(["revoke-key-pair", "dave", "AKIDnope"])
            #expect(unknown.status == 1)
            #expect(
                unknown.stderr == "batchctl: ResourceNotFound.KeyPair: SecretId: user dave has no key pair AKIDnope\n")
            for arguments in [["key-pairs", "nobody"], ["add-key-pair", "nobody"]] {
                let missing = try await stack.admin(arguments)
                #expect(missing.status == 1)
                #expect(missing.stderr == "batchctl: ResourceNotFound.User: UserName: no user named nobody\n")
            }
            // The operator's own key pair cannot revoke itself; a tenant's key pair may not touch key pairs at all.
            let operatorFile = try unwrap(stack.environment["BATCH_OPERATOR_CREDENTIALS"])
            let operatorPair = try unwrap(
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: operatorFile)))
                    as? [String: Any])
            let own = try unwrap(operatorPair["secretId"] as? String)
            let itself = try await stack.admin(["revoke-key-pair", "operator", own])
            #expect(itself.status == 1)
            #expect(
                itself.stderr.hasPrefix("batchctl: UnsupportedOperation: SecretId: the request is signed with this"))
            #expect(try await stack.admin(["key-pairs", "operator"]).stdout.contains("\(own)  ACTIVE"))
            for (action, body) in [
                ("CreateUserKeyPair", ["UserName": "dave"]), ("DescribeUserKeyPairs", ["UserName": "dave"]),
                ("RevokeUserKeyPair", ["UserName": "operator", "SecretId": own]),
            ] {
                do {
                    _ = try await stack.call(action, body, as: second)
                    Issue.record("a tenant's key pair was allowed \(action)")
                } catch let error as APICallError {
                    #expect(error.code == "UnauthorizedOperation")
                }
            }
            #expect(try await listed().count == 2)
        }
    }

    @Test("health, readiness and Prometheus metrics by action and outcome")
    func operations() async throws {
        try await Stack.run { stack in
            _ = try? await stack.call("DescribeJobs", [:])
            _ = try? await stack.call("DescribeJob", ["JobId": "job-nosuchjb"])
            for path in ["healthz", "readyz"] {
                let response = try await stack.http.execute(
                    HTTPClientRequest(url: "\(stack.baseURL)/\(path)"), timeout: .seconds(5))
                #expect(response.status == .ok)
            }
            let metrics = try await stack.http.execute(
                HTTPClientRequest(url: "\(stack.baseURL)/metrics"), timeout: .seconds(5))
            let text = String(buffer: try await metrics.body.collect(upTo: 1 << 20))
            #expect(text.contains(#"batch_api_requests_total{action="DescribeJobs",outcome="ok"} 1"#))
            #expect(text.contains(#"batch_api_requests_total{action="DescribeJob",outcome="ResourceNotFound"} 1"#))
            #expect(text.contains("batch_api_request_duration"))
        }
    }
}

func json(_ object: [String: Any]) -> [UInt8] { Array(try! JSONSerialization.data(withJSONObject: object)) }
