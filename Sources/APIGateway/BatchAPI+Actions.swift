import BatchCore
import Foundation
import Logging
import Persistence

extension BatchAPI {
    /// Runs one action for `user` and returns what goes inside `Response`.
    func perform(action: String, body: [UInt8], user: UserID, logger: Logger) async throws -> any Encodable & Sendable {
        switch action {
        case "SubmitJob":
            return try await submitJob(try decode(SubmitJobRequest.self, body), user: user, logger: logger)
        case "DescribeJob": return try await describeJob(try decode(DescribeJobRequest.self, body), user: user)
        case "DescribeTask": return try await describeTask(try decode(DescribeTaskRequest.self, body), user: user)
        case "CreateComputeEnv":
            return try await createComputeEnv(try decode(CreateComputeEnvRequest.self, body), user: user)
        case "DescribeComputeEnv":
            return try await describeComputeEnv(try decode(DescribeComputeEnvRequest.self, body), user: user)
        case "":
            throw APIError(.missingParameter, "the X-TC-Action header is missing")
        default:
            throw APIError(.invalidAction, "action \(action.prefix(64)) is not supported")
        }
    }

    // MARK: Jobs

    struct SubmitJobRequest: Decodable {
        var job: JobSpec
        var clientToken: String?
    }

    struct SubmitJobResponse: Encodable, Sendable {
        var jobId: JobID
    }

    func submitJob(_ request: SubmitJobRequest, user: UserID, logger: Logger) async throws -> SubmitJobResponse {
        let problems = request.job.validate()
        guard problems.isEmpty else { throw APIError(problems: problems) }
        if let index = request.job.tasks.firstIndex(where: { $0.computeEnv != nil }) {
            throw APIError(
                "UnsupportedOperation",
                "Job.Tasks[\(index)].ComputeEnv: anonymous compute environments are not supported yet; give an EnvId")
        }
        if let token = request.clientToken, token.count > 64 || !token.allSatisfy(\.isASCII) {
            throw APIError(.invalidParameterValue, "ClientToken: at most 64 ASCII characters")
        }
        let jobID = try await jobs.submit(user: user, spec: request.job, clientToken: request.clientToken)
        logger.info("job submitted", metadata: ["job.id": "\(jobID)"])
        return SubmitJobResponse(jobId: jobID)
    }

    struct DescribeJobRequest: Decodable {
        var jobId: String
    }

    func describeJob(_ request: DescribeJobRequest, user: UserID) async throws -> JobView {
        let jobID = try parseJobID(request.jobId)
        guard let view = try await jobs.view(jobID, user: user) else {
            throw APIError(.jobNotFound, "JobId: no job \(jobID)")
        }
        return view
    }

    struct DescribeTaskRequest: Decodable {
        var jobId: String
        var taskName: String
        var offset: Int?
        var limit: Int?
    }

    struct DescribeTaskResponse: Encodable, Sendable {
        var jobId: JobID
        var taskName: String
        var taskState: ExecutionState
        var taskInstanceTotalCount: Int
        var taskInstanceSet: [TaskInstanceView]
    }

    func describeTask(_ request: DescribeTaskRequest, user: UserID) async throws -> DescribeTaskResponse {
        let jobID = try parseJobID(request.jobId)
        let offset = request.offset ?? 0
        let limit = request.limit ?? 100
        guard offset >= 0 else { throw APIError(.invalidParameterValue, "Offset must not be negative") }
        guard (1...1000).contains(limit) else { throw APIError(.invalidParameterValue, "Limit must be 1 to 1000") }
        guard
            let task = try await jobs.instances(
                of: jobID, task: request.taskName, user: user, offset: offset, limit: limit)
        else {
            throw APIError("ResourceNotFound.Task", "TaskName: job \(jobID) has no task \(request.taskName.prefix(60))")
        }
        return DescribeTaskResponse(
            jobId: jobID, taskName: request.taskName, taskState: task.state, taskInstanceTotalCount: task.total,
            taskInstanceSet: task.instances)
    }

    // MARK: Compute environments

    struct CreateComputeEnvRequest: Decodable {
        var computeEnv: NamedComputeEnv
    }

    struct CreateComputeEnvResponse: Encodable, Sendable {
        var envId: EnvID
    }

    func createComputeEnv(_ request: CreateComputeEnvRequest, user: UserID) async throws -> CreateComputeEnvResponse {
        let problems = request.computeEnv.validate()
        guard problems.isEmpty else { throw APIError(problems: problems) }
        return CreateComputeEnvResponse(envId: try await envs.create(user: user, spec: request.computeEnv))
    }

    struct DescribeComputeEnvRequest: Decodable {
        var envId: String
    }

    func describeComputeEnv(_ request: DescribeComputeEnvRequest, user: UserID) async throws -> ComputeEnvView {
        guard let envID = EnvID(validating: request.envId) else {
            throw APIError(.envIdMalformed, "EnvId: not an environment id (env-…)")
        }
        guard let view = try await envs.view(envID, user: user) else {
            throw APIError(.computeEnvNotFound, "EnvId: no compute environment \(envID)")
        }
        return view
    }

    // MARK: Helpers

    func parseJobID(_ string: String) throws -> JobID {
        guard let jobID = JobID(validating: string) else {
            throw APIError(.jobIdMalformed, "JobId: not a job id (job-…)")
        }
        return jobID
    }

    /// Decodes a request body; a wrong type or a missing field becomes `InvalidParameter` naming the field.
    func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        do {
            return try BatchJSON.decode(type, from: body.isEmpty ? Array("{}".utf8) : body)
        } catch let DecodingError.keyNotFound(key, context) {
            throw APIError(.missingParameter, "\(Self.fieldPath(context.codingPath + [key])): required")
        } catch let DecodingError.typeMismatch(expected, context) {
            throw APIError(
                .invalidParameter, "\(Self.fieldPath(context.codingPath)): expected \(Self.describe(expected))")
        } catch let DecodingError.valueNotFound(expected, context) {
            throw APIError(
                .invalidParameter,
                "\(Self.fieldPath(context.codingPath)): expected \(Self.describe(expected)), got null")
        } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
            throw APIError(.invalidParameter, "the request body is not valid JSON")
        } catch DecodingError.dataCorrupted(let context) {
            throw APIError(.invalidParameterValue, "\(Self.fieldPath(context.codingPath)): invalid value")
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
        case is [Any].Type: "an array"
        default: "an object"
        }
    }
}
