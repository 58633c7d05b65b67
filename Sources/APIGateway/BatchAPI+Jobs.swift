import BatchCore
import Foundation
import Persistence

extension BatchAPI {
    struct SubmitJobRequest: Decodable {
        var placement: PlacementRequest?
        var job: JobSpec
        var clientToken: String?
    }

    struct SubmitJobResponse: Encodable, Sendable {
        var jobId: JobID
    }

    func submitJob(_ context: ActionContext) async throws -> SubmitJobResponse {
        let request = try context.decode(SubmitJobRequest.self)
        if let token = request.clientToken, token.isEmpty || token.count > 64 || !token.allSatisfy(\.isASCII) {
            throw APIError(.invalidParameterValue, "ClientToken: 1 to 64 ASCII characters")
        }
        let referenced = request.job.tasks.compactMap { $0.taskTemplateId.flatMap(TaskTemplateID.init(validating:)) }
        let templates = try await self.templates.specs(referenced, user: context.user)
        let problems = request.job.validate(templates: templates)
        guard problems.isEmpty else { throw APIError(problems: problems) }
        let job = request.job.resolvingTemplates(templates)
        if let index = job.tasks.firstIndex(where: { $0.computeEnv != nil }) {
            throw APIError(
                .unsupportedOperation,
                "Job.Tasks[\(index)].ComputeEnv: anonymous compute environments are not supported yet; give an EnvId")
        }
        let jobID = try await jobs.submit(
            user: context.user, spec: job, clientToken: request.clientToken, zone: request.placement?.zone ?? zone)
        context.logger.info("job submitted", metadata: ["job.id": "\(jobID)"])
        return SubmitJobResponse(jobId: jobID)
    }

    struct JobRequest: Decodable {
        var jobId: String
    }

    func describeJob(_ context: ActionContext) async throws -> JobView {
        let jobID = try Self.jobID(try context.decode(JobRequest.self).jobId)
        guard let view = try await jobs.view(jobID, user: context.user) else {
            throw APIError(.jobNotFound, "JobId: no job \(jobID)")
        }
        return view
    }

    struct DescribeJobsRequest: Decodable {
        var jobIds: [String]?
        var filters: [Filter]?
        var offset: Int?
        var limit: Int?
    }

    struct DescribeJobsResponse: Encodable, Sendable {
        var jobSet: [JobSummaryView]
        var totalCount: Int
    }

    func describeJobs(_ context: ActionContext) async throws -> DescribeJobsResponse {
        let request = try context.decode(DescribeJobsRequest.self)
        guard request.jobIds == nil || request.filters == nil else {
            throw APIError(.invalidParameterCombination, "JobIds and Filters: give at most one")
        }
        let filters = try FilterSet(
            request.filters, supported: ["job-id", "job-name", "job-state", "zone", "tag-key", "tag-value"], tags: true)
        let ids = try request.jobIds.map { try Self.ids($0, field: "JobIds", parse: Self.jobID) }
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 20, maximum: 100)
        let (total, jobs) = try await self.jobs.list(user: context.user, jobIDs: ids, filters: filters, paging: paging)
        return DescribeJobsResponse(jobSet: jobs, totalCount: total)
    }

    struct DescribeJobSubmitInfoResponse: Encodable, Sendable {
        var jobId: JobID
        var jobName: String?
        var jobDescription: String?
        var priority: Int
        var tasks: [TaskSpec]
        var dependences: [Dependence]
        var tags: [Tag]
    }

    func describeJobSubmitInfo(_ context: ActionContext) async throws -> DescribeJobSubmitInfoResponse {
        let jobID = try Self.jobID(try context.decode(JobRequest.self).jobId)
        guard let spec = try await jobs.submitInfo(jobID, user: context.user) else {
            throw APIError(.jobNotFound, "JobId: no job \(jobID)")
        }
        return DescribeJobSubmitInfoResponse(
            jobId: jobID, jobName: spec.jobName, jobDescription: spec.jobDescription,
            priority: spec.priority ?? JobSpec.defaultPriority, tasks: spec.tasks, dependences: spec.dependences ?? [],
            tags: spec.tags ?? [])
    }

    struct DescribeTaskRequest: Decodable {
        var jobId: String
        var taskName: String
        var offset: Int?
        var limit: Int?
        var filters: [Filter]?
    }

    struct DescribeTaskResponse: Encodable, Sendable {
        var jobId: JobID
        var taskName: String
        var taskState: ExecutionState
        var createTime: Date
        var endTime: Date?
        var taskInstanceTotalCount: Int
        var taskInstanceSet: [TaskInstanceView]
        var taskInstanceMetrics: StateMetrics
    }

    func describeTask(_ context: ActionContext) async throws -> DescribeTaskResponse {
        let request = try context.decode(DescribeTaskRequest.self)
        let jobID = try Self.jobID(request.jobId)
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 100, maximum: 1000)
        let filters = try FilterSet(request.filters, supported: ["task-instance-state"])
        if let states = filters["task-instance-state"] {
            let known = Set(ExecutionState.allCases.map(\.rawValue))
            if let bad = states.first(where: { !known.contains($0) }) {
                throw APIError(.invalidFilter, "Filters: task-instance-state \(bad.prefix(40)) is not a state")
            }
        }
        guard
            let task = try await jobs.instances(
                of: jobID, task: request.taskName, user: context.user, states: filters["task-instance-state"],
                paging: paging)
        else {
            throw APIError(.taskNotFound, "TaskName: job \(jobID) has no task \(request.taskName.prefix(60))")
        }
        return DescribeTaskResponse(
            jobId: jobID, taskName: request.taskName, taskState: task.task.taskState, createTime: task.task.createTime,
            endTime: task.task.endTime, taskInstanceTotalCount: task.total, taskInstanceSet: task.instances,
            taskInstanceMetrics: StateMetrics(task.counts))
    }

    struct DescribeTaskLogsRequest: Decodable {
        var jobId: String
        var taskName: String
        var taskInstanceIndexes: [Int]?
        var offset: Int?
        var limit: Int?
    }

    struct DescribeTaskLogsResponse: Encodable, Sendable {
        var totalCount: Int
        var taskInstanceLogSet: [TaskInstanceLog]
    }

    func describeTaskLogs(_ context: ActionContext) async throws -> DescribeTaskLogsResponse {
        let request = try context.decode(DescribeTaskLogsRequest.self)
        let jobID = try Self.jobID(request.jobId)
        if let indexes = request.taskInstanceIndexes {
            guard indexes.count <= 10, indexes.allSatisfy({ $0 >= 0 }) else {
                throw APIError(.invalidParameterValue, "TaskInstanceIndexes: at most 10 indexes, none negative")
            }
        }
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 5, maximum: 10)
        guard
            let result = try await jobs.logs(
                of: jobID, task: request.taskName, user: context.user, indexes: request.taskInstanceIndexes,
                paging: paging)
        else {
            throw APIError(.taskNotFound, "TaskName: job \(jobID) has no task \(request.taskName.prefix(60))")
        }
        return DescribeTaskLogsResponse(totalCount: result.total, taskInstanceLogSet: result.logs)
    }

    func terminateJob(_ context: ActionContext) async throws -> EmptyResponse {
        let jobID = try Self.jobID(try context.decode(JobRequest.self).jobId)
        try await jobs.requestTermination(jobID, user: context.user, reason: "terminated by the user (TerminateJob)")
        return EmptyResponse()
    }

    struct TerminateTaskInstanceRequest: Decodable {
        var jobId: String
        var taskName: String
        var taskInstanceIndex: Int
    }

    func terminateTaskInstance(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(TerminateTaskInstanceRequest.self)
        let jobID = try Self.jobID(request.jobId)
        guard request.taskInstanceIndex >= 0 else {
            throw APIError(.negative, "TaskInstanceIndex: must not be negative")
        }
        try await jobs.requestInstanceTermination(
            jobID, task: request.taskName, index: request.taskInstanceIndex, user: context.user)
        return EmptyResponse()
    }

    func deleteJob(_ context: ActionContext) async throws -> EmptyResponse {
        let jobID = try Self.jobID(try context.decode(JobRequest.self).jobId)
        try await jobs.delete(jobID, user: context.user)
        return EmptyResponse()
    }

    struct RetryJobsRequest: Decodable {
        var jobIds: [String]
    }

    func retryJobs(_ context: ActionContext) async throws -> EmptyResponse {
        let ids = try Self.ids(try context.decode(RetryJobsRequest.self).jobIds, field: "JobIds", parse: Self.jobID)
        for jobID in ids { try await jobs.requestRetry(jobID, user: context.user) }
        return EmptyResponse()
    }

    struct DescribeJobMonitorDataRequest: Decodable {
        var jobId: String
        var taskName: String
        var taskInstanceIndex: Int
        var metricName: String
        var startTime: String?
        var endTime: String?
    }

    struct DescribeJobMonitorDataResponse: Encodable, Sendable {
        struct DataPoints: Encodable, Sendable {
            var timestamps: [Int] = []
            var values: [Double] = []
        }
        var period: Int
        var dataPoints: DataPoints
    }

    /// Resource metrics are collected only for anonymous environments' nodes, which this installation does not
    /// make yet: the answer is an empty series for an existing instance.
    func describeJobMonitorData(_ context: ActionContext) async throws -> DescribeJobMonitorDataResponse {
        let request = try context.decode(DescribeJobMonitorDataRequest.self)
        let jobID = try Self.jobID(request.jobId)
        let metrics = ["CpuUsage", "MemUsage", "LanOuttraffic", "LanIntraffic", "MaxDiskUsage", "TargetDiskUsage"]
        guard metrics.contains(request.metricName) else {
            throw APIError(.invalidParameterValue, "MetricName: must be one of \(metrics.joined(separator: ", "))")
        }
        guard
            try await jobs.instances(
                of: jobID, task: request.taskName, user: context.user,
                paging: try Paging(offset: request.taskInstanceIndex, limit: 1, defaultLimit: 1, maximum: 1))?
                .instances.first?.taskInstanceIndex == request.taskInstanceIndex
        else {
            throw APIError(
                .taskInstanceNotFound, "TaskInstanceIndex: no such instance of \(request.taskName.prefix(60))")
        }
        return DescribeJobMonitorDataResponse(period: 60, dataPoints: .init())
    }
}
