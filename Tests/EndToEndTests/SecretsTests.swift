import BatchCore
import Foundation
import Storage
import TestSupport
import Testing

/// After a run that uses key pairs, storage credentials, environment variables and a command, none of those values
/// may be found in plain text in a service's log or a column, nor (but the command, which its owner reads back) in
/// an API response other than the one that made the key pair.
@Suite("Secrets: sealed in the database, never in logs or responses", .serialized, .timeLimit(.minutes(5)))
struct SecretsTests {
    @Test("key pairs, storage keys, environment variables and commands appear in no log, response or column")
    func secretsStaySealed() async throws {
        let store = try TestServers.objectStore()
        let bucket = "secrets-\(UUID().uuidString.prefix(8).lowercased())"
        let s3 = S3Client(
            endpoint: store.endpoint,
            credentials: .init(accessKeyID: store.accessKeyID, secretAccessKey: store.secretAccessKey))
        try await s3.createBucket(bucket)
        try await s3.put(bucket: bucket, key: "in/data.txt", data: Data("input\n".utf8))
        let variable = "variable-\(UUID().uuidString)"
        let inCommand = "command-\(UUID().uuidString)"
        try await Stack.run { stack in
            let other = try await stack.createUser("other")
            let authentications = [["Scene": "S3", "SecretId": store.accessKeyID, "SecretKey": store.secretAccessKey]]
            let env = try await stack.createEnv(nodes: 1)
            let task: [String: Any] = [
                "TaskName": "t", "TaskInstanceNum": 2, "EnvId": env,
                "Application": [
                    "DeliveryForm": "LOCAL",
                    "Command": "test -n \"$TOKEN\" && cp /data/in/data.txt /data/out/ # \(inCommand)",
                ],
                "EnvVars": [["Name": "TOKEN", "Value": variable]],
                "InputMappings": [["SourcePath": "s3://\(bucket)/in/", "DestinationPath": "/data/in/"]],
                "OutputMappings": [["SourcePath": "/data/out/", "DestinationPath": "s3://\(bucket)/out/"]],
                "RedirectInfo": [
                    "StdoutRedirectPath": "s3://\(bucket)/logs/", "StderrRedirectPath": "s3://\(bucket)/logs/",
                ],
                "Authentications": authentications,
            ]
            let template = try await stack.call(
                "CreateTaskTemplate", ["TaskTemplateName": "secretive", "TaskTemplateInfo": task])
            let templateID = try unwrap(template["TaskTemplateId"] as? String)
            let jobID = try unwrap(
                try await stack.call("SubmitJob", ["Job": ["JobName": "secretive", "Tasks": [task]]])["JobId"]
                    as? String)
            #expect(try await stack.waitForJob(jobID)["JobState"] as? String == "SUCCEED")
            #expect(String(decoding: try await s3.get(bucket: bucket, key: "out/data.txt"), as: UTF8.self) == "input\n")

            // Every read of what was made.
            var responses: [String] = [template.description]
            for (action, body) in [
                ("DescribeJob", ["JobId": jobID]), ("DescribeJobs", [:]), ("DescribeJobSubmitInfo", ["JobId": jobID]),
                ("DescribeTask", ["JobId": jobID, "TaskName": "t"]),
                ("DescribeTaskLogs", ["JobId": jobID, "TaskName": "t"]),
                ("GetTaskInstanceLog", ["JobId": jobID, "TaskName": "t", "TaskInstanceIndex": 0]),
                ("DescribeTaskTemplates", ["TaskTemplateIds": [templateID]]), ("DescribeComputeEnv", ["EnvId": env]),
                ("DescribeComputeEnvs", [:]), ("DescribeComputeEnvActivities", ["EnvId": env]),
                ("DescribeComputeEnvCreateInfo", ["EnvId": env]), ("DescribeComputeEnvCreateInfos", [:]),
            ] as [(String, [String: Any])] {
                let response = try await stack.call(action, body)
                responses.append(String(decoding: try JSONSerialization.data(withJSONObject: response), as: UTF8.self))
            }
            // Every service's log (the executors' too), and every row of every table as text.
            var logs: [(String, String)] = []
            let files = FileManager.default.enumerator(atPath: stack.directory.path)?.compactMap { $0 as? String } ?? []
            for file in files where file.hasSuffix(".log") && !file.contains("-attempt-") {
                logs.append(
                    (
                        file,
                        (try? String(contentsOf: stack.directory.appendingPathComponent(file), encoding: .utf8)) ?? ""
                    ))
            }
            #expect(logs.contains { $0.0 == "APIGateway.log" } && logs.count >= 4, "\(logs.map(\.0))")
            var rows: [(String, String)] = []
            for table in try await stack.tables() {
                rows += try await stack.query("SELECT t::text FROM \(table) t").map { (table, $0) }
            }

            let masterKey = try unwrap(
                stack.environment["BATCH_MASTER_KEY"]?.split(separator: ":").last.map(String.init))
            let secrets = [
                ("the user's SecretKey", stack.secretKey), ("another user's SecretKey", other.secretKey),
                ("the storage SecretKey", store.secretAccessKey), ("an environment variable's value", variable),
                ("the command", inCommand), ("the master key", masterKey),
            ]
            for (what, secret) in secrets {
                // A user reads back their own command (DescribeJobSubmitInfo, DescribeTaskTemplates), as in
                // Tencent Cloud; it is sealed at rest and never logged.
                for (index, response) in responses.enumerated() where what != "the command" {
                    #expect(!response.contains(secret), "\(what) in response \(index)")
                }
                for (file, text) in logs { #expect(!text.contains(secret), "\(what) in \(file)") }
                for (table, text) in rows { #expect(!text.contains(secret), "\(what) in a row of \(table)") }
            }
        }
    }
}
