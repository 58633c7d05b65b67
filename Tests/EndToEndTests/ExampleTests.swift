import Foundation
import TestSupport
import Testing

/// The job files of `examples/`, run as `scripts/quickstart` runs them: data made by the example's own script, the
/// package packed from the repository, `@DATA@` and `@ENV_ID@` filled in.
@Suite("Examples: the genomics demo and the rendering job", .serialized, .timeLimit(.minutes(5)))
struct ExampleTests {
    static let examples = TestServers.repositoryRoot.appendingPathComponent("examples")

    /// The example's job file with its placeholders filled in.
    func job(_ example: String, data: URL, env: String) throws -> [String: Any] {
        let text = try String(
            contentsOf: Self.examples.appendingPathComponent("\(example)/job.json"), encoding: .utf8
        )
        .replacingOccurrences(of: "@DATA@", with: data.path).replacingOccurrences(of: "@ENV_ID@", with: env)
        return try unwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test("the genomics pipeline (split, align ×4, merge) reaches the known answer, with its logs in storage")
    func genomics() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let data = stack.data.appendingPathComponent("genomics")
            let made = try await TestServers.run(
                Self.examples.appendingPathComponent("genomics/make-data").path, [data.path, "--reads", "8000"],
                environment: ["PATH": "/usr/bin:/bin"])
            #expect(made.status == 0, "\(made.stderr)")
            // The instances' user writes the pipeline's work, logs and output there.
            try FileManager.default.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: data.path)
            let packed = try await TestServers.run(
                "/bin/tar",
                [
                    "-czf", data.appendingPathComponent("package.tar.gz").path, "-C",
                    Self.examples.appendingPathComponent("genomics/package").path, ".",
                ], environment: nil)
            #expect(packed.status == 0)
            let submitted = try await stack.call("SubmitJob", ["Job": try job("genomics", data: data, env: env)])
            let jobID = try unwrap(submitted["JobId"] as? String)
            let finished = try await stack.waitForJob(jobID)
            let align = try await stack.instances(jobID, "align")
            #expect(finished["JobState"] as? String == "SUCCEED", "\(align)")

            let summary = try String(contentsOf: data.appendingPathComponent("output/summary.txt"), encoding: .utf8)
            let expected = try String(contentsOf: data.appendingPathComponent("expected-summary.txt"), encoding: .utf8)
            #expect(summary == expected)
            let alignments = try String(
                contentsOf: data.appendingPathComponent("output/alignments.txt"), encoding: .utf8)
            #expect(alignments.split(separator: "\n").count == 8000)
            // Every instance's stdout and stderr went to the logs directory.
            let logs = try FileManager.default.contentsOfDirectory(atPath: data.appendingPathComponent("logs").path)
            #expect(logs.filter { $0.hasSuffix(".stdout") }.count == 6)
            #expect(logs.contains("\(jobID)_align_3.stderr"))
            let aligned = try String(
                contentsOf: data.appendingPathComponent("logs/\(jobID)_align_3.stderr"), encoding: .utf8)
            #expect(aligned.hasSuffix("of 2000 reads aligned\n"))
        }
    }

    @Test("the rendering job renders 100 frames, one instance each")
    func render() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let data = stack.data.appendingPathComponent("render")
            let submitted = try await stack.call("SubmitJob", ["Job": try job("render", data: data, env: env)])
            let jobID = try unwrap(submitted["JobId"] as? String)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            let frames = try FileManager.default.contentsOfDirectory(
                atPath: data.appendingPathComponent("frames").path
            ).sorted()
            #expect(frames == (0..<100).map { String(format: "frame-%03d.ppm", $0) })
            let frame = try String(contentsOf: data.appendingPathComponent("frames/frame-042.ppm"), encoding: .utf8)
            #expect(frame.hasPrefix("P3\n64 48\n255\n"))
            #expect(frame.split(separator: "\n").count == 3 + 64 * 48)
        }
    }
}
