import BatchCore
import Foundation
import Logging
import Persistence

extension BatchAPI {
    /// Every action the gateway serves, by name.
    static let actions: [String: @Sendable (BatchAPI, ActionContext) async throws -> any Encodable & Sendable] = [
        // Jobs
        "SubmitJob": { try await $0.submitJob($1) },
        "DescribeJob": { try await $0.describeJob($1) },
        "DescribeJobs": { try await $0.describeJobs($1) },
        "DescribeJobSubmitInfo": { try await $0.describeJobSubmitInfo($1) },
        "DescribeTask": { try await $0.describeTask($1) },
        "DescribeTaskLogs": { try await $0.describeTaskLogs($1) },
        "GetTaskInstanceLog": { try await $0.getTaskInstanceLog($1) },
        "TerminateJob": { try await $0.terminateJob($1) },
        "TerminateTaskInstance": { try await $0.terminateTaskInstance($1) },
        "DeleteJob": { try await $0.deleteJob($1) },
        "RetryJobs": { try await $0.retryJobs($1) },
        "DescribeJobMonitorData": { try await $0.describeJobMonitorData($1) },
        // Task templates
        "CreateTaskTemplate": { try await $0.createTaskTemplate($1) },
        "DescribeTaskTemplates": { try await $0.describeTaskTemplates($1) },
        "ModifyTaskTemplate": { try await $0.modifyTaskTemplate($1) },
        "DeleteTaskTemplates": { try await $0.deleteTaskTemplates($1) },
        // Compute environments
        "CreateComputeEnv": { try await $0.createComputeEnv($1) },
        "DescribeComputeEnv": { try await $0.describeComputeEnv($1) },
        "DescribeComputeEnvs": { try await $0.describeComputeEnvs($1) },
        "ModifyComputeEnv": { try await $0.modifyComputeEnv($1) },
        "DeleteComputeEnv": { try await $0.deleteComputeEnv($1) },
        "DescribeComputeEnvActivities": { try await $0.describeComputeEnvActivities($1) },
        "DescribeComputeEnvCreateInfo": { try await $0.describeComputeEnvCreateInfo($1) },
        "DescribeComputeEnvCreateInfos": { try await $0.describeComputeEnvCreateInfos($1) },
        "TerminateComputeNode": { try await $0.terminateComputeNode($1) },
        "TerminateComputeNodes": { try await $0.terminateComputeNodes($1) },
        "AttachInstances": { try await $0.attachInstances($1) },
        "DetachInstances": { try await $0.detachInstances($1) },
        // What this installation offers
        "DescribeAvailableCvmInstanceTypes": { try await $0.describeAvailableCvmInstanceTypes($1) },
        "DescribeCvmZoneInstanceConfigInfos": { try await $0.describeCvmZoneInstanceConfigInfos($1) },
        "DescribeInstanceCategories": { try await $0.describeInstanceCategories($1) },
        // Ours, for operators only (BatchAPI+Admin.swift)
        "CreateUser": { try await $0.createUser($1) },
        "DisableUser": { try await $0.setUserDisabled($1, true) },
        "EnableUser": { try await $0.setUserDisabled($1, false) },
        "ModifyUserQuota": { try await $0.modifyUserQuota($1) },
        "DescribeComputeEnvNodeKey": { try await $0.describeComputeEnvNodeKey($1) },
        "DescribeUserKeyPairs": { try await $0.describeUserKeyPairs($1) },
        "CreateUserKeyPair": { try await $0.createUserKeyPair($1) },
        "RevokeUserKeyPair": { try await $0.revokeUserKeyPair($1) },
    ]

    /// Runs one action for the caller and returns what goes inside `Response`.
    func perform(action: String, context: ActionContext) async throws -> any Encodable & Sendable {
        guard !action.isEmpty else { throw APIError(.missingParameter, "the X-TC-Action header is missing") }
        guard let handler = Self.actions[action] else {
            throw APIError(.invalidAction, "action \(action.prefix(64)) is not supported")
        }
        return try await handler(self, context)
    }

    /// Decodes a request body; a wrong type or a missing field becomes `InvalidParameter` naming the field.
    static func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        // Parameters are an object: an array, a string or a number is refused before any field is read.
        guard body.isEmpty || body.first(where: { !" \t\r\n".utf8.contains($0) }) == UInt8(ascii: "{") else {
            throw APIError(.invalidParameter, "the request body is not a valid JSON object")
        }
        do {
            return try BatchJSON.decode(type, from: body.isEmpty ? Array("{}".utf8) : body)
        } catch let DecodingError.keyNotFound(key, context) {
            throw APIError(.missingParameter, "\(fieldPath(context.codingPath + [key])): required")
        } catch let DecodingError.typeMismatch(expected, context) {
            throw APIError(.invalidParameter, "\(fieldPath(context.codingPath)): expected \(describe(expected))")
        } catch let DecodingError.valueNotFound(expected, context) {
            throw APIError(
                .invalidParameter, "\(fieldPath(context.codingPath)): expected \(describe(expected)), got null")
        } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
            throw APIError(.invalidParameter, "the request body is not a valid JSON object")
        } catch DecodingError.dataCorrupted(let context) {
            throw APIError(.invalidParameterValue, "\(fieldPath(context.codingPath)): invalid value")
        } catch {
            throw APIError(.invalidParameter, "the request body is not a valid JSON object")
        }
    }

    /// `Job.Tasks[0].TaskName` from a decoding path.
    static func fieldPath(_ path: [any CodingKey]) -> String {
        var result = ""
        for key in path {
            if let index = key.intValue {
                result += "[\(index)]"
            } else {
                let name = key.stringValue.prefix(1).uppercased() + key.stringValue.dropFirst()
                result += result.isEmpty ? name : ".\(name)"
            }
        }
        return result.isEmpty ? "the request body" : result
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Bool.Type: "a boolean"
        case is Double.Type: "a number"
        case is [Any].Type: "an array"
        default: "an object"
        }
    }

    static func jobID(_ string: String, field: String = "JobId") throws -> JobID {
        guard let id = JobID(validating: string) else {
            throw APIError(.jobIdMalformed, "\(field): not a job id (job-…)")
        }
        return id
    }

    static func envID(_ string: String, field: String = "EnvId") throws -> EnvID {
        guard let id = EnvID(validating: string) else {
            throw APIError(.envIdMalformed, "\(field): not an environment id (env-…)")
        }
        return id
    }

    static func templateID(_ string: String, field: String) throws -> TaskTemplateID {
        guard let id = TaskTemplateID(validating: string) else {
            throw APIError(.taskTemplateIdMalformed, "\(field): not a task template id (tmpl-…)")
        }
        return id
    }

    static func nodeID(_ string: String, field: String) throws -> NodeID {
        guard let id = NodeID(validating: string) else {
            throw APIError(.computeNodeIdMalformed, "\(field): not a compute node id (node-…)")
        }
        return id
    }

    /// A list of ids, 1 to `maximum` of them, without repeats.
    static func ids<ID>(_ strings: [String], field: String, maximum: Int = 100, parse: (String, String) throws -> ID)
        throws -> [ID]
    {
        guard !strings.isEmpty else { throw APIError(.missingParameter, "\(field): give at least one") }
        guard strings.count <= maximum else { throw APIError(.limitExceededValue, "\(field): at most \(maximum)") }
        guard Set(strings).count == strings.count else {
            throw APIError(.invalidParameterValue, "\(field): has repeats")
        }
        return try strings.enumerated().map { try parse($1, "\(field)[\($0)]") }
    }
}

/// What an action gets: the caller, the body and a logger carrying the request id.
struct ActionContext: Sendable {
    var user: UserID
    /// The key pair the request is signed with.
    var secretID: String
    /// The caller may use the admin actions.
    var isOperator: Bool = false
    var body: [UInt8]
    var logger: Logger

    func decode<T: Decodable>(_ type: T.Type) throws -> T { try BatchAPI.decode(type, body) }
}

/// A response with nothing but `RequestId`.
struct EmptyResponse: Encodable, Sendable {}

/// `Placement` of a request: only `Zone` is used.
struct PlacementRequest: Decodable {
    var zone: String?
}
