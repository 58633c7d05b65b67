import Foundation
import Testing

@testable import BatchCore

@Suite("Retry, dispatch, quota and pending-reason policies")
struct PolicyTests {
    @Test(
        "exit-code patterns",
        arguments: [("137", 137, true), ("137", 1, false), ("1-3", 2, true), ("1-3", 4, false), ("*", 255, true)])
    func patterns(pattern: String, code: Int, matches: Bool) throws {
        #expect(try #require(ExitCodePattern(pattern)).matches(code) == matches)
    }

    @Test("malformed exit-code patterns are refused", arguments: ["", "x", "3-1", "-1", "256", "1-2-3"])
    func badPatterns(pattern: String) {
        #expect(ExitCodePattern(pattern) == nil)
    }

    @Test("rules decide before MaxRetryCount; without a match MaxRetryCount decides")
    func retryRules() {
        let policy = RetryPolicy(
            maxRetryCount: 2,
            rules: [RetryRule(onExitCode: "137", action: "RETRY"), RetryRule(onExitCode: "1-10", action: "EXIT")])
        #expect(policy.decide(exitCode: 137, failures: 1) == .retry(after: .seconds(1)))
        #expect(policy.decide(exitCode: 137, failures: 3) == .fail(reason: "failed after 3 attempts (MaxRetryCount 2)"))
        #expect(policy.decide(exitCode: 2, failures: 1) == .fail(reason: "exit code 2 is not retried (rule EXIT)"))
        #expect(policy.decide(exitCode: 42, failures: 2) == .retry(after: .seconds(2)))
        #expect(policy.decide(exitCode: nil, failures: 1) == .retry(after: .seconds(1)))
    }

    @Test("back-off doubles up to its maximum")
    func backoff() {
        let policy = RetryPolicy(maxRetryCount: 100)
        #expect((1...8).map { policy.backoff(failures: $0) } == [1, 2, 4, 8, 16, 32, 60, 60].map { .seconds($0) })
    }

    func candidate(
        _ job: String, _ task: String, _ index: Int, priority: Int, age: Double = 0, env: EnvID = "env-aaaaaaaa"
    )
        -> DispatchPlanner.Candidate
    {
        DispatchPlanner.Candidate(
            task: .init(job: JobID(rawValue: job), task: task), index: index, env: env, priority: priority,
            submittedAt: t0 - age)
    }

    @Test("higher priority first, then older jobs, and no more than the free slots")
    func priorityOrder() {
        let low = candidate("job-low00000", "t", 0, priority: 1, age: 100)
        let highNew = candidate("job-high0000", "t", 0, priority: 9, age: 1)
        let highOld = candidate("job-high1111", "t", 0, priority: 9, age: 50)
        let plan = DispatchPlanner.plan(
            [low, highNew, highOld], freeSlots: ["env-aaaaaaaa": 2], active: [:], maxConcurrent: [:], now: t0)
        #expect(plan.dispatch == [highOld, highNew])
        #expect(plan.waiting[low] == .noFreeNode(env: "env-aaaaaaaa", queuedAhead: 0))
    }

    @Test(
        "run messages hold at most the smallest node's slots and spread over the nodes",
        arguments: [
            (count: 16, nodes: 2, smallest: 4, sizes: [4, 4, 4, 4]),
            (count: 4, nodes: 2, smallest: 4, sizes: [2, 2]),
            (count: 5, nodes: 2, smallest: 4, sizes: [3, 2]),
            (count: 1, nodes: 2, smallest: 4, sizes: [1]),
            (count: 3, nodes: 1, smallest: 2, sizes: [2, 1]),
            (count: 0, nodes: 2, smallest: 4, sizes: []),
        ])
    func runMessages(count: Int, nodes: Int, smallest: Int, sizes: [Int]) {
        let messages = DispatchPlanner.runMessages(count: count, nodes: nodes, smallestNode: smallest)
        #expect(messages.map(\.count) == sizes)
        #expect(messages.flatMap { Array($0) } == Array(0..<count), "every instance in one message, in order")
    }

    @Test("MaxConcurrentNum caps a task, counting what already runs; back-off waits")
    func concurrencyAndBackoff() {
        let key = DispatchPlanner.TaskKey(job: "job-aaaaaaaa", task: "t")
        let candidates = (0..<4).map { candidate("job-aaaaaaaa", "t", $0, priority: 0) }
        var delayed = candidate("job-bbbbbbbb", "u", 0, priority: 5)
        delayed.notBefore = t0 + 30
        let plan = DispatchPlanner.plan(
            candidates + [delayed], freeSlots: ["env-aaaaaaaa": 10], active: [key: 1], maxConcurrent: [key: 3],
            now: t0)
        #expect(plan.dispatch.map(\.index) == [0, 1])
        #expect(plan.waiting[candidates[2]] == .maxConcurrentReached(limit: 3))
        #expect(plan.waiting[delayed] == .retryBackoff(until: t0 + 30))
    }

    @Test("instances waiting for slots know how many are ahead of them")
    func queuedAhead() {
        let candidates = (0..<3).map { candidate("job-aaaaaaaa", "t", $0, priority: 0) }
        let plan = DispatchPlanner.plan(candidates, freeSlots: [:], active: [:], maxConcurrent: [:], now: t0)
        #expect(
            candidates.map { plan.waiting[$0] } == (0..<3).map { .noFreeNode(env: "env-aaaaaaaa", queuedAhead: $0) })
        #expect(
            plan.waiting[candidates[2]]?.sentence
                == "No node of environment env-aaaaaaaa has a free slot; 2 instances are queued ahead.")
    }

    @Test("a queue position alone is a small change; any other change of reason is not")
    func positionOnlyChanges() {
        let env: EnvID = "env-aaaaaaaa"
        let stored = PendingReason.noFreeNode(env: env, queuedAhead: 7).stateReason
        #expect(PendingReason.noFreeNode(env: env, queuedAhead: 0).differsOnlyInPosition(from: stored))
        #expect(PendingReason.noFreeNode(env: env, queuedAhead: 6).differsOnlyInPosition(from: stored))
        #expect(!PendingReason.noFreeNode(env: "env-bbbbbbbb", queuedAhead: 6).differsOnlyInPosition(from: stored))
        #expect(!PendingReason.noFreeNode(env: env, queuedAhead: 6).differsOnlyInPosition(from: nil))
        #expect(!PendingReason.maxConcurrentReached(limit: 2).differsOnlyInPosition(from: stored))
        #expect(
            !PendingReason.noFreeNode(env: env, queuedAhead: 6).differsOnlyInPosition(
                from: PendingReason.queued(env: env).stateReason))
    }

    @Test("quotas name the limit and carry the API's code", arguments: Quotas.Kind.allCases)
    func quotas(kind: Quotas.Kind) throws {
        let quotas = Quotas()
        #expect(quotas.check(kind, current: quotas.limit(kind) - 1) == nil)
        let violation = try #require(quotas.check(kind, current: quotas.limit(kind)))
        #expect(violation.description.contains(String(quotas.limit(kind))))
        #expect(
            violation.apiError.code.rawValue.hasPrefix(kind == .nodesPerEnv ? "InvalidParameterValue" : "LimitExceeded")
        )
    }

    @Test("quotas are configurable")
    func configurableQuotas() {
        var quotas = Quotas()
        quotas.jobsPerUser = 5
        #expect(quotas.check(.jobs, current: 4, adding: 2)?.limit == 5)
    }

    @Test(
        "pending reasons have a code and a sentence",
        arguments: [
            (PendingReason.waitingForTask("split"), "WAITING_FOR_TASK", "Waiting for task split to finish."),
            (
                .maxConcurrentReached(limit: 4), "MAX_CONCURRENT_REACHED",
                "The task already runs its MaxConcurrentNum of 4 instances at once."
            ),
            (.quotaReached(.jobs), "QUOTA_REACHED", "The quota of jobs is reached."),
            (
                .environmentScalingUp(env: "env-aaaaaaaa"), "ENVIRONMENT_SCALING_UP",
                "Environment env-aaaaaaaa is creating nodes for this work."
            ),
            (
                .noFreeNode(env: "env-aaaaaaaa", queuedAhead: 1), "NO_FREE_NODE",
                "No node of environment env-aaaaaaaa has a free slot; 1 instance is queued ahead."
            ),
            (
                .retryBackoff(until: t0), "RETRY_BACKOFF",
                "The last attempt failed; the next starts after 2027-01-15T08:00:00Z."
            ),
        ])
    func pendingReasons(reason: PendingReason, code: String, sentence: String) {
        #expect(reason.code == code)
        #expect(reason.sentence == sentence)
    }

    @Test("a waiting task names the predecessor it waits for")
    func waitingFor() {
        let graph = JobGraph(
            tasks: ["a", "b", "c"],
            dependences: [Dependence(startTask: "a", endTask: "c"), Dependence(startTask: "b", endTask: "c")])
        var readiness = DagReadiness(graph: graph, rule: .preTaskSucceed)
        #expect(readiness.firstUnfinishedPredecessor(of: 2) == 0)
        _ = readiness.finish(0, .succeeded)
        #expect(readiness.firstUnfinishedPredecessor(of: 2) == 1)
        #expect(readiness.finish(1, .succeeded).released == [2])
    }

    @Test(
        "storage locations",
        arguments: [
            ("s3://bucket/reads/", StorageLocation.s3(bucket: "bucket", key: "reads/")),
            ("cos://data-1250000000.cos.ap-guangzhou.myqcloud.com/in", .s3(bucket: "data-1250000000", key: "in")),
            ("file:///shared/run1", .file(path: "/shared/run1")),
        ])
    func storage(path: String, location: StorageLocation) throws {
        #expect(try StorageLocation.parse(path).get() == location)
    }
}

@Suite("Dispatch allotment of free slots among waiting tasks")
struct AllotmentTests {
    let env = EnvID(rawValue: "env-aaaaaaaa")
    let other = EnvID(rawValue: "env-bbbbbbbb")

    /// `waiting` instances, of which `ready` (default all) are past any back-off.
    func demand(
        _ task: String, env: EnvID, waiting: Int, ready: Int? = nil, active: Int = 0, limit: Int? = nil,
        backoffEnd: Date? = nil
    ) -> DispatchPlanner.Demand {
        DispatchPlanner.Demand(
            task: DispatchPlanner.TaskKey(job: JobID(rawValue: "job-aaaaaaaa"), task: task), env: env,
            ready: ready ?? waiting, backoffEnd: backoffEnd, active: active, maxConcurrent: limit)
    }

    @Test("tasks take free slots in the order given; those behind a full environment learn how many wait ahead")
    func order() {
        let allotments = DispatchPlanner.allot(
            [
                demand("high", env: env, waiting: 3), demand("low", env: env, waiting: 4),
                demand("x", env: other, waiting: 2),
            ],
            freeSlots: [env: 5, other: 1])
        #expect(allotments.map(\.count) == [3, 2, 1])
        #expect(allotments[0].reason == nil)
        #expect(allotments[1].reason == .noFreeNode(env: env, queuedAhead: 0))
        #expect(allotments[2].reason == .noFreeNode(env: other, queuedAhead: 0))
        let full = DispatchPlanner.allot(
            [demand("a", env: env, waiting: 2), demand("b", env: env, waiting: 1)], freeSlots: [env: 0])
        #expect(full.map(\.reason) == [.noFreeNode(env: env, queuedAhead: 0), .noFreeNode(env: env, queuedAhead: 2)])
    }

    @Test("MaxConcurrentNum counts the task's active instances and leaves the other slots to other tasks")
    func maxConcurrent() {
        let allotments = DispatchPlanner.allot(
            [demand("limited", env: env, waiting: 10, active: 2, limit: 3), demand("free", env: env, waiting: 10)],
            freeSlots: [env: 6])
        #expect(allotments.map(\.count) == [1, 5])
        #expect(allotments[0].reason == .maxConcurrentReached(limit: 3))
        #expect(allotments[1].reason == .noFreeNode(env: env, queuedAhead: 0))
    }

    @Test("instances in retry back-off wait for it to end, with nothing else holding them")
    func backoff() {
        let end = Date(timeIntervalSince1970: 1_800_000_000)
        let allotments = DispatchPlanner.allot(
            [demand("retrying", env: env, waiting: 3, ready: 1, backoffEnd: end)], freeSlots: [env: 8])
        #expect(allotments == [DispatchPlanner.Allotment(count: 1, reason: .retryBackoff(until: end))])
    }
}

@Suite("Node sizing: slots from CPUs, memory and what instances ask for")
struct NodeSizingTests {
    @Test("several slots a CPU; memory and the instances' memory limit cap them; 64 at most, 1 at least")
    func slots() {
        let gib: Int64 = 1 << 30
        #expect(NodeSizing.slots(cpus: 2, memoryBytes: 24 * gib) == 16)
        #expect(NodeSizing.slots(cpus: 2, memoryBytes: 2 * gib) == 8)
        #expect(NodeSizing.slots(cpus: 2, memoryBytes: 24 * gib, instanceMemoryBytes: 4 * gib) == 6)
        #expect(NodeSizing.slots(cpus: 64, memoryBytes: 512 * gib) == 64)
        #expect(NodeSizing.slots(cpus: 1, memoryBytes: 100 << 20) == 1)
        #expect(NodeSizing.slots(cpus: 0, memoryBytes: 0) == 1)
    }
}
