import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Scheduling overhead measured end to end through the running system, on trivial instances:
///
/// - throughput: one task of `--instances` (default 5,000) instances of `true`, from SubmitJob to `SUCCEED`;
/// - latency: a chain of 50 one-instance tasks, each step the time from one task's instance starting to the next
///   one's (the instances record their own start in `--work`);
/// - many jobs: `--jobs` (default 2,000) jobs of one instance of `true`, submitted 16 at a time, from the first
///   SubmitJob to the last `SUCCEED` (a backlog of small jobs, as a flood of submissions leaves);
/// - a backlog: `--backlog` (default none) one-instance jobs submitted 16 at a time to an environment of no nodes,
///   where they wait scheduled; then the environment gets its nodes, and the rate at which they drain the backlog is
///   set beside the steady stream's above (a scheduler whose every pass looked at each waiting job would slow down);
/// - memory: with `--scheduler-pid`, the scheduler's resident memory while one task of `--large` (default 100,000)
///   instances runs, sampled at every tenth of the way, and its peak.
///
///   api-bench --scenario scheduler --endpoint … --credentials users.json --work DIR [--nodes 2]
///       [--instances 5000] [--jobs 2000] [--backlog 20000 (default 0: none)]
///       [--large 100000 (0: none)] [--scheduler-pid PID] [--sandbox on|off]
enum SchedulerBench {
    static func run(_ bench: Bench) async throws {
        let user = bench.users[0]
        let work = option("--work") ?? NSTemporaryDirectory()
        let nodes = Int(option("--nodes") ?? "") ?? 2
        let sandbox = option("--sandbox") != "off"
        let mode = sandbox ? "sandbox" : "bare"
        func createEnv(_ name: String, nodes: Int) async throws -> String {
            try await bench.call(
                "CreateComputeEnv",
                ["ComputeEnv": ["EnvName": name, "DesiredComputeNodeCount": nodes, "Sandbox": sandbox]], as: user
            )["EnvId"] as? String ?? ""
        }
        func waitForNodes(_ env: String) async throws {
            try await waitUntil("\(nodes) nodes run") {
                let view = try await bench.call("DescribeComputeEnv", ["EnvId": env], as: user)
                let metrics = view["ComputeNodeMetrics"] as? [String: Any]
                return metrics?["RunningCount"] as? Int == nodes
            }
            // The nodes announce themselves with their first heartbeat; give the scheduler that one beat.
            try await Task.sleep(for: .seconds(4))
        }
        let env = try await createEnv("sched-bench-\(mode)", nodes: nodes)
        say("instances \(sandbox ? "in the node's sandbox" : "without a sandbox")")
        try await waitForNodes(env)

        func task(_ name: String, _ count: Int, _ command: String) -> [String: Any] {
            [
                "TaskName": name, "TaskInstanceNum": count, "EnvId": env,
                "Application": ["DeliveryForm": "LOCAL", "Command": command],
            ]
        }

        let instances = Int(option("--instances") ?? "") ?? 5000
        let wide = try await runJob(bench, ["JobName": "wide", "Tasks": [task("wide", instances, "true")]])
        say(
            String(
                format: "one task of %d instances of true: %.1f s, %.0f instances/s", instances, wide.seconds,
                Double(instances) / wide.seconds))

        let records = URL(fileURLWithPath: work).appendingPathComponent("chain")
        // Sandboxed instances run as the node's unprivileged user: the records are theirs to write.
        try FileManager.default.createDirectory(
            at: records, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o1777])
        let steps = 50
        let chain = try await runJob(
            bench,
            [
                "JobName": "chain",
                "Tasks": (0..<steps).map { task("s\($0)", 1, "date +%s%N > \(records.path)/$BATCH_TASK_NAME") },
                "Dependences": (1..<steps).map { ["StartTask": "s\($0 - 1)", "EndTask": "s\($0)"] },
            ])
        let starts = try (0..<steps).map { index in
            let text = try String(contentsOf: records.appendingPathComponent("s\(index)"), encoding: .utf8)
            return Double(text.trimmingCharacters(in: .whitespacesAndNewlines))! / 1e6
        }
        let gaps = zip(starts.dropFirst(), starts).map { $0 - $1 }.sorted()
        say(
            String(
                format: "chain of %d one-instance tasks: %.1f s; step p50 %.1f ms, p90 %.1f ms, max %.1f ms", steps,
                chain.seconds, gaps[gaps.count / 2], gaps[gaps.count * 9 / 10], gaps.last!))

        let jobs = Int(option("--jobs") ?? "") ?? 2000
        var steady: Double?
        if jobs > 0 {
            let many = try await runJobs(bench, jobs, name: "many-\(mode)", env: env)
            steady = Double(jobs) / many.done
            say(
                String(
                    format:
                        "%d one-instance jobs of true, submitted 16 at a time: %.1f s, %.0f jobs/s (all accepted after %.1f s)",
                    jobs, many.done, Double(jobs) / many.done, many.submitted))
        }

        let backlog = Int(option("--backlog") ?? "") ?? 0
        if backlog > 0 {
            let idle = try await createEnv("backlog-\(mode)", nodes: 0)
            let name = "backlog-\(mode)"
            let submitted = try await submitJobs(bench, backlog, name: name, env: idle)
            let scheduled = try await waitForJobs(bench, named: name, in: "RUNNABLE", count: backlog)
            _ = try await bench.call("ModifyComputeEnv", ["EnvId": idle, "DesiredComputeNodeCount": nodes], as: user)
            try await waitForNodes(idle)
            let drained = try await waitForJobs(bench, named: name, in: "SUCCEED", count: backlog)
            say(
                String(
                    format:
                        "a backlog of %d one-instance jobs: accepted in %.1f s, all scheduled (waiting for nodes) after %.1f s; drained by %d nodes in %.1f s: %.0f jobs/s (the steady stream: %@)",
                    backlog, submitted, scheduled, nodes, drained, Double(backlog) / drained,
                    steady.map { String(format: "%.0f jobs/s", $0) } ?? "not run"))
        }

        let large = Int(option("--large") ?? "") ?? 100_000
        guard let pid = option("--scheduler-pid").flatMap(Int32.init), large > 0 else { return }
        var samples: [String] = []
        var nextTenth = 1
        let big = try await runJob(
            bench, ["JobName": "large", "Tasks": [task("large", large, "true")]], poll: .milliseconds(250)
        ) { done in
            while nextTenth <= 10, done * 10 >= large * nextTenth {
                samples.append(String(format: "%d%% %.0f MB", nextTenth * 10, memory(of: pid, "VmRSS")))
                nextTenth += 1
            }
        }
        say(
            String(
                format:
                    "one task of %d instances: %.1f s, %.0f instances/s; scheduler RSS by progress: %@; peak %.0f MB",
                large, big.seconds, Double(large) / big.seconds, samples.joined(separator: ", "),
                memory(of: pid, "VmHWM")))
    }

    /// Submits `job` and waits for it to succeed, calling `progress` with its succeeded instances as it goes. It asks
    /// every `poll`: often enough to time a run of seconds to a few percent, seldom enough to leave the machine to the
    /// services measured (every 20 ms, the gateway and the database answering took 8% of this machine).
    static func runJob(
        _ bench: Bench, _ job: [String: Any], poll: Duration = .milliseconds(100), progress: (Int) -> Void = { _ in }
    ) async throws -> (id: String, seconds: Double) {
        let user = bench.users[0]
        let start = ContinuousClock.now
        let id = try await bench.call("SubmitJob", ["Job": job], as: user)["JobId"] as? String ?? ""
        while true {
            let view = try await bench.call("DescribeJob", ["JobId": id], as: user)
            let state = view["JobState"] as? String
            let metrics = view["TaskInstanceMetrics"] as? [String: Any]
            progress(metrics?["SucceedCount"] as? Int ?? 0)
            if state == "SUCCEED" { return (id, Bench.seconds(ContinuousClock.now - start)) }
            if state == "FAILED" || state == "FAILED_INTERRUPTED" {
                throw Failure(description: "job \(job["JobName"] ?? "") ended \(state!)")
            }
            try await Task.sleep(for: poll)
        }
    }

    /// Submits `count` jobs named `name` of one instance of `true` each in `env`, 16 at a time, and waits until all
    /// have succeeded; returns the seconds from the first submission to the last one accepted, and to the last success.
    static func runJobs(_ bench: Bench, _ count: Int, name: String, env: String) async throws
        -> (submitted: Double, done: Double)
    {
        let start = ContinuousClock.now
        let submitted = try await submitJobs(bench, count, name: name, env: env)
        _ = try await waitForJobs(bench, named: name, in: "SUCCEED", count: count)
        return (submitted, Bench.seconds(ContinuousClock.now - start))
    }

    /// Submits `count` jobs named `name` of one instance of `true` each in `env`, 16 at a time; returns the seconds
    /// until the last was accepted.
    static func submitJobs(_ bench: Bench, _ count: Int, name: String, env: String) async throws -> Double {
        let user = bench.users[0]
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for submitter in 0..<16 {
                group.addTask {
                    let job: [String: Any] = [
                        "Job": [
                            "JobName": name,
                            "Tasks": [
                                [
                                    "TaskName": "t", "EnvId": env,
                                    "Application": ["DeliveryForm": "LOCAL", "Command": "true"],
                                ]
                            ],
                        ]
                    ]
                    for _ in stride(from: submitter, to: count, by: 16) {
                        _ = try await bench.call("SubmitJob", job, as: user)
                    }
                }
            }
            try await group.waitForAll()
        }
        return Bench.seconds(ContinuousClock.now - start)
    }

    /// Waits until `count` jobs named `name` are in `state`; returns the seconds it took.
    static func waitForJobs(_ bench: Bench, named name: String, in state: String, count: Int) async throws -> Double {
        let start = ContinuousClock.now
        let filters: [[String: Any]] = [
            ["Name": "job-name", "Values": [name]], ["Name": "job-state", "Values": [state]],
        ]
        while true {
            let view = try await bench.call("DescribeJobs", ["Filters": filters, "Limit": 1], as: bench.users[0])
            if view["TotalCount"] as? Int ?? 0 >= count { return Bench.seconds(ContinuousClock.now - start) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    static func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
        for _ in 0..<600 {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw Failure(description: "timed out waiting until \(what)")
    }

    /// Prints a line at once (stdout may be a file, which would hold it back).
    static func say(_ line: String) {
        print(line)
        fflush(nil)
    }

    /// A `/proc/PID/status` figure (`VmRSS`, `VmHWM`) in MB.
    static func memory(of pid: Int32, _ field: String) -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("\(field):") } ?? ""
        return (Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
    }
}
