import Foundation
import TestSupport
import Testing

/// `scripts/chaos`: a short seeded round of every fault (kill -9 of each service and an executor, a broker restart, a
/// database restart) under a mixed workload, then its invariants. Runs alone, after the other tests (`scripts/test`
/// filters on "Disruptive"): it restarts the shared broker and database. `BATCH_CHAOS_SEED` picks the seed (1).
@Suite("Disruptive: a chaos round", .serialized, .timeLimit(.minutes(10)))
struct DisruptiveChaosTests {
    @Test("scripts/chaos: every job ends as its spec implies, no instance runs twice, nothing is left behind")
    func chaosRound() async throws {
        let seed = ProcessInfo.processInfo.environment["BATCH_CHAOS_SEED"] ?? "1"
        let script = TestServers.repositoryRoot.appendingPathComponent("scripts/chaos").path
        var environment = ProcessInfo.processInfo.environment
        environment["BATCH_BIN_DIR"] = Stack.binDirectory.path
        let result = try await TestServers.run(script, ["--seed", seed], environment: environment)
        let summary = result.stdout.split(separator: "\n").filter { $0.hasPrefix("|") || $0.hasPrefix("violation") }
        print(summary.joined(separator: "\n"))
        #expect(
            result.status == 0,
            "chaos --seed \(seed) failed:\n\(result.stdout.suffix(4000))\n\(result.stderr.suffix(2000))")
        #expect(summary.contains { $0.hasPrefix("| \(seed) |") }, "the summary row is printed")
    }
}
