import BatchCore
import Foundation
import Storage
import TestSupport
import Testing

/// Instances that take their inputs and package from storage and leave outputs and logs there, through the whole
/// system and the real S3-compatible store (moto, checking signatures), each in its own sandbox.
@Suite("Executor: storage mappings, packages, logs and the sandbox", .serialized, .timeLimit(.minutes(5)))
struct StorageEndToEndTests {
    let store: (endpoint: URL, accessKeyID: String, secretAccessKey: String)
    let bucket = "e2e-\(UUID().uuidString.prefix(8).lowercased())"
    var s3: S3Client {
        S3Client(
            endpoint: store.endpoint,
            credentials: .init(accessKeyID: store.accessKeyID, secretAccessKey: store.secretAccessKey))
    }
    var authentications: [[String: Any]] {
        [["Scene": "S3", "SecretId": store.accessKeyID, "SecretKey": store.secretAccessKey]]
    }

    init() async throws {
        store = try TestServers.objectStore()
        try await S3Client(
            endpoint: store.endpoint,
            credentials: .init(accessKeyID: store.accessKeyID, secretAccessKey: store.secretAccessKey)
        ).createBucket(bucket)
    }

    func text(_ key: String) async throws -> String {
        String(decoding: try await s3.get(bucket: bucket, key: key), as: UTF8.self)
    }

    @Test("inputs fetched to their paths, outputs and logs uploaded; instances on one path see only their own files")
    func mappingsAndLogs() async throws {
        try await s3.put(bucket: bucket, key: "in/numbers.txt", data: Data("3\n1\n2\n".utf8))
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            // A file of the node's that no instance should see (the stack's directory is on the node's /tmp).
            let nodeFile = stack.directory.appendingPathComponent("gateway.port").path
            // Each instance writes a file of its own name into the same /data/out and /tmp, and lists what it sees.
            let command = """
                sort -n /data/in/numbers.txt > /data/out/sorted.txt && \
                echo "$BATCH_TASK_INSTANCE_INDEX" > "/data/out/mine-$BATCH_TASK_INSTANCE_INDEX" && \
                touch "/tmp/private-$BATCH_TASK_INSTANCE_INDEX" && sleep 1 && \
                echo "seen: $(ls /data/out | tr '\\n' ' ')" && echo "tmp: $(ls /tmp | grep -c private)" && \
                if [ -e "\(nodeFile)" ]; then echo "node visible"; else echo "node hidden"; fi && \
                echo "to stderr" >&2
                """
            let jobID = try await stack.submit(
                "mapped", env: env,
                tasks: [
                    [
                        "TaskName": "sort", "TaskInstanceNum": 4,
                        "Application": ["DeliveryForm": "LOCAL", "Command": command],
                        "InputMappings": [["SourcePath": "s3://\(bucket)/in/", "DestinationPath": "/data/in/"]],
                        "OutputMappings": [
                            [
                                "SourcePath": "/data/out/",
                                "DestinationPath": "s3://\(bucket)/out/${BATCH_TASK_INSTANCE_INDEX}/",
                            ]
                        ],
                        "RedirectInfo": [
                            "StdoutRedirectPath": "s3://\(bucket)/logs/", "StderrRedirectPath": "s3://\(bucket)/logs/",
                        ],
                        "Authentications": authentications,
                    ]
                ])
            let job = try await stack.waitForJob(jobID)
            let instances = try await stack.instances(jobID, "sort")
            #expect(job["JobState"] as? String == "SUCCEED", "\(instances)")
            for index in 0..<4 {
                #expect(try await text("out/\(index)/sorted.txt") == "1\n2\n3\n")
                let keys = try await s3.list(bucket: bucket, prefix: "out/\(index)/").map(\.key)
                #expect(keys == ["out/\(index)/mine-\(index)", "out/\(index)/sorted.txt"])
                let stdout = try await text("logs/\(jobID)_sort_\(index).stdout")
                #expect(stdout == "seen: mine-\(index) sorted.txt \ntmp: 1\nnode hidden\n")
                #expect(try await text("logs/\(jobID)_sort_\(index).stderr") == "to stderr\n")
            }
        }
    }

    @Test("a PACKAGE task runs a script from a tarball fetched from storage")
    func packageDelivery() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("package-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: scratch.appendingPathComponent("app/lib"), withIntermediateDirectories: true)
        try Data("echo \"package says $(cat lib/word.txt) from $BATCH_TASK_INSTANCE_INDEX\"\n".utf8).write(
            to: scratch.appendingPathComponent("app/run.sh"))
        try Data("hello".utf8).write(to: scratch.appendingPathComponent("app/lib/word.txt"))
        let tar = try await TestServers.run(
            "/bin/tar", ["-czf", scratch.appendingPathComponent("app.tar.gz").path, "-C", scratch.path + "/app", "."],
            environment: nil)
        #expect(tar.status == 0)
        try await s3.put(
            bucket: bucket, key: "packages/app.tar.gz",
            data: try Data(contentsOf: scratch.appendingPathComponent("app.tar.gz")))
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let jobID = try await stack.submit(
                "packaged", env: env,
                tasks: [
                    [
                        "TaskName": "app", "TaskInstanceNum": 2,
                        "Application": [
                            "DeliveryForm": "PACKAGE", "PackagePath": "s3://\(bucket)/packages/app.tar.gz",
                            "Command": "sh run.sh",
                        ],
                        "Authentications": authentications,
                    ]
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let logs = try await stack.call("DescribeTaskLogs", ["JobId": jobID, "TaskName": "app"])
            let set = try unwrap(logs["TaskInstanceLogSet"] as? [[String: Any]])
            let outputs = set.compactMap { $0["StdoutLog"] as? String }.compactMap { Data(base64Encoded: $0) }
                .map { String(decoding: $0, as: UTF8.self) }.sorted()
            #expect(outputs == ["package says hello from 0\n", "package says hello from 1\n"])
        }
    }

    @Test("wrong storage credentials and a missing input fail the instance with a reason naming the path")
    func failuresHaveReasons() async throws {
        try await s3.put(bucket: bucket, key: "in/present.txt", data: Data("x".utf8))
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let wrongSecret = "wrong-\(UUID().uuidString)"
            let jobID = try await stack.submit(
                "failing-inputs", env: env,
                tasks: [
                    [
                        "TaskName": "wrong-key",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                        "InputMappings": [
                            ["SourcePath": "s3://\(bucket)/in/present.txt", "DestinationPath": "/data/present.txt"]
                        ],
                        "Authentications": [
                            ["Scene": "S3", "SecretId": store.accessKeyID, "SecretKey": wrongSecret]
                        ],
                    ],
                    [
                        "TaskName": "missing",
                        "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                        "InputMappings": [
                            ["SourcePath": "s3://\(bucket)/in/absent.csv", "DestinationPath": "/data/absent.csv"]
                        ],
                        "Authentications": authentications,
                    ],
                ], extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            let wrong = try unwrap(try await stack.instances(jobID, "wrong-key").first)
            let wrongReason = try unwrap(wrong["StateReason"] as? String)
            #expect(wrong["TaskInstanceState"] as? String == "FAILED")
            #expect(wrongReason.contains("SignatureDoesNotMatch"), "\(wrongReason)")
            #expect(wrongReason.contains("s3://\(bucket)/in/present.txt"))
            #expect(!wrongReason.contains(wrongSecret))
            let missing = try unwrap(try await stack.instances(jobID, "missing").first)
            let missingReason = try unwrap(missing["StateReason"] as? String)
            #expect(missingReason.contains("s3://\(bucket)/in/absent.csv does not exist"), "\(missingReason)")
        }
    }
}

/// The long-running limits of an instance.
@Suite("Executor: a ten-minute timeout", .timeLimit(.minutes(15)))
struct LongTimeoutTests {
    @Test("an instance with a 10-minute Timeout is killed at it, not before and not at its own end")
    func tenMinuteTimeout() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let marker = "sleep 1800.\(Int.random(in: 100_000...999_999))"
            let started = Date()
            let jobID = try await stack.submit(
                "ten-minutes", env: env,
                tasks: [
                    [
                        "TaskName": "long", "Timeout": 600,
                        "Application": ["DeliveryForm": "LOCAL", "Command": marker],
                    ]
                ])
            try await waitUntil("the instance runs") { try await stack.runningInstances(jobID, "long") == 1 }
            let job = try await stack.waitForJob(jobID, deadline: .seconds(900))
            #expect(job["JobState"] as? String == "FAILED")
            let instance = try #require(try await stack.instances(jobID, "long").first)
            #expect((instance["StateReason"] as? String)?.contains("timed out after 600 s") == true, "\(instance)")
            // Killed by its timeout: after 600 s of running, long before its command would have ended by itself.
            let ran = Date().timeIntervalSince(started)
            #expect(ran >= 600)
            #expect(ran < 1800)
            #expect(try await processes(matching: marker).isEmpty)
        }
    }
}

extension StorageEndToEndTests {
    @Test("a task with a Docker image runs through the node's container runtime, or fails saying why")
    func containerImage() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let jobID = try await stack.submit(
                "container", env: env,
                tasks: [
                    [
                        "TaskName": "boxed",
                        "Application": [
                            "DeliveryForm": "LOCAL", "Command": "echo from a container",
                            "Docker": ["Image": "debian:bookworm-slim"],
                        ],
                    ]
                ])
            let job = try await stack.waitForJob(jobID)
            let instance = try #require(try await stack.instances(jobID, "boxed").first)
            // Where the runtime can run the image, it succeeds; otherwise (no runtime, a docker client without an
            // engine as on this project's machines, no registry) the reason names the image and what went wrong.
            if job["JobState"] as? String != "SUCCEED" {
                #expect(job["JobState"] as? String == "FAILED")
                let reason = instance["StateReason"] as? String ?? ""
                #expect(reason.contains("debian:bookworm-slim"), "\(reason)")
                #expect(
                    reason.contains("the container runtime could not run") || reason.contains("no container runtime"),
                    "\(reason)")
            }
        }
    }
}
