import Foundation
import TestSupport
import Testing

/// What a user's job may try against the node that runs it: packages that write outside their work dir, and
/// outputs that would make the node upload its own files.
@Suite("Hostile input: packages and outputs that reach outside the instance", .serialized, .timeLimit(.minutes(5)))
struct HostileInputTests {
    @Test("packages with absolute names, .. or links out of the work dir are refused; a link out is not uploaded")
    func reachingOutside() async throws {
        try await Stack.run { stack in
            let shared = stack.directory.appendingPathComponent("shared")
            let packages = shared.appendingPathComponent("packages")
            try FileManager.default.createDirectory(at: packages, withIntermediateDirectories: true)
            // Each would write (or point) outside the work dir it is unpacked into.
            let escapee = stack.directory.appendingPathComponent("escaped").path
            let script = """
                import io, sys, tarfile
                def add(t, name, data=b"x", link=None):
                    i = tarfile.TarInfo(name)
                    if link is not None:
                        i.type = tarfile.SYMTYPE
                        i.linkname = link
                        t.addfile(i)
                    else:
                        i.size = len(data)
                        t.addfile(i, io.BytesIO(data))
                d = sys.argv[1]
                with tarfile.open(d + "/absolute.tar.gz", "w:gz") as t: add(t, sys.argv[2])
                with tarfile.open(d + "/climb.tar.gz", "w:gz") as t: add(t, "a/../../../escaped")
                with tarfile.open(d + "/link.tar.gz", "w:gz") as t:
                    add(t, "etc", link="/etc"); add(t, "run.sh", b"true")
                with tarfile.open(d + "/chain.tar.gz", "w:gz") as t:
                    add(t, "b/c", link=".."); add(t, "a", link="b/c"); add(t, "x", link="a/..")
                    add(t, "run.sh", b"true")
                """
            let made = try await TestServers.run(
                "/usr/bin/python3", ["-c", script, packages.path, escapee], environment: nil)
            #expect(made.status == 0, "\(made.stderr)")
            // A file of the node's that no instance should ever get hold of.
            let secret = stack.directory.appendingPathComponent("node-secret.txt")
            try Data("the node's own secret".utf8).write(to: secret)
            let exfiltrated = shared.appendingPathComponent("exfiltrated")

            let env = try await stack.createEnv(nodes: 1)
            func packaged(_ name: String) -> [String: Any] {
                [
                    "TaskName": name,
                    "Application": [
                        "DeliveryForm": "PACKAGE", "PackagePath": "file://\(packages.path)/\(name).tar.gz",
                        "Command": "sh run.sh",
                    ],
                ]
            }
            let jobID = try await stack.submit(
                "hostile", env: env,
                tasks: [
                    packaged("absolute"), packaged("climb"), packaged("link"), packaged("chain"),
                    [
                        "TaskName": "exfiltrate",
                        "Application": [
                            "DeliveryForm": "LOCAL",
                            "Command":
                                "mkdir -p /data/out && ln -s \(secret.path) /data/out/secret && echo hi > /data/out/ok",
                        ],
                        "OutputMappings": [
                            ["SourcePath": "/data/out/", "DestinationPath": "file://\(exfiltrated.path)/"]
                        ],
                    ],
                ],
                dependences: [
                    ("absolute", "climb"), ("climb", "link"), ("link", "chain"), ("chain", "exfiltrate"),
                ],
                extra: ["TaskExecutionDependOn": "PRE_TASK_FINISHED"])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "FAILED")
            let expected = [
                "absolute": "\(escapee) is an absolute name",
                "climb": "a/../../../escaped leaves the work dir",
                "link": "etc links to /etc, outside the work dir",
                "chain": "links to a/.., outside the work dir",
                "exfiltrate": "is a link to a file outside the instance's own files",
            ]
            for (task, reason) in expected {
                let instance = try unwrap(try await stack.instances(jobID, task).first)
                let said = instance["StateReason"] as? String ?? ""
                #expect(instance["TaskInstanceState"] as? String == "FAILED", "\(task)")
                #expect(said.contains(reason), "\(task): \(said)")
            }
            #expect(!FileManager.default.fileExists(atPath: escapee))
            let uploaded = (try? FileManager.default.contentsOfDirectory(atPath: exfiltrated.path)) ?? []
            #expect(!uploaded.contains("secret"), "\(uploaded)")
        }
    }

    @Test(
        "sandboxed instances run as the unprivileged user: the node's root-only files, other work dirs and sockets are closed"
    )
    func unprivileged() async throws {
        try await Stack.run { stack in
            let shared = stack.directory.appendingPathComponent("shared")
            let private_ = shared.appendingPathComponent("root-only.txt")
            try Data("root's".utf8).write(to: private_)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: private_.path)
            let readable = shared.appendingPathComponent("readable.txt")
            try Data("anyone's".utf8).write(to: readable)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: readable.path)
            // A file of the node's, outside the shared paths.
            let nodeFile = stack.directory.appendingPathComponent("gateway.port").path
            let env = try await stack.createEnv(nodes: 1)
            let command = """
                echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"; \
                cat \(private_.path) >/dev/null 2>&1 && echo "root-only: read" || echo "root-only: denied"; \
                cat \(readable.path) >/dev/null 2>&1 && echo "readable: read" || echo "readable: denied"; \
                echo x >> \(readable.path) 2>/dev/null && echo "readable: written" || echo "readable: not written"; \
                cat \(nodeFile) >/dev/null 2>&1 && echo "node file: seen" || echo "node file: unseen"; \
                other=$BATCH_WORK_DIR/../../../$((1 - BATCH_TASK_INSTANCE_INDEX)); \
                ls $other >/dev/null 2>&1 && echo "other instance: seen" || echo "other instance: unseen"; \
                echo mine > mine.txt && echo "work: written"; echo t > /tmp/t && echo "tmp: written"; \
                echo "sockets inherited: $(find /proc/$$/fd -lname 'socket:*' 2>/dev/null | wc -l)"
                """
            let jobID = try await stack.submit(
                "unprivileged", env: env,
                tasks: [
                    [
                        "TaskName": "who", "TaskInstanceNum": 2,
                        "Application": ["DeliveryForm": "LOCAL", "Command": command],
                    ]
                ])
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let logs = try await stack.call("DescribeTaskLogs", ["JobId": jobID, "TaskName": "who"])
            let set = try unwrap(logs["TaskInstanceLogSet"] as? [[String: Any]])
            #expect(set.count == 2)
            for instance in set {
                let said =
                    (instance["StdoutLog"] as? String).flatMap { Data(base64Encoded: $0) }.map {
                        String(decoding: $0, as: UTF8.self)
                    } ?? ""
                #expect(
                    said == """
                        uid=65534 gid=65534 groups=65534
                        root-only: denied
                        readable: read
                        readable: not written
                        node file: unseen
                        other instance: unseen
                        work: written
                        tmp: written
                        sockets inherited: 0

                        """, "\(said)")
            }
            #expect(try String(contentsOf: readable, encoding: .utf8) == "anyone's")
        }
    }
}
