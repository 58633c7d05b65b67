import Testing

@testable import BatchCore

@Suite("Job progress: DAG readiness and state roll-up")
struct JobProgressTests {
    let pipeline = JobGraph(
        tasks: ["split", "align", "merge"],
        dependences: [
            Dependence(startTask: "split", endTask: "align"), Dependence(startTask: "align", endTask: "merge"),
        ])

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

    @Test("a task starts when its predecessor succeeds")
    func releasesSuccessor() {
        var job = progress(["split": .succeed, "align": .pending, "merge": .pending], job: .running)
        #expect(job.advance() == [.startTask("align"), .setJobState(.runnable)])
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
