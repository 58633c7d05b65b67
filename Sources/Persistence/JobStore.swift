import BatchCore
import Foundation
import Messaging
import PostgresNIO

/// Jobs as the API sees them: submission and reads, scoped to their owner.
public struct JobStore: Sendable {
    let database: Database
    let quotas: Quotas

    public init(database: Database, quotas: Quotas = Quotas()) {
        self.database = database
        self.quotas = quotas
    }

    /// Writes a validated job, its tasks and the `job.submitted` event in one transaction.
    ///
    /// A repeated `clientToken` returns the job it first created. Throws ``APIError`` for a quota or an
    /// environment that does not exist or is not the user's.
    public func submit(user: UserID, spec: JobSpec, clientToken: String?) async throws -> JobID {
        let jobID = JobID.generate()
        let logger = database.logger
        let sealer = database.sealer
        let envs = ComputeEnvStore(database: database)
        return try await database.transaction { connection in
            try await connection.query(
                "SELECT 1 FROM users WHERE user_id = \(user.rawValue) FOR UPDATE", logger: logger)
            if let clientToken,
                let existing = try await connection.query(
                    "SELECT job_id FROM jobs WHERE user_id = \(user.rawValue) AND client_token = \(clientToken)",
                    logger: logger
                ).decode(String.self).first(where: { _ in true })
            {
                return JobID(rawValue: existing)
            }
            let count =
                try await connection.query(
                    "SELECT count(*) FROM jobs WHERE user_id = \(user.rawValue)", logger: logger
                ).decode(Int.self).first { _ in true } ?? 0
            if let violation = quotas.check(.jobs, current: count) { throw violation.apiError }
            let named = Set(spec.tasks.compactMap { $0.envId.map(EnvID.init(rawValue:)) })
            let owned = try await envs.owned(named, user: user, on: connection)
            for (index, task) in spec.tasks.enumerated() {
                if let env = task.envId, !owned.contains(EnvID(rawValue: env)) {
                    throw APIError(.computeEnvNotFound, "Job.Tasks[\(index)].EnvId: no compute environment \(env)")
                }
            }

            let specJSON = try BatchJSON.encode(spec)
            let dependences = String(decoding: try BatchJSON.encode(spec.dependences ?? []), as: UTF8.self)
            try await connection.query(
                """
                INSERT INTO jobs (job_id, user_id, name, description, priority, state, dependency_rule, dependences,
                    spec_sealed, client_token)
                VALUES (\(jobID.rawValue), \(user.rawValue), \(spec.jobName), \(spec.jobDescription),
                    \(spec.priority ?? 0), 'SUBMITTED', \(spec.dependencyRule.rawValue), \(dependences),
                    \(try sealer.seal(specJSON, context: "jobs.spec:\(jobID)")), \(clientToken))
                """, logger: logger)
            let sealedTasks = try spec.tasks.map {
                try sealer.seal(try BatchJSON.encode($0), context: "tasks.spec:\(jobID)/\($0.taskName)")
            }
            try await connection.query(
                """
                INSERT INTO tasks (job_id, task_name, position, state, instance_num, env_id, max_retry_count,
                    timeout_seconds, spec_sealed)
                SELECT \(jobID.rawValue), name, position, state, count, NULLIF(env, ''), retries, timeout, spec FROM unnest(\(spec.tasks.map(\.taskName))::text[],
                    \(Array(spec.tasks.indices))::integer[], \(spec.tasks.map { _ in "SUBMITTED" })::text[],
                    \(spec.tasks.map(\.instanceCount))::integer[], \(spec.tasks.map { $0.envId ?? "" })::text[],
                    \(spec.tasks.map { $0.maxRetryCount ?? 0 })::integer[],
                    \(spec.tasks.map { $0.timeout ?? TaskSpec.defaultTimeout })::integer[], \(sealedTasks)::text[])
                    AS t(name, position, state, count, env, retries, timeout, spec)
                """, logger: logger)
            try await Outbox.enqueue(
                [
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.jobSubmitted,
                        payload: JobSubmitted(jobID: jobID), correlationID: jobID.rawValue)
                ], on: connection, sealer: sealer, logger: logger)
            return jobID
        }
    }

    /// The job with its tasks and counts, if it exists and belongs to `user`.
    public func view(_ jobID: JobID, user: UserID) async throws -> JobView? {
        let logger = database.logger
        let rows = try await database.client.query(
            """
            SELECT name, description, priority, state, state_reason, dependences, created_at, end_time FROM jobs
            WHERE job_id = \(jobID.rawValue) AND user_id = \(user.rawValue)
            """, logger: logger)
        guard
            let (name, description, priority, state, reason, dependences, created, ended) = try await rows.decode(
                (String?, String?, Int, String, String?, String, Date, Date?).self
            ).first(where: { _ in true })
        else { return nil }

        var tasks: [TaskView] = []
        var taskCounts = StateCounts()
        for try await (taskName, taskState, taskReason, taskCreated, taskEnded) in try await database.client.query(
            """
            SELECT task_name, state, state_reason, created_at, end_time FROM tasks
            WHERE job_id = \(jobID.rawValue) ORDER BY position
            """, logger: logger
        ).decode((String, String, String?, Date, Date?).self) {
            let state = ExecutionState(rawValue: taskState) ?? .submitted
            taskCounts[state] += 1
            tasks.append(
                TaskView(
                    taskName: taskName, taskState: state, createTime: taskCreated, endTime: taskEnded,
                    stateReason: taskReason))
        }
        var instanceCounts = StateCounts()
        for try await (instanceState, count) in try await database.client.query(
            "SELECT state, count(*) FROM task_instances WHERE job_id = \(jobID.rawValue) GROUP BY state",
            logger: logger
        ).decode((String, Int).self) {
            instanceCounts[ExecutionState(rawValue: instanceState) ?? .submitted] += count
        }
        return JobView(
            jobId: jobID, jobName: name, jobDescription: description, priority: priority,
            jobState: ExecutionState(rawValue: state) ?? .submitted, createTime: created, endTime: ended,
            stateReason: reason, taskSet: tasks,
            dependenceSet: try BatchJSON.decode([Dependence].self, from: Array(dependences.utf8)),
            taskMetrics: StateMetrics(taskCounts), taskInstanceMetrics: StateMetrics(instanceCounts))
    }

    /// A task's instances, `offset`/`limit` paged by index, if the job belongs to `user`; nil when the job or task
    /// does not exist for this user.
    public func instances(
        of jobID: JobID, task: String, user: UserID, offset: Int = 0, limit: Int = 100
    ) async throws -> (state: ExecutionState, total: Int, instances: [TaskInstanceView])? {
        let logger = database.logger
        let rows = try await database.client.query(
            """
            SELECT t.state, t.instance_num FROM tasks t JOIN jobs j USING (job_id)
            WHERE t.job_id = \(jobID.rawValue) AND t.task_name = \(task) AND j.user_id = \(user.rawValue)
            """, logger: logger)
        guard let (state, total) = try await rows.decode((String, Int).self).first(where: { _ in true }) else {
            return nil
        }
        var instances: [TaskInstanceView] = []
        for try await (index, instanceState, exitCode, reason, node, created, launched, ended, attempt)
            in try await database.client.query(
                """
                SELECT instance_index, state, exit_code, state_reason, node_id, created_at, launch_time, end_time,
                    attempt
                FROM task_instances WHERE job_id = \(jobID.rawValue) AND task_name = \(task)
                ORDER BY instance_index OFFSET \(offset) LIMIT \(limit)
                """, logger: logger
            ).decode((Int, String, Int?, String?, String?, Date, Date?, Date?, Int).self)
        {
            instances.append(
                TaskInstanceView(
                    taskInstanceIndex: index, taskInstanceState: ExecutionState(rawValue: instanceState) ?? .submitted,
                    exitCode: exitCode, stateReason: reason, computeNodeInstanceId: node, createTime: created,
                    launchTime: launched, endTime: ended, attempt: attempt))
        }
        return (ExecutionState(rawValue: state) ?? .submitted, total, instances)
    }
}
