import Foundation
import Messaging
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A node that hands its work back stops what it holds, including an attempt still preparing (fetching its inputs):
/// the scheduler runs that instance again elsewhere, so its command must not start here.
@Suite("Hand-back: an attempt preparing when its node hands its work back never starts there", .timeLimit(.minutes(5)))
struct HandBackTests {
    /// An S3 endpoint that answers every request only once the test lets it (`release`), and notes each in `seen`.
    static let heldStore = #"""
        import http.server, os, sys, threading
        release, seen, port_file = sys.argv[1:4]
        released = threading.Event()
        def wait_for_release():
            with open(release) as fifo:
                fifo.read()
            released.set()
        threading.Thread(target=wait_for_release, daemon=True).start()
        body = b"held input\n"
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def answer(self, with_body):
                with open(seen, "a") as log:
                    log.write(self.command + " " + self.path + "\n")
                released.wait()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", '"held"')
                self.end_headers()
                if with_body:
                    self.wfile.write(body)
            def do_HEAD(self):
                self.answer(False)
            def do_GET(self):
                self.answer(True)
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        with open(port_file + ".tmp", "w") as out:
            out.write(str(server.server_address[1]))
        os.rename(port_file + ".tmp", port_file)
        server.serve_forever()
        """#

    @Test("SIGINT to a node whose attempt waits for its input: the attempt is interrupted unrun, then runs elsewhere")
    func preparingAttempt() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("held-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let release = directory.appendingPathComponent("release").path
        let seen = directory.appendingPathComponent("seen").path
        let portFile = directory.appendingPathComponent("port").path
        #expect(mkfifo(release, 0o600) == 0)
        let script = directory.appendingPathComponent("store.py")
        try Self.heldStore.write(to: script, atomically: true, encoding: .utf8)
        let store = Process()
        store.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        store.arguments = [script.path, release, seen, portFile]
        try store.run()
        defer {
            // SIGKILL: a child of the test process may inherit SIGTERM ignored.
            kill(store.processIdentifier, SIGKILL)
            store.waitUntilExit()
        }
        try await waitUntil("the held store listens") { FileManager.default.fileExists(atPath: portFile) }
        let port = try String(contentsOfFile: portFile, encoding: .utf8)

        try await Stack.run(settings: ["BATCH_S3_ENDPOINT": "http://127.0.0.1:\(port)"]) { stack in
            let env = try await stack.createEnv(nodes: 1)
            let records = try stack.recordsDirectory()
            let extra: [String: Any] = [
                "InputMappings": [["SourcePath": "s3://held/input.txt", "DestinationPath": "/data/in/"]],
                "Authentications": [["Scene": "COS", "SecretId": "held", "SecretKey": "held"]],
            ]
            let jobID = try await stack.submit(
                "held", env: env, tasks: [recordingTask("work", instances: 1, records: records, extra: extra)])
            // The attempt has its slot and waits for its input.
            try await waitUntil("the node asks the store for the input") {
                FileManager.default.fileExists(atPath: seen)
            }
            var node = ""
            try await waitUntil("the instance shows its node") {
                node = try await stack.instances(jobID, "work").first?["ComputeNodeInstanceId"] as? String ?? ""
                return !node.isEmpty
            }
            let pids = try await processes(matching: "ExecutorService.*--node-id \(node)")
            #expect(pids.count == 1)
            for pid in pids { kill(pid_t(pid)!, SIGINT) }
            let log = stack.directory.appendingPathComponent("nodes/\(node)/executor.log")
            try await waitUntil("the node has handed its work back") {
                ((try? String(contentsOf: log, encoding: .utf8)) ?? "").contains("work handed back")
            }
            // Now the input comes, to this node and to whichever runs the instance next.
            let fifo = try unwrap(FileHandle(forWritingAtPath: release))
            try fifo.write(contentsOf: Data("go".utf8))
            try fifo.close()

            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let instance = try unwrap(try await stack.instances(jobID, "work").first)
            #expect(instance["ComputeNodeInstanceId"] as? String != node)
            // The first attempt's command never ran; the second, on another node, did.
            #expect(try readRecords(records).map(\.attempt) == [2])
            let said = try String(contentsOf: log, encoding: .utf8)
            #expect(said.contains("instance stopped before its command started"))
        }
    }
}
