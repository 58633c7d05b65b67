import BatchCore
import Foundation
import Messaging
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A hostile tenant's job against the node that runs it and the control plane beside it, through the real stack:
/// every probe must fail, and the node must go on running other work to the end (docs/security.md).
@Suite("Isolation: a hostile tenant's job reaches nothing but its own work", .serialized, .timeLimit(.minutes(5)))
struct IsolationTests {
    func port(_ url: String?) -> Int? { url.flatMap { URLComponents(string: $0)?.port } }

    @Test(
        "no network to the node's services, no secret in reach, no launcher running the task's LD_PRELOAD, no sibling or executor to signal"
    )
    func networkEnvironmentAndProcesses() async throws {
        try await Stack.run { stack in
            let shared = stack.directory.appendingPathComponent("shared")
            // A library whose constructor leaves a mark naming the user and PID namespace of whatever loads it.
            let marks = shared.appendingPathComponent("preload")
            try FileManager.default.createDirectory(
                at: marks, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o1777])
            let source = stack.directory.appendingPathComponent("probe.c")
            try Data(
                """
                #include <stdio.h>
                #include <unistd.h>
                __attribute__((constructor)) static void probe(void) {
                    char ns[64] = "";
                    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
                    if (n > 0) ns[n] = 0;
                    char path[4096];
                    snprintf(path, sizeof path, "%s/%u %s %d", MARKS, getuid(), ns, getpid());
                    FILE *f = fopen(path, "w");
                    if (f) fclose(f);
                }
                """.utf8
            ).write(to: source)
            let library = shared.appendingPathComponent("probe.so")
            let compiled = try await TestServers.run(
                "/usr/bin/gcc",
                ["-shared", "-fPIC", "-DMARKS=\"\(marks.path)\"", "-o", library.path, source.path],
                environment: ["PATH": "/usr/bin:/bin"])
            try #require(compiled.status == 0, "gcc (Debian's gcc) must build the probe: \(compiled.stderr)")
            let hostProcesses = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/pid")

            let ports = [
                port(stack.environment["BATCH_AMQP_URL"]), port(stack.environment["BATCH_DATABASE_URL"]),
                stack.port, port(stack.environment["BATCH_S3_ENDPOINT"]),
                port(ProcessInfo.processInfo.environment["BATCH_RABBITMQ_MANAGEMENT_URL"]) ?? 15672,
            ].compactMap { $0 }
            #expect(ports.count == 5)
            let env = try await stack.createEnv(nodes: 1)
            try await waitUntil("the node runs") {
                try await processes(matching: "ExecutorService.*\(stack.directory.path)/nodes").count == 1
            }
            let executor = try unwrap(
                try await processes(matching: "ExecutorService.*\(stack.directory.path)/nodes").first)
            let probe = """
                import os, socket, sys
                for port in sys.argv[1:]:
                    s = socket.socket(); s.settimeout(3)
                    try:
                        s.connect(("127.0.0.1", int(port))); print(port, "reached")
                    except OSError:
                        print(port, "unreachable")
                seen = 0
                for pid in os.listdir("/proc"):
                    try:
                        text = open(f"/proc/{pid}/environ", "rb").read()
                    except OSError:
                        continue
                    seen += sum(text.count(k) for k in (b"BATCH_MASTER_KEY", b"BATCH_DATABASE_URL", b"BATCH_AMQP_URL"))
                print("secrets seen:", seen)
                """
            let gate = shared.appendingPathComponent("gate").path
            let jobID = try await stack.submit(
                "hostile-network", env: env,
                tasks: [
                    [
                        "TaskName": "probe",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": "python3 -c '\(probe)' \(ports.map(String.init).joined(separator: " "))",
                        ],
                        "EnvVars": [["Name": "LD_PRELOAD", "Value": library.path]],
                    ],
                    [
                        // Index 0 waits while index 1 looks for it, signals it, and signals the executor.
                        "TaskName": "pair", "TaskInstanceNum": 2,
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": """
                            if [ "$BATCH_TASK_INSTANCE_INDEX" = 0 ]; then \
                              sleep $((7 * 11111)) & touch \(gate).up; i=0; \
                              while [ ! -e \(gate).done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                              kill $! && echo "waited to the end"; \
                            else \
                              i=0; while [ ! -e \(gate).up ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                              found=$(for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null \
                                | grep -c "slee[p] $((7 * 11111))"); \
                              echo "sibling seen: $found"; \
                              kill -KILL \(executor) 2>/dev/null && echo "executor: signalled" || echo "executor: out of reach"; \
                              kill -KILL -1 2>/dev/null; touch \(gate).done; echo done; \
                            fi
                            """,
                        ],
                    ],
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let said = try await stack.stdout(jobID, "probe")[0] ?? ""
            #expect(
                said == ports.map { "\($0) unreachable\n" }.joined() + "secrets seen: 0\n", "\(said)")
            let pair = try await stack.stdout(jobID, "pair")
            #expect(pair[0] == "waited to the end\n", "\(pair)")
            #expect(pair[1] == "sibling seen: 0\nexecutor: out of reach\ndone\n", "\(pair)")
            // The task's LD_PRELOAD was loaded only inside the sandbox (its own PID namespace), never by the launcher.
            let loaded = try FileManager.default.contentsOfDirectory(atPath: marks.path)
            #expect(!loaded.isEmpty)
            #expect(loaded.allSatisfy { !$0.contains(hostProcesses) }, "\(loaded) (host: \(hostProcesses))")
            // The node is the same process, and still takes work.
            #expect(try await processes(matching: "ExecutorService.*\(stack.directory.path)/nodes") == [executor])
            let after = try await stack.submit(
                "after", env: env,
                tasks: [["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "echo alive"]]])
            #expect(try await stack.waitForJob(after)["JobState"] as? String == "SUCCEED")
        }
    }

    @Test(
        "file:// only inside the storage roots and as the instance's user; no unsandboxed environment, host option or log name that climbs out"
    )
    func storageAndChoices() async throws {
        try await Stack.run { stack in
            let shared = stack.directory.appendingPathComponent("shared")
            // The node's own secret (as .batch/master.key is to the quick start's nodes), outside every root.
            let secret = stack.directory.appendingPathComponent("master.key")
            try Data("k1:the master key".utf8).write(to: secret)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: secret.path)
            let rootOnly = shared.appendingPathComponent("root-only.txt")
            try Data("root's".utf8).write(to: rootOnly)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: rootOnly.path)
            let link = shared.appendingPathComponent("innocent.txt")
            try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: secret.path)
            let input = stack.data.appendingPathComponent("in.txt")
            try Data("the tenant's own input".utf8).write(to: input)
            let underRoot = "/root/batch-isolation-\(UUID().uuidString.prefix(8))"

            // The sandbox is not a tenant's choice.
            let envsBefore = try await stack.rowCount("compute_envs")
            await #expect {
                try await stack.call(
                    "CreateComputeEnv",
                    ["ComputeEnv": ["EnvName": "bare", "DesiredComputeNodeCount": 1, "Sandbox": false]])
            } throws: { error in
                let error = error as? APICallError
                return error?.code == "UnauthorizedOperation"
                    && error?.message.contains("ComputeEnv.Sandbox") == true
            }
            #expect(try await stack.rowCount("compute_envs") == envsBefore)
            let env = try await stack.createEnv(nodes: 1)

            // Host options for the container runtime and log names that climb out are refused, naming the field.
            let jobsBefore = try await stack.rowCount("jobs")
            for (task, field, word) in [
                (
                    [
                        "TaskName": "privileged",
                        "Application": [
                            "DeliveryForm": "LOCAL", "Command": "true",
                            "Docker": ["Image": "debian", "DockerRunOption": "--privileged -v /:/host"],
                        ],
                    ] as [String: Any], "Job.Tasks[0].Application.Docker.DockerRunOption", "--privileged"
                ),
                (
                    [
                        "TaskName": "climb",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                        "RedirectInfo": [
                            "StdoutRedirectPath": "file://\(stack.data.path)/logs/",
                            "StdoutRedirectFileName": "../../escaped",
                        ],
                    ], "Job.Tasks[0].RedirectInfo.StdoutRedirectFileName", "/",
                ),
            ] {
                await #expect {
                    _ = try await stack.submit("refused", env: env, tasks: [task])
                } throws: { error in
                    let error = error as? APICallError
                    return error?.code == "InvalidParameterValue" && error?.message.contains(field) == true
                        && error?.message.contains(word) == true
                }
            }
            #expect(try await stack.rowCount("jobs") == jobsBefore)

            func reading(_ name: String, _ source: String) -> [String: Any] {
                [
                    "TaskName": name,
                    "Application": ["DeliveryForm": "LOCAL", "Command": "cat /data/in/*"],
                    "InputMappings": [["SourcePath": source, "DestinationPath": "/data/in/"]],
                ]
            }
            let jobID = try await stack.submit(
                "hostile-storage", env: env,
                tasks: [
                    reading("master-key", "file://\(secret.path)"),
                    reading("root-only", "file://\(rootOnly.path)"),
                    reading("link-out", "file://\(link.path)"),
                    [
                        "TaskName": "write-root",
                        "Application": [
                            "DeliveryForm": "LOCAL", "Command": "mkdir -p /data/out && echo x > /data/out/x",
                        ],
                        "OutputMappings": [["SourcePath": "/data/out/", "DestinationPath": "file://\(underRoot)/"]],
                    ],
                    [
                        "TaskName": "log-link",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": """
                            ln -sf /etc/shadow "$BATCH_WORK_DIR/../stdout.log" 2>/dev/null && echo linked || \
                            echo "own output"
                            """,
                        ],
                    ],
                    reading("own", "file://\(input.path)").merging([
                        "OutputMappings": [
                            ["SourcePath": "/data/in/", "DestinationPath": "file://\(stack.data.path)/copied/"]
                        ]
                    ]) { $1 },
                ], extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            let expected = [
                "master-key": "outside the node's storage roots",
                "root-only": "cannot be copied as nobody",
                "link-out": "outside the node's storage roots",
                "write-root": "outside the node's storage roots",
            ]
            for (task, reason) in expected {
                let instance = try unwrap(try await stack.instances(jobID, task).first)
                let said = instance["StateReason"] as? String ?? ""
                #expect(instance["TaskInstanceState"] as? String == "FAILED", "\(task)")
                #expect(said.contains(reason), "\(task): \(said)")
                #expect(!said.contains("the master key") && !said.contains("root's"), "\(task): \(said)")
            }
            #expect(!FileManager.default.fileExists(atPath: underRoot))
            // Its logs are its own output, read through no link.
            let log = try await stack.call(
                "GetTaskInstanceLog", ["JobId": jobID, "TaskName": "log-link", "TaskInstanceIndex": 0])
            let text = (log["Log"] as? String).flatMap { Data(base64Encoded: $0) }.map {
                String(decoding: $0, as: UTF8.self)
            }
            #expect(text == "own output\n", "\(log)")
            #expect(try await stack.stdout(jobID, "own")[0] == "the tenant's own input")
            let copied = stack.data.appendingPathComponent("copied/in.txt")
            #expect(try String(contentsOf: copied, encoding: .utf8) == "the tenant's own input")
            var status = stat()
            #expect(stat(copied.path, &status) == 0 && status.st_uid == 65534, "written as nobody")
        }
    }

    @Test("memory, processes, file sizes and disk are limited per instance; the node runs other work to the end")
    func limits() async throws {
        try await Stack.run(settings: ["BATCH_INSTANCE_FILE_SIZE": "64", "BATCH_INSTANCE_DISK": "128"]) { stack in
            let response = try await stack.call(
                "CreateComputeEnv",
                ["ComputeEnv": ["EnvName": "small", "DesiredComputeNodeCount": 1, "InstanceMemoryLimit": 256]])
            let env = try unwrap(response["EnvId"] as? String)
            let jobID = try await stack.submit(
                "hostile-limits", env: env,
                tasks: [
                    [
                        "TaskName": "hog",
                        "Application": [
                            "DeliveryForm": "LOCAL", "Command": "python3 -c 'b = bytearray(4 << 30); print(len(b))'",
                        ],
                    ],
                    [
                        "TaskName": "bomb",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "bomb() { bomb | bomb & }; bomb"],
                    ],
                    [
                        // Processes that stay, forked until no more can be (in a subshell: dash exits when it cannot
                        // fork), then counted with a glob, which needs no fork.
                        "TaskName": "flood",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": """
                            (i=0; while [ $i -lt 5000 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; \
                                set -- /proc/[0-9]*; echo "processes: $#"; exit 3
                            """,
                        ],
                    ],
                    [
                        "TaskName": "filler",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": """
                            dd if=/dev/zero of=big bs=1M count=200 2>/dev/null; echo "dd: $?"; stat -c %s big
                            """,
                        ],
                    ],
                    [
                        // Many files, each under the file size limit, past the disk limit; then it waits to be stopped.
                        "TaskName": "files",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command":
                                "i=0; while [ $i -lt 256 ]; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); done; "
                                + "sleep 600",
                        ],
                    ],
                    ["TaskName": "after", "Application": ["DeliveryForm": "LOCAL", "Command": "echo alive"]],
                ],
                dependences: [
                    ("hog", "after"), ("bomb", "after"), ("flood", "after"), ("filler", "after"), ("files", "after"),
                ],
                extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            let hog = try unwrap(try await stack.instances(jobID, "hog").first)
            #expect(hog["TaskInstanceState"] as? String == "FAILED")
            #expect(
                (hog["StateReason"] as? String)?.contains("more than its memory limit of 256 MiB") == true, "\(hog)")
            // The bomb ends however its last fork went; the flood stopped at the limit (it forks until it cannot).
            let bomb = try unwrap(try await stack.instances(jobID, "bomb").first)
            #expect(["SUCCEED", "FAILED"].contains(bomb["TaskInstanceState"] as? String ?? ""), "\(bomb)")
            let flood = try unwrap(try await stack.instances(jobID, "flood").first)
            #expect(flood["ExitCode"] as? Int == 3, "\(flood)")
            let counted = try await stack.stdout(jobID, "flood")[0] ?? ""
            let seen = Int(counted.dropFirst("processes: ".count).dropLast()) ?? -1
            #expect(seen > 512 && seen <= 1024, "\(counted)")
            // dd is stopped by SIGXFSZ (128 + 25) at the 64 MiB limit.
            #expect(try await stack.stdout(jobID, "filler")[0] == "dd: 153\n\(64 << 20)\n")
            let files = try unwrap(try await stack.instances(jobID, "files").first)
            #expect(files["TaskInstanceState"] as? String == "FAILED")
            #expect(
                (files["StateReason"] as? String)?.contains("grew past its disk limit of 128 MiB") == true, "\(files)")
            let after = try unwrap(try await stack.instances(jobID, "after").first)
            #expect(after["TaskInstanceState"] as? String == "SUCCEED", "\(after)")
            // One node ran them all, the attack and the work after it.
            #expect(
                try await stack.query("SELECT DISTINCT node_id FROM task_instances WHERE job_id = '\(jobID)'").count
                    == 1)
            #expect(try await stack.stdout(jobID, "after")[0] == "alive\n")
            // Nothing of the bomb is left on the node.
            #expect(try await processes(matching: "bomb \\| bomb").isEmpty)
        }
    }

    @Test("a claim from a node of another environment is refused; the attempt runs on its own environment's node")
    func claimFromAnotherEnvironment() async throws {
        try await Stack.run { stack in
            func create(_ name: String) async throws -> String {
                let response = try await stack.call(
                    "CreateComputeEnv", ["ComputeEnv": ["EnvName": name, "DesiredComputeNodeCount": 1]])
                return try unwrap(response["EnvId"] as? String)
            }
            let (envA, envB) = (try await create("a"), try await create("b"))
            func node(of env: String) async throws -> String {
                try await stack.query(
                    "SELECT node_id FROM compute_nodes WHERE env_id = '\(env)' AND state = 'RUNNING'"
                ).first ?? ""
            }
            try await waitUntil("both environments have a running node") {
                let (a, b) = (try await node(of: envA), try await node(of: envB))
                return !a.isEmpty && !b.isEmpty
            }
            let (nodeA, nodeB) = (try await node(of: envA), try await node(of: envB))
            // Node A is stopped, so its run message waits for it in A's queue while a node of B claims the attempt.
            let executorA = try unwrap(
                Int32(try unwrap(try await processes(matching: "ExecutorService.*\(nodeA)").first)))
            kill(executorA, SIGSTOP)
            defer { kill(executorA, SIGCONT) }
            let jobID = try await stack.submit(
                "misrouted", env: envA,
                tasks: [["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "echo ran"]]])
            try await waitUntil("the instance is sent to A's nodes") {
                try await stack.query("SELECT attempt::text FROM task_instances WHERE dispatched") == ["1"]
            }
            // Node B claims it with B's key; then a holder of B's key claims it speaking as node A; then one with
            // no key at all.
            func claim(as node: String, proving env: String, key: String?) async throws {
                let claim = InstanceStarted(
                    jobID: JobID(rawValue: jobID), taskName: "t", instanceIndex: 0, attempt: 1,
                    nodeID: NodeID(rawValue: node), startedAt: Date())
                let reports = InstanceReports(
                    accepted: [claim], nodeID: NodeID(rawValue: node), envID: EnvID(rawValue: env),
                    proof: try key.map { try stack.nodeKey($0).proof(node: NodeID(rawValue: node)) })
                let body = String(decoding: try Envelope(reports).encoded(), as: UTF8.self)
                #expect(
                    try await RabbitManagement.publish(
                        vhost: stack.vhost, exchange: Topology.eventsExchange,
                        routingKey: Topology.Event.instanceReports, type: InstanceReports.type, body: body))
            }
            let log = stack.directory.appendingPathComponent("SchedulerService.log")
            func logged(_ line: String) -> Int {
                ((try? String(contentsOf: log, encoding: .utf8)) ?? "").components(separatedBy: line).count - 1
            }
            try await claim(as: nodeB, proving: envB, key: envB)
            try await waitUntil("the scheduler refuses the claim") {
                logged("claim from a node outside the task's environment refused") == 1
            }
            try await claim(as: nodeA, proving: envB, key: envB)
            try await waitUntil("the scheduler refuses the claim made in A's name") {
                logged("claim from a node outside the task's environment refused") == 2
            }
            try await claim(as: nodeA, proving: envA, key: nil)
            try await waitUntil("the scheduler ignores the claim without a key") {
                logged("reports of a node without its environment's key ignored") == 1
            }
            // Only the first claim was B's own and got a kill (to B). A was not told to kill the attempt (a node
            // told to kill one never runs it): it runs it below.
            #expect(try await stack.query("SELECT coalesce(node_id, '') FROM task_instances") != [nodeB])
            kill(executorA, SIGCONT)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            #expect(try await stack.query("SELECT node_id FROM task_instances") == [nodeA])
            #expect(try await stack.stdout(jobID, "t")[0] == "ran\n")
        }
    }

    @Test(
        "a node without its environment's key joins nothing and stops no node; run messages and command lines hold no secret"
    )
    func nodeKeys() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            var node = ""
            try await waitUntil("the environment's node runs") {
                node =
                    try await stack.query(
                        "SELECT node_id FROM compute_nodes WHERE env_id = '\(env)' AND state = 'RUNNING'"
                    ).first ?? ""
                return !node.isEmpty
            }
            let log = stack.directory.appendingPathComponent("ProvisionerService.log")
            func ignored(_ what: String) -> Int {
                ((try? String(contentsOf: log, encoding: .utf8)) ?? "")
                    .components(separatedBy: "\(what) of a node without its environment's key ignored").count - 1
            }
            func publish(_ payload: some MessageContract, _ routingKey: String) async throws {
                let body = String(decoding: try Envelope(payload).encoded(), as: UTF8.self)
                #expect(
                    try await RabbitManagement.publish(
                        vhost: stack.vhost, exchange: Topology.eventsExchange, routingKey: routingKey,
                        type: type(of: payload).type, body: body))
            }
            // A stranger's heartbeats, without a proof and with another environment's, do not make a node.
            let stranger = NodeID(rawValue: "node-0badc0de")
            for proof in [nil, try stack.nodeKey("env-00000000").proof(node: stranger)] {
                try await publish(
                    NodeHeartbeat(
                        nodeID: stranger, envID: EnvID(rawValue: env), slots: 64, freeSlots: 64, host: "evil",
                        pid: 1, at: Date(), proof: proof), Topology.Event.nodeHeartbeat)
            }
            // Nor does a word that the environment's node stopped remove it.
            try await publish(
                NodeStopped(nodeID: NodeID(rawValue: node), envID: EnvID(rawValue: env), at: Date()),
                Topology.Event.nodeStopped)
            try await waitUntil("the provisioner ignores all three") {
                ignored("heartbeat") == 2 && ignored("stop") == 1
            }
            #expect(try await stack.query("SELECT node_id FROM compute_nodes WHERE env_id = '\(env)'") == [node])

            // A copy of what the environment's work queue receives: the variable and the command are not in it.
            let copy = "isolation-copy-\(UUID().uuidString.prefix(8))"
            try await RabbitManagement.bindQueue(
                vhost: stack.vhost, queue: copy, exchange: Topology.commandsExchange,
                routingKey: Topology.workRoutingKey(env: env))
            let secret = "s3cret-\(UUID().uuidString)"
            let jobID = try await stack.submit(
                "sealed", env: env,
                tasks: [
                    [
                        "TaskName": "t",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "echo \"$TOKEN\" marker-of-the-command"],
                        "EnvVars": [["Name": "TOKEN", "Value": secret]],
                    ]
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            #expect(try await stack.stdout(jobID, "t")[0] == "\(secret) marker-of-the-command\n")
            let bodies = try await RabbitManagement.peek(vhost: stack.vhost, queue: copy)
            #expect(bodies.count == 1)
            for body in bodies {
                #expect(body.contains("\"sealed\""))
                #expect(!body.contains(secret) && !body.contains("marker-of-the-command") && !body.contains("TOKEN"))
            }

            // While an instance runs, no command line on the node holds its variables (every process may read
            // those): the slot's sandbox takes them on its socket.
            let running = stack.directory.appendingPathComponent("shared/running-\(UUID().uuidString.prefix(8))")
            let done = running.appendingPathExtension("done")
            let waiting = try await stack.submit(
                "waits", env: env,
                tasks: [
                    [
                        "TaskName": "t",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command": "touch \(running.path); while [ ! -e \(done.path) ]; do sleep 0.1; done",
                        ],
                        "EnvVars": [["Name": "TOKEN", "Value": secret]],
                    ]
                ])
            try await waitUntil("the instance runs") { FileManager.default.fileExists(atPath: running.path) }
            var lines: [String] = []
            for pid in try FileManager.default.contentsOfDirectory(atPath: "/proc") where Int(pid) != nil {
                guard let line = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
                if String(decoding: line, as: UTF8.self).contains(secret) { lines.append(pid) }
            }
            #expect(lines.isEmpty, "processes with the variable on their command line: \(lines)")
            try Data().write(to: done)
            #expect(try await stack.waitForJob(waiting)["JobState"] as? String == "SUCCEED")
        }
    }

    @Test("each service is its own broker user; a node's user publishes only its reports and consumes only its queues")
    func brokerRoles() async throws {
        // scripts/servers gave the users of the default vhost the permissions the code declares.
        for role in Topology.roles {
            let held = try await RabbitManagement.permissions(of: role.user, vhost: "/")
            #expect(held?.configure == role.configure && held?.write == role.write && held?.read == role.read)
            #expect(held?.eventsWrite == role.eventsWrite, "\(role.user)")
        }
        let python = try TestServers.pythonTool("BATCH_PYTHON", name: "python")
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            // Another environment, with its work queue (the provisioner declares it) and no node.
            let other = try await stack.createEnv(nodes: 0)
            let jobID = try await stack.submit(
                "roles", env: env,
                tasks: [["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]]])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            // Every service of the stack connected as its own user, the node as its environment's.
            // (The management API lists connections a few seconds after they open.)
            let control = Set(Topology.roles.map(\.user)).subtracting(["batch-executor"])
            try await waitUntil("the broker lists each service's connection under its own user") {
                try await RabbitManagement.connectionUsers(vhost: stack.vhost)
                    == control.union([Topology.nodeUser(env: env)])
            }
            let role = Topology.nodeRole(env: env)
            let held = try await RabbitManagement.permissions(of: role.user, vhost: stack.vhost)
            #expect(held?.configure == role.configure && held?.write == role.write && held?.read == role.read)
            #expect(held?.eventsWrite == role.eventsWrite)

            // The node's user, as a node of `env` derives it from its key.
            let broker = try AMQPURL(try unwrap(stack.environment["BATCH_EXECUTOR_AMQP_URL"]))
            let vhost = stack.vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? stack.vhost
            let nodeURL =
                "amqp://\(role.user):\(try stack.nodeKey(env).brokerPassword)@\(broker.host):\(broker.port)/\(vhost)"
            let script = TestServers.repositoryRoot.appendingPathComponent("Tests/EndToEndTests/Python/broker_roles.py")
            let result = try await TestServers.run(
                python, [script.path, nodeURL, env, other], environment: ["PATH": "/usr/bin:/bin"])
            #expect(result.status == 0, "\(result.stderr)")
            let outcome = try unwrap(
                try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: String])
            for refused in [
                "publish job.submitted", "publish env.deletion-requested", "publish a kill to another node",
                "publish a run to an environment", "consume the scheduler's queue", "consume the dead-letter queue",
                "declare an exchange", "declare a queue of its own", "consume another environment's work queue",
                "declare a node queue of another environment",
            ] {
                #expect(outcome[refused] == "refused 403", "\(refused): \(outcome[refused] ?? "-")")
            }
            for allowed in [
                "publish node.heartbeat", "publish a log reply", "consume its environment's work queue",
                "declare a node queue of its environment",
            ] {
                #expect(outcome[allowed] == "allowed", "\(allowed): \(outcome[allowed] ?? "-")")
            }

            // Its user goes with its environment.
            _ = try await stack.call("DeleteComputeEnv", ["EnvId": env])
            try await waitUntil("the environment's nodes' broker user is removed") {
                try await RabbitManagement.permissions(of: role.user, vhost: stack.vhost) == nil
            }
        }
    }

    @Test("the servers scripts/servers starts have no known password: no guest on the broker, no batch:batch")
    func noKnownPasswords() async throws {
        let environment = ProcessInfo.processInfo.environment
        let database = try unwrap(environment["BATCH_DATABASE_URL"].flatMap { URLComponents(string: $0) })
        let management = try unwrap(environment["BATCH_RABBITMQ_MANAGEMENT_URL"].flatMap { URLComponents(string: $0) })
        #expect(database.password != nil && database.password != "batch")
        #expect(management.user != "guest")
        for (user, password) in [("guest", "guest"), ("batch", "batch")] {
            let broker = try await TestServers.run(
                "/usr/bin/curl",
                [
                    "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", "\(user):\(password)",
                    "http://127.0.0.1:\(management.port ?? 15672)/api/overview",
                ], environment: nil)
            #expect(broker.stdout == "401", "\(user): \(broker.stdout)")
            let sql = try await TestServers.run(
                "/usr/bin/psql",
                ["postgres://\(user):\(password)@127.0.0.1:\(database.port ?? 5432)/batch", "-Atc", "SELECT 1"],
                environment: ["PATH": "/usr/bin:/bin"])
            #expect(sql.status != 0 && sql.stderr.contains("password authentication failed"), "\(sql.stderr)")
        }
    }

    @Test("instances that take turns in one slot share nothing: what one leaves running is killed, its files gone")
    func slotTakenInTurn() async throws {
        try await Stack.run(settings: ["BATCH_NODE_SLOTS": "1"]) { stack in
            let env = try await stack.createEnv(nodes: 1)
            // Each instance looks for what an earlier one left behind in the slot, then leaves the same: processes
            // in a session of their own and files in every private temporary directory.
            let command = """
                found=""; for f in /tmp/left-* /var/tmp/left-* /dev/shm/left-*; do [ -e "$f" ] && found="$found $f"; done
                echo "files:$found processes:$(ps -eo args= | grep -c '^sleep 31337')"
                for d in /tmp /var/tmp /dev/shm; do touch "$d/left-$BATCH_TASK_INSTANCE_INDEX"; done
                setsid sleep 31337 </dev/null >/dev/null 2>&1 &
                nohup sleep 31337 </dev/null >/dev/null 2>&1 &
                """
            let jobID = try await stack.submit(
                "turns", env: env,
                tasks: [
                    [
                        "TaskName": "t", "TaskInstanceNum": 3,
                        "Application": ["DeliveryForm": "LOCAL", "Command": command],
                    ]
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let seen = try await stack.stdout(jobID, "t")
            #expect(seen.count == 3)
            for (index, output) in seen { #expect(output == "files: processes:0\n", "instance \(index)") }
            #expect(try await processes(matching: "sleep 31337").isEmpty)
        }
    }

    /// An IPv4 address of this machine that is not a loopback one: a server there stands for the internet.
    static func outsideAddress() -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let address = current.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET),
                current.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0
            else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard
                getnameinfo(
                    address, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0,
                    NI_NUMERICHOST) == 0
            else { continue }
            return String(cString: host)
        }
        return nil
    }

    @Test("egress is the environment's choice: out of the node yes, never to its loopback or private addresses")
    func egress() async throws {
        let outside = try #require(
            Self.outsideAddress(), "this test needs an IPv4 address of the machine's that is not a loopback one")
        // The outside address is allowed even if private (this machine's may be): the rest of the private ranges
        // stay refused.
        try await Stack.run(settings: ["BATCH_EGRESS_ALLOW": "\(outside)/32"]) { stack in
            // A listening socket there: a connection to it completes in the kernel, accepted or not.
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(listener) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, outside, &address.sin_addr)
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let listening = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                    bind(listener, generic, length) == 0 && listen(listener, 16) == 0
                        && getsockname(listener, generic, &length) == 0
                }
            }
            try #require(listening, "cannot listen on \(outside)")
            let port = Int(UInt16(bigEndian: address.sin_port))
            let database = try unwrap(self.port(stack.environment["BATCH_DATABASE_URL"]))
            let probe = """
                import socket, sys
                for target in sys.argv[1:]:
                    host, port = target.rsplit(":", 1)
                    s = socket.socket(); s.settimeout(5)
                    try:
                        s.connect((host, int(port))); print(target, "open")
                    except OSError as e:
                        print(target, "closed")
                print(open("/etc/resolv.conf").read().strip())
                """
            let targets = ["\(outside):\(port)", "10.0.2.2:\(database)", "127.0.0.1:\(database)", "169.254.169.254:80"]
            let task: [String: Any] = [
                "TaskName": "t",
                "Application": [
                    "DeliveryForm": "LOCAL", "Command": "python3 -c '\(probe)' \(targets.joined(separator: " "))",
                ],
            ]
            let open = try await stack.call(
                "CreateComputeEnv",
                ["ComputeEnv": ["EnvName": "egress", "DesiredComputeNodeCount": 1, "Egress": true]])
            let withEgress = try await stack.submit(
                "egress", env: try unwrap(open["EnvId"] as? String), tasks: [task])
            let closed = try await stack.createEnv(nodes: 1)
            let without = try await stack.submit("no-egress", env: closed, tasks: [task])
            #expect(try await stack.waitForJob(withEgress)["JobState"] as? String == "SUCCEED")
            #expect(try await stack.waitForJob(without)["JobState"] as? String == "SUCCEED")
            #expect(
                try await stack.stdout(withEgress, "t")[0]
                    == """
                    \(outside):\(port) open
                    10.0.2.2:\(database) closed
                    127.0.0.1:\(database) closed
                    169.254.169.254:80 closed
                    nameserver 10.0.2.3

                    """)
            let none = try await stack.stdout(without, "t")[0] ?? ""
            #expect(none.hasPrefix(targets.map { "\($0) closed\n" }.joined()), "\(none)")
        }
    }

    @Test("a service given no broker or database URL, or a broker URL without a user, refuses with one line")
    func noDefaultCredentials() async throws {
        let key = "t:" + Data(count: 32).base64EncodedString()
        let scheduler = Stack.binDirectory.appendingPathComponent("SchedulerService").path
        let none = try await TestServers.run(
            scheduler, [], environment: ["PATH": "/usr/bin:/bin", "BATCH_MASTER_KEY": key])
        #expect(none.status != 0 && none.stderr.contains("no database URL"), "\(none.stderr)")
        let guest = try await TestServers.run(
            scheduler, [],
            environment: [
                "PATH": "/usr/bin:/bin", "BATCH_MASTER_KEY": key, "BATCH_DATABASE_URL": "postgres://u:p@127.0.0.1:1/x",
                "BATCH_AMQP_URL": "amqp://127.0.0.1:1/",
            ])
        #expect(guest.status != 0 && guest.stderr.contains("guest, is refused"), "\(guest.stderr)")
        #expect(guest.stderr.split(separator: "\n").count == 1, "\(guest.stderr)")
        let executor = try await TestServers.run(
            Stack.binDirectory.appendingPathComponent("ExecutorService").path,
            ["--env-id", "env-00000000", "--work-dir", FileManager.default.temporaryDirectory.path + "/no-url"],
            environment: ["PATH": "/usr/bin:/bin", "BATCH_NODE_KEY": Data(count: 32).base64EncodedString()])
        #expect(executor.status != 0 && executor.stderr.contains("no broker URL"), "\(executor.stderr)")
    }

    @Test("a node that cannot make a sandbox refuses to start instead of running instances unsandboxed")
    func noSandboxNoNode() async throws {
        let result = try await TestServers.run(
            Stack.binDirectory.appendingPathComponent("ExecutorService").path,
            ["--env-id", "env-00000000", "--work-dir", FileManager.default.temporaryDirectory.path + "/no-sandbox"],
            environment: [
                "PATH": "/usr/bin:/bin", "BATCH_SANDBOX_HELPER": "/nonexistent/batch-sandbox",
                "BATCH_AMQP_URL": "amqp://node:unused@127.0.0.1:1/",
                "BATCH_NODE_KEY": Data(count: 32).base64EncodedString(),
            ])
        #expect(result.status != 0)
        #expect(result.stderr.contains("refusing to run instances without a sandbox"), "\(result.stderr)")
        #expect(
            result.stderr.contains("the sandbox helper (/nonexistent/batch-sandbox) is not installed"),
            "\(result.stderr)")
    }
}
