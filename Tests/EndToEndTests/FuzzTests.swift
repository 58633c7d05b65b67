import AsyncHTTPClient
import BatchCore
import Foundation
import TestSupport
import Testing

/// Thousands of signed requests, each broken in one way, to every action: none may fail the gateway (a 5xx, an
/// `InternalError`, a crash) or write a row.
@Suite("Fuzz: malformed requests to every action", .serialized, .timeLimit(.minutes(5)))
struct FuzzTests {
    static let actions = [
        "SubmitJob", "DescribeJob", "DescribeJobs", "DescribeJobSubmitInfo", "DescribeTask", "DescribeTaskLogs",
        "GetTaskInstanceLog", "TerminateJob", "TerminateTaskInstance", "DeleteJob", "RetryJobs",
        "DescribeJobMonitorData", "CreateTaskTemplate", "DescribeTaskTemplates", "ModifyTaskTemplate",
        "DeleteTaskTemplates", "CreateComputeEnv", "DescribeComputeEnv", "DescribeComputeEnvs", "ModifyComputeEnv",
        "DeleteComputeEnv", "DescribeComputeEnvActivities", "DescribeComputeEnvCreateInfo",
        "DescribeComputeEnvCreateInfos", "TerminateComputeNode", "TerminateComputeNodes", "AttachInstances",
        "DetachInstances", "DescribeAvailableCvmInstanceTypes", "DescribeCvmZoneInstanceConfigInfos",
        "DescribeInstanceCategories",
    ]

    @Test("100 broken requests per action (seeded): no 5xx, no InternalError, no row written, the gateway lives")
    func brokenRequests() async throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["BATCH_FUZZ_SEED"] ?? "") ?? 20_261_129
        try await Stack.run { stack in
            let env = try await stack.createEnv(nodes: 0)
            let job = try await stack.submit(
                "target", env: env,
                tasks: [["TaskName": "t", "Application": ["DeliveryForm": "LOCAL", "Command": "true"]]])
            // The scheduler has made the target's instance and the outbox has sent what it wrote: from here on,
            // the stack writes no row of its own, so a row counted later was written by a broken request.
            try await waitUntil("the target job's instance is made and the outbox is empty") {
                let instances = try await stack.rowCount("task_instances")
                let unsent = try await stack.rowCount("outbox")
                return instances == 1 && unsent == 0
            }
            let tables = try await stack.tables()
            var before: [String: Int] = [:]
            for table in tables { before[table] = try await stack.rowCount(table) }

            var random = SeededRandomNumberGenerator(seed: seed)
            var sent = 0
            var failures: [String] = []
            for action in Self.actions {
                let valid = Self.validBody(action, env: env, job: job)
                for _ in 0..<100 {
                    let (how, body) = Self.broken(valid, random: &random)
                    let (status, response) = try await stack.signedSend(action, body)
                    sent += 1
                    let code = (response["Error"] as? [String: Any])?["Code"] as? String
                    if status >= 500 || code == "InternalError" || (response["Error"] == nil && status == 200) {
                        failures.append("\(action) (\(how)): HTTP \(status), \(code ?? "no error")")
                    }
                }
            }
            #expect(failures.isEmpty, "seed \(seed): \(failures.prefix(50).joined(separator: "\n"))")
            #expect(sent == Self.actions.count * 100)
            #expect(stack.isRunning("APIGateway"), "the gateway is still running")
            for table in tables {
                #expect(try await stack.rowCount(table) == before[table], "seed \(seed): rows written to \(table)")
            }
        }
    }

    /// A request each action would take, with ids of things that exist, and only the fields the action reads.
    static func validBody(_ action: String, env: String, job: String) -> [String: Any] {
        let application: [String: Any] = ["DeliveryForm": "LOCAL", "Command": "true"]
        let template: [String: Any] = ["TaskName": "t", "EnvId": env, "Application": application]
        switch action {
        case "SubmitJob":
            return [
                "Job": [
                    "JobName": "fuzz", "Priority": 1,
                    "Tasks": [["TaskName": "t", "TaskInstanceNum": 2, "EnvId": env, "Application": application]],
                ]
            ]
        case "CreateTaskTemplate": return ["TaskTemplateName": "fuzz", "TaskTemplateInfo": template]
        case "ModifyTaskTemplate":
            return ["TaskTemplateId": "tmpl-abcdefgh", "TaskTemplateName": "fuzz", "TaskTemplateInfo": template]
        case "CreateComputeEnv":
            return ["ComputeEnv": ["EnvName": "fuzz", "DesiredComputeNodeCount": 1, "EnvType": "MANAGED"]]
        case "ModifyComputeEnv": return ["EnvId": env, "DesiredComputeNodeCount": 2, "EnvName": "renamed"]
        case "AttachInstances": return ["EnvId": env, "Instances": [["InstanceId": "box-1"]]]
        case "DetachInstances": return ["EnvId": env, "InstanceIds": ["box-1"]]
        case "TerminateComputeNode": return ["EnvId": env, "ComputeNodeId": "node-abcdefgh"]
        case "TerminateComputeNodes": return ["EnvId": env, "ComputeNodeIds": ["node-abcdefgh"]]
        case "DeleteComputeEnv", "DescribeComputeEnv", "DescribeComputeEnvCreateInfo": return ["EnvId": env]
        case "DescribeComputeEnvActivities": return ["EnvId": env, "Offset": 0, "Limit": 10]
        case "DescribeComputeEnvs", "DescribeComputeEnvCreateInfos": return ["EnvIds": [env], "Offset": 0, "Limit": 10]
        case "DescribeTaskTemplates": return ["TaskTemplateIds": ["tmpl-abcdefgh"], "Offset": 0, "Limit": 10]
        case "DeleteTaskTemplates": return ["TaskTemplateIds": ["tmpl-abcdefgh"]]
        case "DescribeJobs": return ["JobIds": [job], "Offset": 0, "Limit": 10]
        case "RetryJobs": return ["JobIds": [job]]
        case "DescribeTask", "DescribeTaskLogs": return ["JobId": job, "TaskName": "t", "Offset": 0, "Limit": 10]
        case "GetTaskInstanceLog":
            return ["JobId": job, "TaskName": "t", "TaskInstanceIndex": 0, "Offset": 0, "Limit": 10]
        case "TerminateTaskInstance", "DescribeJobMonitorData":
            return ["JobId": job, "TaskName": "t", "TaskInstanceIndex": 0]
        case "DescribeAvailableCvmInstanceTypes", "DescribeCvmZoneInstanceConfigInfos":
            return ["Filters": [["Name": "zone", "Values": ["local"]]]]
        case "DescribeInstanceCategories": return [:]
        default: return ["JobId": job]
        }
    }

    /// `valid` broken in one way that no action may accept: a value of the wrong kind, the text cut short, nested
    /// too deep, not an object, bytes that are not UTF-8, or over the size limit.
    static func broken(_ valid: [String: Any], random: inout SeededRandomNumberGenerator) -> (String, [UInt8]) {
        let text = Array(try! JSONSerialization.data(withJSONObject: valid, options: [.sortedKeys]))
        var paths: [[Any]] = []
        collectPaths(valid, prefix: [], into: &paths)
        switch random.next(below: 10) {
        case 0...3 where !paths.isEmpty:
            let path = paths[random.next(below: paths.count)]
            let current = value(at: path, in: valid)
            let replacement = wrongKind(for: current, random: &random)
            let mutated = replacing(path, in: valid, with: replacement)
            return (
                "\(path.map { "\($0)" }.joined(separator: ".")) = \(replacement)",
                Array(try! JSONSerialization.data(withJSONObject: mutated))
            )
        case 0...5:
            let cut = 1 + random.next(below: text.count - 1)
            return ("cut at \(cut) of \(text.count)", Array(text.prefix(cut)))
        case 6:
            let depth = [100, 1_000, 10_000, 100_000][random.next(below: 4)]
            return (
                "nested \(depth) deep",
                Array(repeating: UInt8(ascii: "["), count: depth) + text
                    + Array(repeating: UInt8(ascii: "]"), count: depth)
            )
        case 7:
            let shapes: [[UInt8]] = [
                Array("[]".utf8), Array("null".utf8), Array("\"SubmitJob\"".utf8), Array("12345678901234567890".utf8),
                Array("{\"Job\":".utf8), [0xff, 0xfe, 0x7b, 0x7d], Array("{}{}".utf8),
            ]
            let shape = shapes[random.next(below: shapes.count)]
            return ("not an object: \(shape.prefix(20))", shape)
        case 8:
            var bytes = text
            for _ in 0..<4 { bytes[random.next(below: bytes.count)] = UInt8(0x80 + random.next(below: 0x40)) }
            return ("invalid UTF-8", bytes)
        default:
            return (
                "over 1 MiB",
                Array("{\"Pad\":\"".utf8) + Array(repeating: UInt8(ascii: "a"), count: 1 << 20) + Array("\"}".utf8)
            )
        }
    }

    /// A value of another JSON kind than `value` (never null: null is an absent optional field).
    static func wrongKind(for value: Any, random: inout SeededRandomNumberGenerator) -> Any {
        let choices: [Any]
        switch value {
        case is String: choices = [42, 1.5, true, ["x"], ["A": 1]]
        case is Bool: choices = ["yes", 7, [true]]
        case is Int, is Double: choices = ["seven", 1.5, 1e30, -1e30, ["n": 1], [1]]
        case is [Any]: choices = ["list", 3, ["A": "b"]]
        default: choices = ["object", 3, [1, 2]]
        }
        return choices[random.next(below: choices.count)]
    }

    static func collectPaths(_ value: Any, prefix: [Any], into paths: inout [[Any]]) {
        if let object = value as? [String: Any] {
            for (key, child) in object.sorted(by: { $0.key < $1.key }) {
                paths.append(prefix + [key])
                collectPaths(child, prefix: prefix + [key], into: &paths)
            }
        } else if let array = value as? [Any] {
            for (index, child) in array.enumerated() {
                paths.append(prefix + [index])
                collectPaths(child, prefix: prefix + [index], into: &paths)
            }
        }
    }

    static func value(at path: [Any], in root: Any) -> Any {
        path.reduce(root) { current, step in
            if let key = step as? String { return (current as! [String: Any])[key]! }
            return (current as! [Any])[step as! Int]
        }
    }

    static func replacing(_ path: [Any], in root: Any, with replacement: Any) -> Any {
        guard let step = path.first else { return replacement }
        let rest = Array(path.dropFirst())
        if let key = step as? String, var object = root as? [String: Any] {
            object[key] = replacing(rest, in: object[key]!, with: replacement)
            return object
        }
        var array = root as! [Any]
        let index = step as! Int
        array[index] = replacing(rest, in: array[index], with: replacement)
        return array
    }
}

extension SeededRandomNumberGenerator {
    /// A number in `0..<bound`, from the next value (the same seed, the same requests).
    mutating func next(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

extension Stack {
    /// Sends `body` to `action`, signed as the stack's user; returns the HTTP status and the `Response` object.
    func signedSend(_ action: String, _ body: [UInt8]) async throws -> (status: Int, response: [String: Any]) {
        try await send(
            headers: TC3Signature.signedRequestHeaders(
                secretID: secretID, secretKey: secretKey, host: endpoint, action: action, body: body,
                timestamp: Int(Date().timeIntervalSince1970)),
            body: body)
    }

    /// The tables of the stack's database (but the migrations' own).
    func tables() async throws -> [String] {
        try await query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")
    }

    func isRunning(_ service: String) -> Bool { processes[service]?.isRunning ?? false }
}
