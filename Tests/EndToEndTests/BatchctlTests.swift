import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// batchctl against the running stack: every command, its tables and `--output json`, and its errors.
@Suite("batchctl: the command-line client", .serialized, .timeLimit(.minutes(5)))
struct BatchctlTests {
    static let binary = Stack.binDirectory.appendingPathComponent("batchctl").path

    /// Runs batchctl with the stack's gateway and key pair (and no credentials file).
    func batchctl(_ stack: Stack, _ arguments: [String], credentials: Bool = true) async throws
        -> TestServers.ProgramResult
    {
        var environment = ["PATH": "/usr/bin:/bin", "BATCH_CREDENTIALS": "/nonexistent/credentials"]
        if credentials {
            environment["BATCH_ENDPOINT"] = stack.endpoint
            environment["BATCH_SECRET_ID"] = stack.secretID
            environment["BATCH_SECRET_KEY"] = stack.secretKey
        }
        return try await TestServers.run(Self.binary, arguments, environment: environment)
    }

    func json(_ result: TestServers.ProgramResult) throws -> [String: Any] {
        try unwrap(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    @Test("environments, submit from YAML with --set and --wait, the reading commands, graph, logs, delete")
    func commands() async throws {
        try await Stack.run { stack in
            let created = try await batchctl(stack, ["envs", "create", "cli", "--nodes", "1"])
            #expect(created.status == 0, "\(created.stderr)")
            let env = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(env.hasPrefix("env-"))
            #expect(try await batchctl(stack, ["envs"]).stdout.contains(env))
            try await waitUntil("the node runs") {
                try await batchctl(stack, ["envs", "describe", env]).stdout.contains("RUNNING")
            }

            let file = stack.directory.appendingPathComponent("job.yaml")
            try """
            JobName: from-yaml
            Dependences:
              - {StartTask: first, EndTask: second}
            Tasks:
              - TaskName: first
                EnvId: placeholder
                TaskInstanceNum: 1
                Application: {DeliveryForm: LOCAL, Command: "echo hello from $BATCH_TASK_NAME"}
              - TaskName: second
                EnvId: placeholder
                Application: {DeliveryForm: LOCAL, Command: "echo second $BATCH_TASK_INSTANCE_INDEX"}
            """.write(to: file, atomically: true, encoding: .utf8)
            let submitted = try await batchctl(
                stack,
                [
                    "submit", file.path, "--set", "Tasks[0].EnvId=\(env)", "--set", "Tasks[1].EnvId=\(env)", "--set",
                    "Tasks[1].TaskInstanceNum=3", "--wait",
                ])
            #expect(submitted.status == 0, "\(submitted.stderr)")
            let jobID = String(submitted.stdout.prefix { $0 != "\n" })
            #expect(jobID.hasPrefix("job-"))
            #expect(submitted.stdout.contains("job \(jobID) SUCCEED"))

            let jobs = try await batchctl(stack, ["jobs"])
            #expect(jobs.stdout.contains(jobID) && jobs.stdout.contains("from-yaml") && jobs.stdout.contains("SUCCEED"))
            let described = try await batchctl(stack, ["describe", jobID])
            #expect(described.stdout.contains("state    SUCCEED"))
            let tasks = try await batchctl(stack, ["tasks", jobID])
            #expect(tasks.stdout.split(separator: "\n").contains { $0.hasPrefix("second") && $0.contains("SUCCEED") })
            let instances = try json(try await batchctl(stack, ["instances", jobID, "second", "--output", "json"]))
            #expect(instances["TaskInstanceTotalCount"] as? Int == 3)
            let why = try await batchctl(stack, ["why", jobID])
            #expect(why.stdout.hasPrefix("job \(jobID) is SUCCEED"))
            let logs = try await batchctl(stack, ["logs", jobID, "second", "2"])
            #expect(logs.stdout == "second 2\n")
            let graph = try await batchctl(stack, ["graph", jobID])
            #expect(graph.stdout.contains("\"first\" -> \"second\";"))
            #expect(graph.stdout.contains("fillcolor=palegreen"))

            let deleted = try await batchctl(stack, ["delete", jobID])
            #expect(deleted.status == 0, "\(deleted.stderr)")
            let gone = try await batchctl(stack, ["describe", jobID])
            #expect(gone.status == 1)
            #expect(gone.stderr == "batchctl: ResourceNotFound.Job: JobId: no job \(jobID)\n")

            let scaled = try await batchctl(stack, ["envs", "scale", env, "2"])
            #expect(scaled.status == 0, "\(scaled.stderr)")
            let view = try json(try await batchctl(stack, ["envs", "describe", env, "--output", "json"]))
            #expect(view["DesiredComputeNodeCount"] as? Int == 2)
            let removed = try await batchctl(stack, ["envs", "delete", env])
            #expect(removed.status == 0, "\(removed.stderr)")
            try await waitUntil("the environment is gone") {
                !(try await batchctl(stack, ["envs"]).stdout.contains(env))
            }
            let called = try json(try await batchctl(stack, ["call", "DescribeJobs", #"{"Limit": 1}"#]))
            #expect(called["TotalCount"] as? Int == 0)
        }
    }

    @Test("terminate, retry, templates, and why for a waiting instance")
    func changes() async throws {
        try await Stack.run { stack in
            // No nodes: the instance waits, and why says so.
            let env = try await stack.createEnv(nodes: 0)
            let jobID = try await stack.submit(
                "waiting", env: env,
                tasks: [["TaskName": "idle", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]]])
            try await waitUntil("the instance waits for a node") {
                try await batchctl(stack, ["why", jobID, "idle"]).stdout.contains("free slot")
            }
            let terminated = try await batchctl(stack, ["terminate", jobID])
            #expect(terminated.status == 0, "\(terminated.stderr)")
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            let retried = try await batchctl(stack, ["retry", jobID])
            #expect(retried.status == 0, "\(retried.stderr)")

            let task = stack.directory.appendingPathComponent("task.json")
            try #"{"TaskName": "tpl", "Application": {"DeliveryForm": "LOCAL", "Command": "true"}}"#.write(
                to: task, atomically: true, encoding: .utf8)
            let template = try await batchctl(stack, ["templates", "create", "cli-template", task.path])
            #expect(template.status == 0, "\(template.stderr)")
            let id = template.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try await batchctl(stack, ["templates"]).stdout.contains("cli-template"))
            #expect(try await batchctl(stack, ["templates", "delete", id]).status == 0)
            #expect(try await !batchctl(stack, ["templates"]).stdout.contains("cli-template"))
        }
    }

    @Test("errors are one line on stderr and a non-zero exit: unknown job, bad YAML with its line, no credentials")
    func errors() async throws {
        try await Stack.run { stack in
            let unknown = try await batchctl(stack, ["describe", "job-zzzzzzzz"])
            #expect(unknown.status == 1)
            #expect(unknown.stderr == "batchctl: ResourceNotFound.Job: JobId: no job job-zzzzzzzz\n")
            #expect(unknown.stdout.isEmpty)

            let bad = stack.directory.appendingPathComponent("bad.yaml")
            try "JobName: broken\nTasks:\n  - TaskName: a\n    Application: {DeliveryForm: LOCAL\n".write(
                to: bad, atomically: true, encoding: .utf8)
            let parsed = try await batchctl(stack, ["submit", bad.path])
            #expect(parsed.status == 1)
            #expect(parsed.stderr.hasPrefix("batchctl: \(bad.path): line 5"), "\(parsed.stderr)")
            #expect(parsed.stderr.split(separator: "\n").count == 1)

            let anonymous = try await batchctl(stack, ["jobs"], credentials: false)
            #expect(anonymous.status == 1)
            #expect(anonymous.stderr.hasPrefix("batchctl: no key pair"))
            #expect(anonymous.stderr.split(separator: "\n").count == 1)
        }
    }

    @Test("watch in a terminal: the counts change as the job runs and the view ends with the job")
    func watchInATerminal() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let jobID = try await stack.submit(
                "watched", env: env,
                tasks: [
                    [
                        "TaskName": "steps", "TaskInstanceNum": 6,
                        "Application": ["DeliveryForm": "LOCAL", "Command": "sleep 0.5"],
                    ]
                ])
            // `script` gives batchctl a pseudo-terminal, as a user's shell would.
            let command = [
                Self.binary, "watch", jobID, "--endpoint", stack.endpoint, "--secret-id", stack.secretID,
                "--secret-key", stack.secretKey,
            ].joined(separator: " ")
            let result = try await TestServers.run(
                "/usr/bin/script", ["-qefc", command, "/dev/null"], environment: ["PATH": "/usr/bin:/bin"])
            #expect(result.status == 0, "\(result.stdout)")
            // A terminal ends lines with \r\n, one Character: split on any newline.
            let progress = result.stdout.split(whereSeparator: \.isNewline).filter {
                $0.contains("steps") && $0.contains("done")
            }
            let done = progress.compactMap { line in
                line.split(separator: " ").first { $0.contains("/6") }.flatMap { Int($0.prefix { $0 != "/" }) }
            }
            #expect(Set(done).count >= 2, "\(result.stdout)")
            #expect(done.last == 6)
            #expect(result.stdout.contains("job \(jobID) SUCCEED"))
        }
    }

    @Test("over HTTPS with --ca-certificate: calls go through; without the CA, one line saying why and nothing done")
    func https() async throws {
        try await Stack.run(tls: true) { stack in
            var environment = [
                "PATH": "/usr/bin:/bin", "BATCH_CREDENTIALS": "/nonexistent/credentials",
                "BATCH_ENDPOINT": "https://\(stack.endpoint)", "BATCH_SECRET_ID": stack.secretID,
                "BATCH_SECRET_KEY": stack.secretKey,
            ]
            // The gateway made its own CA; the system's roots do not know it.
            let untrusted = try await TestServers.run(
                Self.binary, ["envs", "create", "no-ca"], environment: environment)
            #expect(untrusted.status != 0)
            #expect(untrusted.stderr.contains("cannot reach the gateway at \(stack.endpoint)"), "\(untrusted.stderr)")
            #expect(untrusted.stderr.split(separator: "\n").count == 1, "\(untrusted.stderr)")
            #expect(try await stack.call("DescribeComputeEnvs", [:])["TotalCount"] as? Int == 0)

            let created = try await TestServers.run(
                Self.binary, ["envs", "create", "over-tls", "--ca-certificate", stack.certificatePath],
                environment: environment)
            #expect(created.status == 0, "\(created.stderr)")
            let env = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(env.hasPrefix("env-"))
            environment["BATCH_CA_CERTIFICATE"] = stack.certificatePath
            let listed = try await TestServers.run(Self.binary, ["envs"], environment: environment)
            #expect(listed.status == 0 && listed.stdout.contains(env), "\(listed.stderr)")

            // What it made: the CA (never its key), the certificate and the key, readable by the gateway alone.
            let directory = (stack.certificatePath as NSString).deletingLastPathComponent
            let manager = FileManager.default
            #expect(
                try manager.contentsOfDirectory(atPath: directory).sorted() == ["ca.pem", "gateway.key", "gateway.pem"])
            func mode(_ path: String) throws -> Int? {
                try manager.attributesOfItem(atPath: path)[.posixPermissions] as? Int
            }
            #expect(try mode(directory) == 0o700)
            #expect(try mode(directory + "/gateway.key") == 0o600)
            // Another gateway on the same directory serves what the first made: clients that trust the CA reach it.
            let ca = try String(contentsOfFile: stack.certificatePath, encoding: .utf8)
            let portFile = stack.directory.appendingPathComponent("second-gateway.port").path
            let second = try ServiceProcess(
                Stack.binDirectory.appendingPathComponent("APIGateway").path, [],
                environment: stack.environment.merging(["BATCH_GATEWAY_PORT_FILE": portFile]) { $1 },
                log: stack.directory.appendingPathComponent("second-gateway.log").path)
            defer { second.signal(SIGTERM) }
            var port = 0
            try await waitUntil("the second gateway listens") {
                port =
                    Int(
                        (try? String(contentsOfFile: portFile, encoding: .utf8))?
                            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
                return port > 0
            }
            environment["BATCH_ENDPOINT"] = "https://127.0.0.1:\(port)"
            let again = try await TestServers.run(Self.binary, ["envs"], environment: environment)
            #expect(try String(contentsOfFile: stack.certificatePath, encoding: .utf8) == ca)
            #expect(again.status == 0 && again.stdout.contains(env), "\(again.stderr)")
        }
    }

    @Test("profiles: configure writes them for the owner alone; --profile, BATCH_PROFILE and [default] pick one")
    func profiles() async throws {
        try await Stack.run { stack in
            let home = stack.directory.appendingPathComponent("config-home")
            let file = home.appendingPathComponent("batch/config").path
            func run(_ arguments: [String], _ extra: [String: String] = [:]) async throws -> TestServers.ProgramResult {
                try await TestServers.run(
                    Self.binary, arguments,
                    environment: [
                        "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": home.path,
                        "BATCH_CREDENTIALS": "/nonexistent/credentials",
                    ].merging(extra) { $1 })
            }
            var gateway = ["--endpoint", stack.baseURL]
            if stack.tls { gateway += ["--ca-certificate", stack.certificatePath] }
            // The default profile names the gateway and no key pair; the named one a key pair too, its secret key
            // given on stdin.
            #expect(try await run(["configure"] + gateway).status == 0)
            let written = try await TestServers.run(
                "/bin/sh",
                [
                    "-c", #"key="$0"; batchctl="$1"; shift; printf '%s\n' "$key" | "$batchctl" configure "$@""#,
                    stack.secretKey, Self.binary, "--profile", "e2e", "--secret-key", "-",
                ] + gateway + ["--secret-id", stack.secretID],
                environment: ["PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": home.path])
            #expect(written.status == 0, "\(written.stderr)")
            #expect(written.stdout == "profile e2e written to \(file)\n")
            let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
            #expect(mode == 0o600)
            let text = try String(contentsOfFile: file, encoding: .utf8)
            #expect(text.hasPrefix("[default]\nendpoint = \(stack.baseURL)\n"))
            #expect(text.contains("\n\n[profile e2e]\nendpoint = \(stack.baseURL)\nsecret_id = \(stack.secretID)\n"))
            #expect(text.contains("secret_key = \(stack.secretKey)\n"))

            #expect(try await run(["envs", "--profile", "e2e"]).status == 0)
            #expect(try await run(["envs"], ["BATCH_PROFILE": "e2e"]).status == 0)
            // --profile wins over the environment; BATCH_PROFILE and [default] do not.
            let wrong = ["BATCH_SECRET_ID": "AKID" + String(repeating: "0", count: 32)]
            #expect(try await run(["envs", "--profile", "e2e"], wrong).status == 0)
            let overridden = try await run(["envs"], wrong.merging(["BATCH_PROFILE": "e2e"]) { $1 })
            #expect(overridden.status == 1)
            #expect(overridden.stderr.contains("AuthFailure.SecretIdNotFound"), "\(overridden.stderr)")
            let keyless = try await run(["envs"])
            #expect(
                keyless.stderr
                    == "batchctl: no key pair: give --secret-id and --secret-key, or a profile (batchctl configure)\n")

            let unknown = try await run(["envs", "--profile", "nope"])
            #expect(unknown.status == 1)
            #expect(
                unknown.stderr
                    == "batchctl: profile nope is not in \(file): write it with batchctl configure --profile nope\n")
            // A file others may read refuses to serve its secret key.
            #expect(chmod(file, 0o644) == 0)
            let exposed = try await run(["envs", "--profile", "e2e"])
            #expect(exposed.status == 1)
            #expect(
                exposed.stderr
                    == "batchctl: \(file) holds a secret key and others may read it (mode 644): chmod 600 it\n")
            #expect(chmod(file, 0o600) == 0)
            try "[profile e2e]\nregion = x\n".write(toFile: file, atomically: true, encoding: .utf8)
            let malformed = try await run(["envs"])
            #expect(malformed.status == 1)
            #expect(malformed.stderr.hasPrefix("batchctl: \(file):2: expected KEY = VALUE under a section"))
        }
    }

    @Test("admin through the gateway: only an operator's key pair may, node keys match, no database in reach")
    func admin() async throws {
        try await Stack.run { stack in
            // The gateway wrote the operator's key pair on start, readable by its owner alone.
            let path = try unwrap(stack.environment["BATCH_OPERATOR_CREDENTIALS"])
            let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
            #expect(mode == 0o600)

            // A tenant's key pair is refused every admin action, and nothing is made.
            for arguments in [
                ["create-user", "mallory"], ["disable-user", "e2e-user"], ["node-key", "env-00000000"],
            ] {
                let refused = try await batchctl(stack, ["admin"] + arguments)
                #expect(refused.status == 1)
                #expect(
                    refused.stderr.hasPrefix("batchctl: UnauthorizedOperation: ")
                        && refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
            }
            let taken = try await stack.admin(["create-user", "mallory"])
            #expect(taken.status == 0, "mallory was not made by the tenant: \(taken.stderr)")

            let again = try await stack.admin(["create-user", "mallory"])
            #expect(again.stderr == "batchctl: ResourceInUse.User: UserName: a user named mallory exists already\n")
            let badName = try await stack.admin(["create-user", "no spaces"])
            #expect(badName.status == 1 && badName.stderr.contains("InvalidParameterValue: UserName: "))

            // An operator made by the operator may use the admin actions; its node key is the one nodes derive.
            let made = try await stack.admin(["create-user", "ops", "--operator", "--output", "json"])
            let ops = try json(made)
            #expect(ops["operator"] as? Bool == true)
            let env = try unwrap(
                try await stack.call(
                    "CreateComputeEnv", ["ComputeEnv": ["EnvName": "keyed", "DesiredComputeNodeCount": 0]])["EnvId"]
                    as? String)
            let opsFile = stack.directory.appendingPathComponent("ops.json").path
            try JSONSerialization.data(withJSONObject: ["secretId": ops["secretId"]!, "secretKey": ops["secretKey"]!])
                .write(to: URL(fileURLWithPath: opsFile))
            let key = try await stack.batchctl(["admin", "node-key", env], credentials: opsFile)
            #expect(key.status == 0, "\(key.stderr)")
            let expected = try stack.nodeKey(env).base64
            #expect(key.stdout == expected + "\n")
            let unknown = try await stack.admin(["node-key", "env-00000000"])
            #expect(
                unknown.stderr == "batchctl: ResourceNotFound.ComputeEnv: EnvId: no compute environment env-00000000\n")
        }
    }
}
