import BatchRuntime
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("ChildProcess: children started together are each reaped with their own end")
struct ChildProcessTests {
    @Test("200 children at once, started either way, each end with the code they exited with")
    func manyAtOnce() async throws {
        let codes = try await withThrowingTaskGroup(of: (Int, ChildProcess.Termination).self) { group in
            for index in 0..<200 {
                group.addTask {
                    let arguments = ["-c", "exit \(index % 7)"]
                    let child =
                        index.isMultiple(of: 2)
                        ? try ChildProcess(executable: "/bin/sh", arguments: arguments, environment: [:])
                        : try await ChildProcess.start(executable: "/bin/sh", arguments: arguments, environment: [:])
                    return (index, await child.wait())
                }
            }
            return try await group.reduce(into: [Int: ChildProcess.Termination]()) { $0[$1.0] = $1.1 }
        }
        #expect(codes.count == 200)
        for (index, termination) in codes { #expect(termination == .exited(Int32(index % 7))) }
    }

    @Test("a child that has ended before anyone waits is still reaped, and every waiter hears the same end")
    func endedBeforeWaiting() async throws {
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exit 3"], environment: [:])
        // Its pid stays a zombie until reaped: once it is gone from the process table, it has been reaped.
        let first = await child.wait()
        async let second = child.wait()
        async let third = child.wait()
        #expect(first == .exited(3))
        #expect(await [second, third] == [.exited(3), .exited(3)])
        #expect(kill(child.pid, 0) == -1 && errno == ESRCH)
    }

    @Test("terminate stops a sleeping child with SIGTERM and reports the signal")
    func terminated() async throws {
        let child = try ChildProcess(executable: "/bin/sleep", arguments: ["60"], environment: [:])
        let termination = await child.terminate(grace: .seconds(30))
        #expect(termination == .signalled(SIGTERM))
        #expect(termination.code == 128 + Int(SIGTERM))
    }

    @Test("a command that does not exist is a spawn error, not a child")
    func missingExecutable() async {
        #expect(throws: ChildProcess.SpawnError.self) {
            _ = try ChildProcess(executable: "/nonexistent/command", arguments: [], environment: [:])
        }
        await #expect(throws: ChildProcess.SpawnError.self) {
            _ = try await ChildProcess.start(executable: "/nonexistent/command", arguments: [], environment: [:])
        }
    }

    @Test("a started child runs in its directory with exactly its environment, its output in the given files")
    func directoryEnvironmentAndOutput() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("child-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let stdout = directory.appendingPathComponent("stdout.log").path
        let stderr = directory.appendingPathComponent("stderr.log").path
        let child = try await ChildProcess.start(
            executable: "/bin/sh", arguments: ["-c", "pwd; env | sort; echo oops >&2"],
            environment: ["ONLY": "this"], directory: directory.path, stdout: stdout, stderr: stderr)
        #expect(await child.wait() == .exited(0))
        let lines = try String(contentsOfFile: stdout, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.first == directory.path)
        #expect(lines.contains("ONLY=this"))
        #expect(!lines.contains { $0.hasPrefix("HOME=") })
        #expect(try String(contentsOfFile: stderr, encoding: .utf8) == "oops\n")
    }
}
