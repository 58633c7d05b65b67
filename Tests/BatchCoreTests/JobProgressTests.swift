import Testing

@testable import BatchCore

/// split → align → merge.
let pipeline = JobGraph(
    tasks: ["split", "align", "merge"],
    dependences: [Dependence(startTask: "split", endTask: "align"), Dependence(startTask: "align", endTask: "merge")])

@Suite("Job progress: DAG readiness and state roll-up")
struct JobProgressTests {

    func progress(
        _ states: [String: ExecutionState], rule: DependencyRule = .preTaskSucceed, job: ExecutionState = .submitted
    )
        -> JobProgress
    {
        JobProgress(
            state: job,
            tasks: pipeline.tasks.map { JobProgress.TaskProgress(name: $0, state: states[$0] ?? .submitted) },
            graph: pipeline, rule: rule)
    }

    @Test("a new job starts its root tasks; the others wait")
    func startsRoots() {
        var job = progress([:])
        #expect(
            job.advance() == [
                .startTask("split"), .setTaskState("align", .pending), .setTaskState("merge", .pending),
                .setJobState(.runnable),
            ])
        #expect(job.advance().isEmpty)
    }

    @Test("a task starts when its predecessor succeeds, and the running job stays RUNNING until it ends")
    func releasesSuccessor() {
        var job = progress(["split": .succeed, "align": .pending, "merge": .pending], job: .running)
        #expect(job.advance() == [.startTask("align")])
        #expect(job.state == .running)
        // Align runs and ends, merge is released: still RUNNING, until merge ends the job.
        func jobStates(_ actions: [JobProgress.Action]) -> [ExecutionState] {
            actions.compactMap { if case .setJobState(let state) = $0 { state } else { nil } }
        }
        #expect(jobStates(job.instancesChanged(task: "align", counts: StateCounts([.running: 4]))).isEmpty)
        #expect(jobStates(job.instancesChanged(task: "align", counts: StateCounts([.succeed: 4]))).isEmpty)
        #expect(job.task("merge")?.state == .runnable)
        #expect(job.state == .running)
        #expect(jobStates(job.instancesChanged(task: "merge", counts: StateCounts([.succeed: 1]))) == [.succeed])
    }

    @Test("a task whose instances ran and ended between two looks passes through RUNNING, and its job with it")
    func passesThroughRunning() {
        var job = progress(["split": .starting, "align": .pending, "merge": .pending], job: .starting)
        #expect(
            job.instancesChanged(task: "split", counts: StateCounts([.succeed: 6])) == [
                .setTaskState("split", .running), .setJobState(.running), .setTaskState("split", .succeed),
                .startTask("align"),
            ])
        // Instances that never ran (all failed before starting) do not make the task RUNNING.
        var failed = progress(["split": .starting], job: .starting)
        #expect(
            failed.instancesChanged(task: "split", counts: StateCounts([.failed: 2])).prefix(1) == [
                .setTaskState("split", .failed)
            ])
    }

    @Test("a failed predecessor blocks the rest of the chain and fails the job")
    func failureCascades() {
        var job = progress(["split": .failed, "align": .pending, "merge": .pending], job: .running)
        let actions = job.advance()
        #expect(actions.count == 3)
        #expect(actions.last == .setJobState(.failed))
        guard case .skipTask("align", let reason) = actions[0] else {
            Issue.record("expected align to be skipped, got \(actions)")
            return
        }
        #expect(reason.contains("split"))
    }

    @Test("PRE_TASK_FINISHED runs successors after a failure")
    func finishedRule() {
        var job = progress(
            ["split": .failed, "align": .pending, "merge": .pending], rule: .preTaskFinished, job: .running)
        #expect(job.advance().first == .startTask("align"))
    }

    @Test(
        "instance states roll up into the task's state",
        arguments: [
            ([ExecutionState.succeed: 3], ExecutionState.succeed),
            ([.succeed: 2, .failed: 1], .failed),
            ([.succeed: 2, .failedInterrupted: 1], .failedInterrupted),
            ([.succeed: 1, .running: 1, .runnable: 1], .running),
            ([.runnable: 3], .runnable),
            ([.starting: 1, .runnable: 2], .starting),
        ])
    func rollUp(counts: [ExecutionState: Int], expected: ExecutionState) {
        #expect(StateCounts(counts).rolledUp == expected)
    }

    @Test("the job ends SUCCEED when every task succeeded")
    func jobSucceeds() {
        var job = progress(["split": .succeed, "align": .succeed, "merge": .running], job: .running)
        _ = job.advance()
        var final = JobProgress(
            state: .running,
            tasks: [
                .init(name: "split", state: .succeed), .init(name: "align", state: .succeed),
                .init(name: "merge", state: .running, instances: StateCounts([.succeed: 1])),
            ], graph: pipeline, rule: .preTaskSucceed)
        #expect(final.advance() == [.setTaskState("merge", .succeed), .setJobState(.succeed)])
    }
}

@Suite("Job progress: termination and RetryJobs")
struct JobTerminationTests {

    @Test("terminating a job fails the tasks not started; the running one ends with its instances")
    func terminate() {
        var job = JobProgress(
            state: .running,
            tasks: [
                .init(name: "split", state: .running, instances: StateCounts([.running: 2])),
                .init(name: "align", state: .pending), .init(name: "merge", state: .pending),
            ], graph: pipeline, rule: .preTaskSucceed)
        #expect(
            job.terminate(reason: "terminated by user") == [
                .skipTask("align", reason: "terminated by user"), .skipTask("merge", reason: "terminated by user"),
            ])
        #expect(job.state == .running)
        #expect(
            job.instancesChanged(task: "split", counts: StateCounts([.failed: 2])) == [
                .setTaskState("split", .failed), .setJobState(.failed),
            ])
    }

    @Test("RetryJobs runs again only what did not succeed, in DAG order")
    func retry() {
        var job = JobProgress(
            state: .failed,
            tasks: [
                .init(name: "split", state: .succeed, instances: StateCounts([.succeed: 1])),
                .init(name: "align", state: .failed, instances: StateCounts([.succeed: 18, .failed: 2])),
                .init(name: "merge", state: .failed),
            ], graph: pipeline, rule: .preTaskSucceed)
        let actions = job.retry()
        #expect(
            actions == [
                .setTaskState("align", .pending), .setTaskState("merge", .pending), .setJobState(.pending),
                .startTask("align"), .setJobState(.runnable),
            ])
        #expect(job.task("align")?.instances == StateCounts([.succeed: 18]))
        #expect(job.task("split")?.state == .succeed)
    }

    @Test("only a failed job can be retried")
    func retryNeedsFailure() {
        var job = JobProgress(
            state: .succeed, tasks: pipeline.tasks.map { .init(name: $0, state: .succeed) }, graph: pipeline,
            rule: .preTaskSucceed)
        #expect(job.retry().isEmpty)
    }
}

@Suite("Readiness cost")
struct ReadinessCostTests {
    /// A diamond (`a` → `b`, `c` → `d`) beside `others` unrelated tasks.
    func diamond(beside others: Int) -> JobGraph {
        JobGraph(
            tasks: ["a", "b", "c", "d"] + (0..<others).map { "x\($0)" },
            dependences: [
                Dependence(startTask: "a", endTask: "b"), Dependence(startTask: "a", endTask: "c"),
                Dependence(startTask: "b", endTask: "d"), Dependence(startTask: "c", endTask: "d"),
            ])
    }

    @Test("finishing a task visits its successors only, however large the job", arguments: [0, 10, 10_000])
    func visitsOnlySuccessors(others: Int) {
        var progress = JobProgress(graph: diamond(beside: others), rule: .preTaskSucceed)
        _ = progress.advance()
        let done = StateCounts([.succeed: 1])
        #expect(progress.instancesChanged(task: "a", counts: done).contains(.startTask("b")))
        #expect(progress.readiness.visits == 2)
        _ = progress.instancesChanged(task: "b", counts: done)
        #expect(progress.readiness.visits == 3)
    }

    @Test("a failure blocks exactly the tasks below it")
    func failureVisitsItsCone() {
        var progress = JobProgress(graph: diamond(beside: 1000), rule: .preTaskSucceed)
        _ = progress.advance()
        let actions = progress.instancesChanged(task: "a", counts: StateCounts([.failed: 1]))
        #expect(
            Set(actions.compactMap { if case .skipTask(let name, _) = $0 { name } else { nil } }) == ["b", "c", "d"])
        #expect(progress.readiness.visits <= 4)
    }
}
