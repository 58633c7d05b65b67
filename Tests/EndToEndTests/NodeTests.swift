import Foundation
import TestSupport
import Testing

/// Compute environments' nodes through the whole system: scaling with work queued, and a node that dies.
@Suite("Provisioner: scaling, draining and lost nodes", .serialized, .timeLimit(.minutes(5)))
struct NodeTests {
    @Test("ModifyComputeEnv from 1 to 4 nodes and back to 1 while work is queued: busy nodes drain, nothing fails")
    func scaleUpAndDown() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 1)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "scaling", env: env, tasks: [recordingTask("work", instances: 40, records: records, body: "sleep 1")])
            try await waitUntil("the first instances run") {
                try await stack.runningInstances(jobID, "work") > 0
            }
            _ = try await stack.call("ModifyComputeEnv", ["EnvId": env, "DesiredComputeNodeCount": 4])
            try await waitUntil("four nodes run instances") {
                Set(try await stack.instances(jobID, "work").compactMap { $0["ComputeNodeInstanceId"] as? String })
                    .count >= 4
            }
            _ = try await stack.call("ModifyComputeEnv", ["EnvId": env, "DesiredComputeNodeCount": 1])
            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            // Nothing was interrupted: every instance ran once, in its first attempt, to the end.
            let runs = try readRecords(records)
            #expect(runs.map(\.index).sorted() == Array(0..<40))
            #expect(runs.allSatisfy { $0.attempt == 1 })
            // One node left, and no other row: a node being drained is DELETING until it is gone.
            try await waitUntil("the environment is back to one node") {
                let states = try await stack.nodeStates(env)
                return states.count == 1 && states.values.first == "RUNNING"
            }
            let activities = try await stack.call("DescribeComputeEnvActivities", ["EnvId": env, "Limit": 100])
            let destroyed = try unwrap(activities["ActivitySet"] as? [[String: Any]]).filter {
                $0["ComputeNodeActivityType"] as? String == "destroy"
            }
            #expect(destroyed.count == 3)
            #expect(destroyed.allSatisfy { $0["Cause"] as? String == "the environment wants 1 nodes" })
            #expect(destroyed.allSatisfy { $0["ActivityState"] as? String == "SUCCEED" })
        }
    }

    @Test("kill -9 of an executor mid-instance: the instance runs again on another node, and the node is replaced")
    func executorKilled() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 2)
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "lost-node", env: env, tasks: [recordingTask("work", instances: 2, records: records, body: "sleep 2")])
            var victim = ""
            try await waitUntil("both instances run") {
                let instances = try await stack.instances(jobID, "work")
                guard instances.allSatisfy({ $0["TaskInstanceState"] as? String == "RUNNING" }) else { return false }
                victim =
                    instances.first { $0["TaskInstanceIndex"] as? Int == 0 }?["ComputeNodeInstanceId"] as? String
                    ?? ""
                return !victim.isEmpty
            }
            let pids = try await processes(matching: "ExecutorService.*--node-id \(victim)")
            #expect(pids.count == 1)
            for pid in pids { kill(pid_t(pid)!, SIGKILL) }

            let job = try await stack.waitForJob(jobID)
            #expect(job["JobState"] as? String == "SUCCEED")
            let instance = try unwrap(
                try await stack.instances(jobID, "work").first { $0["TaskInstanceIndex"] as? Int == 0 })
            #expect(instance["ComputeNodeInstanceId"] as? String != victim)
            // The killed attempt never finished (its sandbox died with its node); the second did.
            #expect(try readRecords(records).filter { $0.index == 0 }.map(\.attempt) == [2])
            try await waitUntil("a new node replaces the dead one") {
                let nodes = try await stack.nodes(env)
                return nodes.count == 2 && !nodes.contains(victim)
            }
            let activities = try await stack.call("DescribeComputeEnvActivities", ["EnvId": env, "Limit": 100])
            let destroy = try unwrap(activities["ActivitySet"] as? [[String: Any]]).first {
                $0["ComputeNodeId"] as? String == victim && $0["ComputeNodeActivityType"] as? String == "destroy"
            }
            #expect((destroy?["Cause"] as? String)?.contains("the node ended unexpectedly: killed by signal 9") == true)
        }
    }
}

extension NodeTests {
    @Test("a task with its own ComputeEnv gets nodes made for it, and they are gone once it ends")
    func anonymousEnvironment() async throws {
        try await Stack.run { stack in
            let records = try stack.recordsDirectory()
            var task = recordingTask("own", instances: 3, records: records, body: "sleep 0.5")
            task["ComputeEnv"] = ["EnvType": "MANAGED"]
            let submitted = try await stack.call("SubmitJob", ["Job": ["JobName": "anonymous", "Tasks": [task]]])
            let jobID = try unwrap(submitted["JobId"] as? String)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            #expect(try readRecords(records).map(\.index).sorted() == [0, 1, 2])
            // Its nodes ran the instances and are gone: no executor of this stack is left, no node row.
            #expect(
                Set(try await stack.instances(jobID, "own").compactMap { $0["ComputeNodeInstanceId"] as? String })
                    .count >= 1)
            try await waitUntil("the task's nodes are gone") {
                let executors = try await processes(matching: "ExecutorService.*\(stack.directory.path)/nodes")
                let rows = try await stack.rowCount("compute_nodes")
                return executors.isEmpty && rows == 0
            }
            // The environment is the task's: never listed, not in the quota; it goes with the job.
            #expect(try await stack.call("DescribeComputeEnvs", [:])["TotalCount"] as? Int == 0)
            #expect(try await stack.rowCount("compute_envs") == 1)
            _ = try await stack.call("DeleteJob", ["JobId": jobID])
            try await waitUntil("the environment goes with the job") { try await stack.rowCount("compute_envs") == 0 }
        }
    }
}

extension NodeTests {
    @Test("an executor started by hand joins its environment (AttachInstances), runs work, and drains when detached")
    func attachedNode() async throws {
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 0)
            _ = try await stack.call("AttachInstances", ["EnvId": env, "Instances": [["InstanceId": "my-box"]]])
            let executor = try ServiceProcess(
                Stack.binDirectory.appendingPathComponent("ExecutorService").path,
                [
                    "--env-id", env, "--instance-id", "my-box", "--slots", "2", "--work-dir",
                    stack.directory.appendingPathComponent("my-box").path,
                ],
                environment: try stack.executorEnvironment(env),
                log: stack.directory.appendingPathComponent("my-box.log").path)
            defer { executor.signal(SIGKILL) }
            var node = ""
            try await waitUntil("the machine's executor runs as the attached node") {
                let view = try await stack.call("DescribeComputeEnv", ["EnvId": env])
                let nodes = try unwrap(view["ComputeNodeSet"] as? [[String: Any]])
                guard nodes.count == 1, nodes[0]["ComputeNodeState"] as? String == "RUNNING" else { return false }
                #expect(nodes[0]["ComputeNodeInstanceId"] as? String == "my-box")
                #expect(nodes[0]["ResourceOrigin"] as? String == "USER_ATTACHED")
                node = nodes[0]["ComputeNodeId"] as? String ?? ""
                return true
            }
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "attached", env: env, tasks: [recordingTask("work", instances: 4, records: records, body: "sleep 1")])
            try await waitUntil("the attached node runs instances") {
                try await stack.runningInstances(jobID, "work") > 0
            }
            // Detached while it works: it finishes what it runs, takes nothing more, and leaves.
            _ = try await stack.call("DetachInstances", ["EnvId": env, "InstanceIds": ["my-box"]])
            try await waitUntil("the executor has stopped") { !executor.isRunning }
            #expect(await executor.wait() == 0)
            try await waitUntil("the node is gone") { try await stack.rowCount("compute_nodes") == 0 }
            // The scheduler hears the node's last ends, then that it is gone: nothing is out on it any more.
            try await waitUntil("the scheduler has heard the node's last word") {
                try await stack.instances(jobID, "work").allSatisfy {
                    !["STARTING", "RUNNING"].contains($0["TaskInstanceState"] as? String)
                }
            }
            let finished = try await stack.instances(jobID, "work").filter {
                $0["TaskInstanceState"] as? String == "SUCCEED"
            }
            #expect(!finished.isEmpty)
            #expect(finished.allSatisfy { $0["ComputeNodeInstanceId"] as? String == node })
            // What ran, ran once and to the end; the rest waits for a node.
            #expect(try readRecords(records).allSatisfy { $0.attempt == 1 })
            #expect(try readRecords(records).count == finished.count)
        }
    }
}

extension Stack {
    /// The environment's nodes (every state), node id → `ComputeNodeState`.
    func nodeStates(_ env: String) async throws -> [String: String] {
        let view = try await call("DescribeComputeEnv", ["EnvId": env])
        var states: [String: String] = [:]
        for node in try unwrap(view["ComputeNodeSet"] as? [[String: Any]]) {
            if let id = node["ComputeNodeId"] as? String { states[id] = node["ComputeNodeState"] as? String ?? "" }
        }
        return states
    }

    /// The ids of the environment's nodes that are `RUNNING`.
    func nodes(_ env: String) async throws -> [String] {
        try await nodeStates(env).filter { $0.value == "RUNNING" }.map(\.key)
    }

    func runningInstances(_ jobID: String, _ task: String) async throws -> Int {
        try await instances(jobID, task).filter { $0["TaskInstanceState"] as? String == "RUNNING" }.count
    }
}

extension NodeTests {
    @Test("a provisioner stalled past the nodes' lost-after (heartbeats queued, unrecorded) counts no live node lost")
    func stalledProvisioner() async throws {
        let settings = ["BATCH_NODE_LOST_AFTER": "4", "BATCH_NODE_LEASE": "3", "BATCH_HEARTBEAT_INTERVAL": "1"]
        try await Stack.run(settings: settings) { stack in
            let env = try await stack.createEnv(nodes: 2)
            try await waitUntil("both nodes run") { try await stack.nodes(env).count == 2 }
            let records = try stack.recordsDirectory()
            let jobID = try await stack.submit(
                "stall", env: env, tasks: [recordingTask("long", instances: 1, records: records, body: "sleep 10")])
            try await waitUntil("the instance runs") { try await stack.runningInstances(jobID, "long") == 1 }
            // The provisioner records heartbeats; stopped, it leaves them queued while the nodes' leases hold (the
            // broker confirms their beats). The scheduler must not take the rows' silence for the nodes'.
            let provisioner = try unwrap(stack.processes["ProvisionerService"])
            provisioner.signal(SIGSTOP)
            defer { provisioner.signal(SIGCONT) }
            try await waitUntil("no heartbeat recorded for twice the lost-after") {
                try await stack.query(
                    "SELECT count(*)::text FROM compute_nodes WHERE last_heartbeat > now() - interval '8 s'") == ["0"]
            }
            provisioner.signal(SIGCONT)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            // It ran once, on its first node, to the end: not again elsewhere while it ran.
            let runs = try readRecords(records)
            #expect(runs.map(\.attempt) == [1])
        }
    }
}
