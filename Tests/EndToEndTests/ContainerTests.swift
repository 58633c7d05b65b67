import Foundation
import Messaging
import TestSupport
import Testing

/// The compose file's executor service, run by `docker-compose` from the image `scripts/images` builds
/// (`BATCH_IMAGE`, default `batch:latest`), joined to a test stack: it sandboxes its instances as executors on hosts
/// do, with its environment's broker user and node key alone. `scripts/test` runs this suite after it has built the
/// image.
@Suite("Containers: the compose deployment's executor", .serialized, .timeLimit(.minutes(5)))
struct ContainerTests {
    let image = ProcessInfo.processInfo.environment["BATCH_IMAGE"] ?? "batch:latest"

    @Test("a compose executor sandboxes its instances, limits them, and connects as its environment's broker user")
    func sandboxedExecutor() async throws {
        let docker = "/usr/bin/docker"
        let compose = "/usr/bin/docker-compose"
        for tool in [docker, compose] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw TestServers.Missing(description: "\(tool) is missing: run scripts/images (it installs Docker)")
        }
        let inspected = try await TestServers.run(docker, ["image", "inspect", image], environment: nil)
        guard inspected.status == 0 else {
            throw TestServers.Missing(
                description: "no image \(image) (\(inspected.stderr)): build it with scripts/images")
        }
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 0)
            // The provisioner makes the environment's broker user when it first sees the environment.
            try await waitUntil("the environment's nodes' broker user exists") {
                try await RabbitManagement.permissions(of: Topology.nodeUser(env: env), vhost: stack.vhost) != nil
            }

            // The compose file's executor service as it is, with this stack's image, and the host's network to reach
            // the test's broker on 127.0.0.1: its user named without a password, which the node derives.
            let override = stack.directory.appendingPathComponent("compose.override.yml")
            try "services:\n  executor:\n    image: \(image)\n    network_mode: host\n".write(
                to: override, atomically: true, encoding: .utf8)
            let broker = try AMQPURL(try unwrap(stack.environment["BATCH_EXECUTOR_AMQP_URL"]))
            let vhost = stack.vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? stack.vhost
            let project = "batch-\(UUID().uuidString.prefix(8).lowercased())"
            let container = "\(project)-executor"
            let file = TestServers.repositoryRoot.appendingPathComponent("compose/docker-compose.yml").path
            // The executor service's one secret, the compose broker's CA, which this executor does not use: it joins
            // the test's broker over plain AMQP.
            let secrets = stack.directory.appendingPathComponent("secrets")
            try FileManager.default.createDirectory(at: secrets, withIntermediateDirectories: true)
            try Data().write(to: secrets.appendingPathComponent("rabbitmq-ca.pem"))
            let composeEnvironment = [
                "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "EXECUTOR_SLOTS": "2",
                // A node that joins by hand takes its instances' memory limit from its own settings.
                "EXECUTOR_INSTANCE_MEMORY": "256", "BATCH_SHARED_DIR": stack.directory.path,
                "BATCH_SECRETS": secrets.path,
            ]
            // An executor that joins by hand: its environment and node key given, not bootstrap's.
            let started = try await TestServers.run(
                compose,
                [
                    "-p", project, "-f", file, "-f", override.path, "run", "-d", "--no-deps", "--name", container,
                    "-e", "BATCH_AMQP_URL=amqp://\(Topology.nodeUser(env: env))@\(broker.host):\(broker.port)/\(vhost)",
                    "-e", "BATCH_ENV_ID=\(env)", "-e", "BATCH_NODE_KEY=\(try stack.nodeKey(env).base64)", "executor",
                ], environment: composeEnvironment)
            /// Removes the container and what compose made for the project (its network).
            func remove() async throws -> Int32 {
                let removed = try await TestServers.run(docker, ["rm", "-f", container], environment: nil)
                _ = try await TestServers.run(
                    compose, ["-p", project, "-f", file, "-f", override.path, "down"], environment: composeEnvironment)
                return removed.status
            }
            #expect(started.status == 0, "\(started.stderr)")
            do {
                try await exercise(stack, env: env)
            } catch {
                let logs = try? await TestServers.run(docker, ["logs", "--tail", "40", container], environment: nil)
                Issue.record("the executor's last lines: \(logs?.stdout ?? "")\(logs?.stderr ?? "")")
                _ = try? await remove()
                throw error
            }
            #expect(try await remove() == 0)
        }
    }

    /// Probes from inside an instance, a 4 GiB allocation on a node that limits instances to 256 MiB, then work that
    /// must succeed.
    func exercise(_ stack: Stack, env: String) async throws {
        try await waitUntil("the container's executor runs as a node of the environment") {
            try await stack.nodeStates(env).values.contains("RUNNING")
        }
        // (The management API lists connections a few seconds after they open.)
        try await waitUntil("the broker lists the node's connection under its environment's user") {
            try await RabbitManagement.connectionUsers(vhost: stack.vhost).contains(Topology.nodeUser(env: env))
        }
        let probe = """
            echo "user $(id -u)"; \
            if curl -s -m 3 -o /dev/null http://127.0.0.1:15672/; then echo "broker open"; else echo "broker refused"; fi; \
            set -- /proc/[0-9]*; echo "processes $#"; \
            if [ -e /sys/fs/cgroup ]; then echo "sys present"; else echo "sys absent"; fi; \
            grep CapEff /proc/self/status | tr -s '\\t ' ' '; \
            if cat /proc/1/environ >/dev/null 2>&1; then echo "environ read"; else echo "environ refused"; fi
            """
        let jobID = try await stack.submit(
            "in-a-container", env: env,
            tasks: [
                ["TaskName": "probe", "Application": ["DeliveryForm": "LOCAL", "Command": probe]],
                [
                    "TaskName": "hog",
                    "Application": [
                        "DeliveryForm": "LOCAL", "Command": "x=$(head -c 4G /dev/zero | tr '\\0' a); echo ${#x}",
                    ],
                ],
                ["TaskName": "after", "Application": ["DeliveryForm": "LOCAL", "Command": "echo alive"]],
            ],
            dependences: [("probe", "after"), ("hog", "after")],
            extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
        #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
        // Run as nobody without capabilities; the broker out of reach; the slot's sandbox (pid 1) and the shell the
        // only processes in sight, and the first's environment unreadable; no /sys (so no cgroup to write).
        let probed = try await stack.stdout(jobID, "probe")[0]
        #expect(
            probed
                == "user 65534\nbroker refused\nprocesses 2\nsys absent\nCapEff: 0000000000000000\nenviron refused\n")
        let hog = try unwrap(try await stack.instances(jobID, "hog").first)
        #expect(hog["TaskInstanceState"] as? String == "FAILED")
        #expect(
            (hog["StateReason"] as? String)?.contains("more than its memory limit of 256 MiB") == true, "\(hog)")
        #expect(try await stack.stdout(jobID, "after")[0] == "alive\n")
    }
}
