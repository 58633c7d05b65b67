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
        // A running instance has no stored tail yet: its node has the output so far.
        var logs: [TaskInstanceLog] = []
        for instance in result.logs {
            var log = instance.log
            if let node = instance.node, instance.isRunning,
                let fetcher = logFetcher
            {
                let (task, index, attempt) = (request.taskName, log.taskInstanceIndex, instance.attempt)
                async let stdout = fetcher.fetch(
                    node: node, job: jobID, task: task, index: index, attempt: attempt, stream: "stdout",
                    offset: -TaskInstanceLog.tailSize, limit: TaskInstanceLog.tailSize)
                async let stderr = fetcher.fetch(
                    node: node, job: jobID, task: task, index: index, attempt: attempt, stream: "stderr",
                    offset: -TaskInstanceLog.tailSize, limit: TaskInstanceLog.tailSize)
                if let chunk = await stdout, chunk.found { log.stdoutLog = Data(chunk.data).base64EncodedString() }
                if let chunk = await stderr, chunk.found { log.stderrLog = Data(chunk.data).base64EncodedString() }
            }
            logs.append(log)
        }
        return DescribeTaskLogsResponse(totalCount: result.total, taskInstanceLogSet: logs)
    }

    struct GetTaskInstanceLogRequest: Decodable {
        var jobId: String
        var taskName: String
        var taskInstanceIndex: Int
        var stream: String?
        var offset: Int?
        var limit: Int?
    }

    struct GetTaskInstanceLogResponse: Encodable, Sendable {
        /// Base64 of the bytes read.
        var log: String
        /// Where `Log` starts in the stream, and where the next read should start.
        var offset: Int
        var nextOffset: Int
        /// True while the instance runs: more output may come.
        var running: Bool
        /// `NODE` (the whole output, from the node that ran it) or `TAIL` (its last 2 KiB, kept after the node went).
        var source: String
    }

    /// Ours: any part of an instance's stdout or stderr, while it runs or after, from the node's files; follow a
    /// running instance by reading again from `NextOffset` (`batchctl logs -f`).
    func getTaskInstanceLog(_ context: ActionContext) async throws -> GetTaskInstanceLogResponse {
        let request = try context.decode(GetTaskInstanceLogRequest.self)
        let jobID = try Self.jobID(request.jobId)
        let stream = request.stream ?? "stdout"
        guard ["stdout", "stderr"].contains(stream) else {
            throw APIError(.invalidParameterValue, "Stream: must be stdout or stderr")
        }
        guard request.taskInstanceIndex >= 0 else {
            throw APIError(.negative, "TaskInstanceIndex: must not be negative")
        }
        let limit = request.limit ?? 65_536
        guard (1...(1 << 20)).contains(limit) else {
            throw APIError(.invalidParameterValue, "Limit: from 1 to 1048576 bytes")
        }
        let offset = request.offset ?? 0
        guard
            let result = try await jobs.logs(
                of: jobID, task: request.taskName, user: context.user, indexes: [request.taskInstanceIndex],
                paging: try Paging(offset: 0, limit: 1, defaultLimit: 1, maximum: 1))
        else {
            throw APIError(.taskNotFound, "TaskName: job \(jobID) has no task \(request.taskName.prefix(60))")
        }
        guard let instance = result.logs.first else {
            throw APIError(
                .taskInstanceNotFound,
                "TaskInstanceIndex: task \(request.taskName.prefix(60)) has no instance \(request.taskInstanceIndex)")
        }
        if let node = instance.node, let fetcher = logFetcher,
            let chunk = await fetcher.fetch(
                node: node, job: jobID, task: request.taskName, index: request.taskInstanceIndex,
                attempt: instance.attempt, stream: stream, offset: offset, limit: limit),
            chunk.found
        {
            return GetTaskInstanceLogResponse(
                log: Data(chunk.data).base64EncodedString(), offset: chunk.offset,
                nextOffset: chunk.offset + chunk.data.count, running: chunk.running, source: "NODE")
        }
        let tail = (stream == "stdout" ? instance.log.stdoutLog : instance.log.stderrLog) ?? ""
        let size = Data(base64Encoded: tail)?.count ?? 0
        return GetTaskInstanceLogResponse(
            log: tail, offset: -size, nextOffset: 0,
            running: instance.isRunning, source: "TAIL")
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
