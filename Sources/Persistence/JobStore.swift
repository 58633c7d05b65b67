import BatchCore
import Foundation
import MessageContracts
import PostgresNIO

/// Jobs as the API sees them: submission, reads and requests to terminate, retry or delete, each scoped to the
/// job's owner (another user's job is not found).
public struct JobStore: Sendable {
    let database: Database
    let quotas: Quotas

    public init(database: Database, quotas: Quotas = Quotas()) {
        self.database = database
        self.quotas = quotas
    }

    var logger: Logger { database.logger }

    /// Writes a validated job (templates already resolved), its tasks and the `job.submitted` event in one
    /// transaction. A repeated `clientToken` returns the job it first created. Throws ``StoreRefusal`` for a quota
    /// or an environment that is not the user's.
    ///
    /// The usual job (no `ClientToken`, no anonymous environment) is one statement: the quota, the environments'
    /// ownership, the job, its tasks and its event are checked and written together, as one implicit transaction.
    public func submit(user: UserID, spec: JobSpec, clientToken: String?, zone: String?) async throws -> JobID {
        let jobID = JobID.generate()
        let logger = self.logger
        guard clientToken != nil || spec.tasks.contains(where: { $0.computeEnv != nil }) else {
            let insert = try insertion(jobID, user: user, spec: spec, taskEnvs: spec.tasks.map { $0.envId ?? "" })
            let (counted, _) =
                try await database.client.query(insert, logger: logger).decode((Int, Int).self).first { _ in true }
                ?? (0, 0)
            guard counted == 1 else {
                throw try await database.client.withConnection { try await refusal(user: user, spec: spec, on: $0) }
            }
            database.outboxSignal.signal()
            return jobID
        }
        let sealer = database.sealer
        do {
            let submitted = try await database.transaction { connection in
                if let clientToken,
                    let existing = try await winner(user: user, clientToken: clientToken, on: connection)
                {
                    return existing
                }
                var taskEnvs: [String] = []
                for task in spec.tasks {
                    if let anonymous = task.computeEnv {
                        taskEnvs.append(
                            try await ComputeEnvStore.createAnonymous(
                                job: jobID, task: task, spec: anonymous, user: user, zone: zone, sealer: sealer,
                                on: connection, logger: logger
                            ).rawValue)
                    } else {
                        taskEnvs.append(task.envId ?? "")
                    }
                }
                let insert = try insertion(
                    jobID, user: user, spec: spec, clientToken: clientToken, zone: zone, taskEnvs: taskEnvs)
                let (counted, inserted) =
                    try await connection.query(insert, logger: logger).decode((Int, Int).self).first { _ in true }
                    ?? (0, 0)
                guard counted == 1 else { throw try await refusal(user: user, spec: spec, on: connection) }
                // A concurrent submission with the same ClientToken won the unique index: undo ours, return its job.
                guard inserted == 1 else { throw ClientTokenTaken() }
                return jobID
            }
            // The job's own row went in through its insertion, not handed to the relay with the environments'.
            database.outboxSignal.signal()
            return submitted
        } catch is ClientTokenTaken {
            return try await database.client.withConnection { connection in
                try await winner(user: user, clientToken: clientToken ?? "", on: connection) ?? jobID
            }
        }
    }

    private struct ClientTokenTaken: Error {}

    private func winner(user: UserID, clientToken: String, on connection: PostgresConnection) async throws -> JobID? {
        try await connection.query(
            "SELECT job_id FROM jobs WHERE user_id = \(user.rawValue) AND client_token = \(clientToken)",
            logger: logger
        ).decode(String.self).first { _ in true }.map(JobID.init(rawValue:))
    }

    /// The statement that writes a job: its user's job count goes up if under the quota and every named
    /// environment is the user's; only then are the job, its tasks and its `job.submitted` event written. Returns
    /// one row: whether the count went up, whether the job was written (not when its `ClientToken` was taken).
    private func insertion(
        _ jobID: JobID, user: UserID, spec: JobSpec, clientToken: String? = nil, zone: String? = nil,
        taskEnvs: [String]
    ) throws -> PostgresQuery {
        let sealer = database.sealer
        let named = Array(Set(spec.tasks.compactMap(\.envId)))
        let dependences = String(decoding: try BatchJSON.encode(spec.dependences ?? []), as: UTF8.self)
        let tags = String(decoding: try BatchJSON.encode(spec.tags ?? []), as: UTF8.self)
        let sealedJob = try sealer.seal(try BatchJSON.encode(spec), context: "jobs.spec:\(jobID)")
        let sealedTasks = try spec.tasks.map {
            try sealer.seal(try BatchJSON.encode($0), context: "tasks.spec:\(jobID)/\($0.taskName)")
        }
        let event = try OutgoingMessage(
            exchange: Topology.eventsExchange, routingKey: Topology.Event.jobSubmitted,
            payload: JobSubmitted(jobID: jobID), correlationID: jobID.rawValue)
        let sealedEvent = try sealer.seal(event.body, context: "outbox:\(event.messageID)")
        return """
            WITH quota AS (
                UPDATE users SET job_count = job_count + 1
                WHERE user_id = \(user.rawValue) AND job_count < coalesce(job_quota, \(quotas.jobsPerUser))
                    AND (SELECT count(*) FROM compute_envs WHERE env_id = ANY(\(named)) AND user_id = \(user.rawValue)
                        AND next_action IS NULL) = \(named.count)
                RETURNING user_id
            ), job AS (
                INSERT INTO jobs (job_id, user_id, name, description, priority, state, dependency_rule, dependences,
                    spec_sealed, client_token, zone, tags)
                SELECT \(jobID.rawValue), user_id, \(spec.jobName), \(spec.jobDescription),
                    \(spec.priority ?? JobSpec.defaultPriority), \(unescaped: ExecutionState.submitted.sql), \(spec.dependencyRule.rawValue),
                    \(dependences), \(sealedJob), \(clientToken), \(zone), \(tags)::jsonb
                FROM quota
                ON CONFLICT (user_id, client_token) DO NOTHING RETURNING job_id, priority, created_at
            ), tasks AS (
                INSERT INTO tasks (job_id, task_name, position, state, instance_num, env_id, max_retry_count,
                    timeout_seconds, spec_sealed, max_concurrent_num, job_priority, job_created_at)
                SELECT job.job_id, name, position, \(unescaped: ExecutionState.submitted.sql), count, NULLIF(env, ''), retries, timeout, spec,
                    NULLIF(concurrency, 0), job.priority, job.created_at
                FROM job, unnest(\(spec.tasks.map(\.taskName))::text[], \(Array(spec.tasks.indices))::integer[],
                    \(spec.tasks.map(\.instanceCount))::integer[], \(taskEnvs)::text[],
                    \(spec.tasks.map { $0.maxRetryCount ?? 0 })::integer[],
                    \(spec.tasks.map { $0.timeout ?? TaskSpec.defaultTimeout })::integer[], \(sealedTasks)::text[],
                    \(spec.tasks.map { $0.maxConcurrentNum ?? 0 })::integer[])
                    AS t(name, position, count, env, retries, timeout, spec, concurrency)
            ), event AS (
                INSERT INTO outbox (exchange, routing_key, message_id, message_type, correlation_id, body_sealed,
                    mandatory)
                SELECT \(event.exchange), \(event.routingKey), \(event.messageID), \(event.type ?? ""),
                    \(event.correlationID ?? ""), \(sealedEvent), \(event.mandatory)
                FROM job
            )
            SELECT (SELECT count(*) FROM quota)::integer, (SELECT count(*) FROM job)::integer
            """
    }

    /// Why ``insertion(_:user:spec:clientToken:zone:taskEnvs:)`` wrote nothing: an environment that is not the
    /// user's, else the job quota.
    private func refusal(user: UserID, spec: JobSpec, on connection: PostgresConnection) async throws -> StoreRefusal {
        let owned = try await ComputeEnvStore(database: database).owned(
            Set(spec.tasks.compactMap { $0.envId.map(EnvID.init(rawValue:)) }), user: user, on: connection)
        for (index, task) in spec.tasks.enumerated() {
            if let env = task.envId, !owned.contains(EnvID(rawValue: env)) {
                return .computeEnvNotFound(EnvID(rawValue: env), field: "Job.Tasks[\(index)].EnvId")
            }
        }
        let (current, limit) =
            try await connection.query(
                """
                SELECT job_count, coalesce(job_quota, \(quotas.jobsPerUser)) FROM users WHERE user_id = \(user.rawValue)
                """, logger: logger
            ).decode((Int, Int).self).first { _ in true } ?? (0, quotas.jobsPerUser)
        return .quota(Quotas.Violation(kind: .jobs, limit: limit, current: current))
    }

    // MARK: Reads

    /// The job with its tasks and counts, if it exists and belongs to `user`.
    public func view(_ jobID: JobID, user: UserID) async throws -> JobView? {
        let rows = try await database.client.query(
            """
            SELECT name, description, zone, priority, state, state_reason, dependences, created_at, end_time,
                tags::text, next_action
            FROM jobs WHERE job_id = \(jobID.rawValue) AND user_id = \(user.rawValue)
            """, logger: logger)
        guard
            let (name, description, zone, priority, state, reason, dependences, created, ended, tags, next) =
                try await rows.decode(
                    (String?, String?, String?, Int, String, String?, String, Date, Date?, String, String?).self
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
        let instanceCounts = try await instanceStateCounts(jobID, task: nil)
        return JobView(
            jobId: jobID, jobName: name, jobDescription: description, zone: zone, priority: priority,
            jobState: ExecutionState(rawValue: state) ?? .submitted, createTime: created, endTime: ended,
            stateReason: reason, taskSet: tasks,
            dependenceSet: try BatchJSON.decode([Dependence].self, from: Array(dependences.utf8)),
            taskMetrics: StateMetrics(taskCounts), taskInstanceMetrics: StateMetrics(instanceCounts),
            tags: try BatchJSON.decode([Tag].self, from: Array(tags.utf8)), nextAction: next)
    }

    /// `DescribeJobs`: the user's jobs, newest first, by ids and filters (`job-id`, `job-name`, `job-state`,
    /// `zone`, `tag-key`, `tag-value`, `tag:<key>`).
    public func list(user: UserID, jobIDs: [JobID]?, filters: FilterSet, paging: Paging) async throws
        -> (total: Int, jobs: [JobSummaryView])
    {
        var query = SQLBuilder("FROM jobs j WHERE j.user_id = ")
        query.append(query.bind(user.rawValue))
        if let jobIDs { query.append(" AND j.job_id = ANY(\(query.bind(jobIDs.map(\.rawValue))))") }
        for (column, name) in [
            ("j.job_id", "job-id"), ("j.name", "job-name"), ("j.state", "job-state"), ("j.zone", "zone"),
        ] {
            if let values = filters[name] { query.append(" AND \(column) = ANY(\(query.bind(values)))") }
        }
        Self.appendTagFilters(filters, column: "j.tags", to: &query)
        let total = try await Self.count(query.countQuery, client: database.client, logger: logger)
        query.append(
            " ORDER BY j.created_at DESC, j.job_id LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))"
        )
        var select = query
        select.prepend(
            """
            SELECT j.job_id, j.name, j.state, j.priority, j.zone, j.created_at, j.end_time, j.tags::text,
                (SELECT coalesce(jsonb_object_agg(state, n), '{}')::text FROM
                    (SELECT t.state, count(*) AS n FROM tasks t WHERE t.job_id = j.job_id GROUP BY t.state) s)
            """)
        var jobs: [JobSummaryView] = []
        for try await (id, name, state, priority, zone, created, ended, tags, counts) in try await database.client
            .query(
                select.query, logger: logger
            ).decode((String, String?, String, Int, String?, Date, Date?, String, String).self)
        {
            jobs.append(
                JobSummaryView(
                    jobId: JobID(rawValue: id), jobName: name, jobState: ExecutionState(rawValue: state) ?? .submitted,
                    priority: priority, placement: PlacementView(zone: zone), createTime: created, endTime: ended,
                    taskMetrics: StateMetrics(try Self.stateCounts(json: counts)),
                    tags: try BatchJSON.decode([Tag].self, from: Array(tags.utf8))))
        }
        return (total, jobs)
    }

    /// `DescribeJobSubmitInfo`: the job as submitted (templates resolved), secrets masked.
    public func submitInfo(_ jobID: JobID, user: UserID) async throws -> JobSpec? {
        let rows = try await database.client.query(
            "SELECT spec_sealed FROM jobs WHERE job_id = \(jobID.rawValue) AND user_id = \(user.rawValue)",
            logger: logger)
        guard let sealed = try await rows.decode(String.self).first(where: { _ in true }) else { return nil }
        var spec = try BatchJSON.decode(
            JobSpec.self, from: try database.sealer.openBytes(sealed, context: "jobs.spec:\(jobID)"))
        spec.tasks = spec.tasks.map(\.redacted)
        return spec
    }

    /// A task's instances, paged by index and optionally filtered by state, if the job belongs to `user`.
    public func instances(
        of jobID: JobID, task: String, user: UserID, states: [String]? = nil, paging: Paging
    ) async throws -> (task: TaskView, total: Int, counts: StateCounts, instances: [TaskInstanceView])? {
        let rows = try await database.client.query(
            """
            SELECT t.state, t.state_reason, t.created_at, t.end_time, t.env_id FROM tasks t JOIN jobs j USING (job_id)
            WHERE t.job_id = \(jobID.rawValue) AND t.task_name = \(task) AND j.user_id = \(user.rawValue)
            """, logger: logger)
        guard
            let (state, reason, created, ended, env) = try await rows.decode(
                (String, String?, Date, Date?, String?).self
            )
            .first(where: { _ in true })
        else { return nil }
        let (total, page) = try await instancePage(
            jobID, task: task, paging: paging,
            columns: """
                instance_index, state, exit_code, state_reason, node_id, created_at, launch_time, end_time, attempt,
                dispatched
                """
        ) { query in
            if let states { query.append(" AND state = ANY(\(query.bind(states)))") }
        }
        var instances: [TaskInstanceView] = []
        for try await (
            index, instanceState, exitCode, instanceReason, node, instanceCreated, launched, instanceEnded, attempt,
            dispatched
        )
            in try await database.client.query(page, logger: logger).decode(
                (Int, String, Int?, String?, String?, Date, Date?, Date?, Int, Bool).self)
        {
            // A runnable instance shows why it is not running: queued for a node, or the task's pending reason.
            var shownReason = instanceReason
            if instanceState == ExecutionState.runnable.rawValue, node == nil {
                if dispatched, let env {
                    shownReason = PendingReason.queued(env: EnvID(rawValue: env)).stateReason
                } else if !dispatched, instanceReason == nil {
                    shownReason = reason
                }
            }
            instances.append(
                TaskInstanceView(
                    taskInstanceIndex: index, taskInstanceState: ExecutionState(rawValue: instanceState) ?? .submitted,
                    exitCode: exitCode, stateReason: shownReason, computeNodeInstanceId: node,
                    createTime: instanceCreated, launchTime: launched, endTime: instanceEnded, attempt: attempt))
        }
        let view = TaskView(
            taskName: task, taskState: ExecutionState(rawValue: state) ?? .submitted, createTime: created,
            endTime: ended, stateReason: reason)
        return (view, total, try await instanceStateCounts(jobID, task: task), instances)
    }

    /// `DescribeTaskLogs`: the end of each stream of the given (or first `paging`) instances, base64.
    /// One instance's stored log tails, and where its latest attempt runs or ran (to ask that node for more).
    public struct InstanceLogs: Sendable {
        public var log: TaskInstanceLog
        public var node: NodeID?
        public var attempt: Int
        public var state: String

        /// Its latest attempt is out on its node (`STARTING` or `RUNNING`).
        public var isRunning: Bool {
            ExecutionState(rawValue: state).map { [.starting, .running].contains($0) } ?? false
        }
    }

    public func logs(of jobID: JobID, task: String, user: UserID, indexes: [Int]?, paging: Paging) async throws
        -> (total: Int, logs: [InstanceLogs])?
    {
        guard try await taskExists(jobID, task: task, user: user) else { return nil }
        let (total, page) = try await instancePage(
            jobID, task: task, paging: paging,
            columns: "instance_index, stdout_tail_sealed, stderr_tail_sealed, node_id, attempt, state"
        ) { query in
            if let indexes { query.append(" AND instance_index = ANY(\(query.bind(indexes)))") }
        }
        var logs: [InstanceLogs] = []
        let sealer = database.sealer
        for try await (index, stdout, stderr, node, attempt, state) in try await database.client.query(
            page, logger: logger
        ).decode((Int, String?, String?, String?, Int, String).self) {
            func open(_ sealed: String?, _ stream: String) throws -> String? {
                try sealed.map {
                    Data(try sealer.openBytes($0, context: "logs:\(jobID)/\(task)/\(index)/\(stream)"))
                        .base64EncodedString()
                }
            }
            logs.append(
                InstanceLogs(
                    log: TaskInstanceLog(
                        taskInstanceIndex: index, stdoutLog: try open(stdout, "stdout"),
                        stderrLog: try open(stderr, "stderr")),
                    node: node.map(NodeID.init), attempt: attempt, state: state))
        }
        return (total, logs)
    }

    // MARK: Changes

    /// `TerminateJob`: refused while `SUBMITTED` (the scheduler has not taken it yet), nothing to do once final;
    /// otherwise marks `NextAction` `TERMINATE` and asks the scheduler, in one transaction.
    public func requestTermination(_ jobID: JobID, user: UserID, reason: String) async throws {
        try await changeJob(jobID, user: user) { state, connection in
            guard state != .submitted else {
                throw StoreRefusal.jobNotScheduled(jobID)
            }
            guard !state.isFinal else { return nil }
            try await connection.query(
                "UPDATE jobs SET next_action = 'TERMINATE' WHERE job_id = \(jobID.rawValue)", logger: logger)
            return try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.jobTerminationRequested,
                payload: JobTerminationRequested(jobID: jobID, reason: reason), correlationID: jobID.rawValue)
        }
    }

    /// `TerminateTaskInstance`: final instances are left alone; others are ended by the scheduler.
    public func requestInstanceTermination(_ jobID: JobID, task: String, index: Int, user: UserID) async throws {
        try await changeJob(jobID, user: user) { _, connection in
            let found = try await connection.query(
                """
                SELECT state FROM task_instances
                WHERE job_id = \(jobID.rawValue) AND task_name = \(task) AND instance_index = \(index)
                """, logger: logger
            ).decode(String.self).first { _ in true }
            guard let found else {
                throw StoreRefusal.taskInstanceNotFound(task: task, index: index)
            }
            guard
                !(ExecutionState(rawValue: found)?.isFinal ?? false)
                    || found == ExecutionState.failedInterrupted.rawValue
            else {
                return nil
            }
            return try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.instanceTerminationRequested,
                payload: InstanceTerminationRequested(jobID: jobID, taskName: task, instanceIndex: index),
                correlationID: jobID.rawValue)
        }
    }

    /// `RetryJobs`: only a `FAILED` job; the scheduler runs its failed instances again in DAG order.
    public func requestRetry(_ jobID: JobID, user: UserID) async throws {
        try await changeJob(jobID, user: user) { state, _ in
            guard state == .failed || state == .failedInterrupted else {
                throw StoreRefusal.jobNotRetryable(jobID, state: state)
            }
            return try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.jobRetryRequested,
                payload: JobRetryRequested(jobID: jobID), correlationID: jobID.rawValue)
        }
    }

    /// `DeleteJob`: only when the job and every instance are final (`ResourceInUse.Job` otherwise).
    public func delete(_ jobID: JobID, user: UserID) async throws {
        try await changeJob(jobID, user: user) { state, connection in
            let unfinished = try await Self.count(
                """
                SELECT count(*) FROM task_instances WHERE job_id = \(jobID.rawValue)
                    AND state NOT IN \(unescaped: [ExecutionState.succeed, .failed].sql)
                """, on: connection, logger: logger)
            guard state == .succeed || state == .failed, unfinished == 0 else {
                throw StoreRefusal.jobInUse(jobID, state: state, unfinished: unfinished)
            }
            try await Self.remove([jobID], on: connection, sealer: database.sealer, logger: logger)
            return nil
        }
    }

    /// Removes up to `limit` jobs that ended (`SUCCEED` or `FAILED`, every instance final) more than `age` ago,
    /// as `DeleteJob` would: the retention the operator sets, so that ended jobs stop counting against quotas.
    /// Returns how many went. Jobs kept `FAILED_INTERRUPTED` (their nodes held for inspection) stay until deleted.
    public func removeEnded(olderThan age: Duration, limit: Int = 500) async throws -> Int {
        let logger = self.logger
        let sealer = database.sealer
        return try await database.transaction { connection in
            var jobs: [JobID] = []
            for try await id in try await connection.query(
                """
                SELECT j.job_id FROM jobs j
                WHERE j.end_time < now() - \(Int(age.components.seconds)) * interval '1 s'
                    AND j.state IN \(unescaped: [ExecutionState.succeed, .failed].sql)
                    AND NOT EXISTS (
                        SELECT 1 FROM task_instances i WHERE i.job_id = j.job_id
                            AND i.state NOT IN \(unescaped: [ExecutionState.succeed, .failed].sql))
                ORDER BY j.end_time LIMIT \(limit) FOR UPDATE OF j SKIP LOCKED
                """, logger: logger
            ).decode(String.self) {
                jobs.append(JobID(rawValue: id))
            }
            try await Self.remove(jobs, on: connection, sealer: sealer, logger: logger)
            return jobs.count
        }
    }

    /// Deletes `jobs` (their tasks and instances with them), gives their users' quota back, and starts deleting
    /// their anonymous environments (their nodes went when their tasks ended, or are kept for inspection after an
    /// INTERRUPT: they go now).
    static func remove(_ jobs: [JobID], on connection: PostgresConnection, sealer: Sealer, logger: Logger)
        async throws
    {
        guard !jobs.isEmpty else { return }
        let ids = jobs.map(\.rawValue)
        try await connection.query(
            """
            WITH gone AS (DELETE FROM jobs WHERE job_id = ANY(\(ids)) RETURNING user_id)
            UPDATE users u SET job_count = greatest(0, u.job_count - g.count)
            FROM (SELECT user_id, count(*)::integer AS count FROM gone GROUP BY user_id) g WHERE u.user_id = g.user_id
            """, logger: logger)
        var anonymous: [String] = []
        for try await env in try await connection.query(
            """
            UPDATE compute_envs SET next_action = \(unescaped: ComputeEnvNextAction.deleting.sql), desired_node_count = 0
            WHERE anonymous_for LIKE ANY(\(ids.map { $0 + "/%" })) RETURNING env_id
            """, logger: logger
        ).decode(String.self) {
            anonymous.append(env)
        }
        try await Outbox.enqueue(
            try anonymous.map {
                try OutgoingMessage(
                    exchange: Topology.eventsExchange, routingKey: Topology.Event.computeEnvDeletionRequested,
                    payload: ComputeEnvDeletionRequested(envID: EnvID(rawValue: $0)))
            }, on: connection, sealer: sealer, logger: logger)
    }

    /// Locks the user's job, runs `body` with its state, and enqueues the message it returns; all in one
    /// transaction. `ResourceNotFound.Job` when the job is not the user's.
    private func changeJob(
        _ jobID: JobID, user: UserID,
        _ body: (ExecutionState, PostgresConnection) async throws -> OutgoingMessage?
    ) async throws {
        let logger = self.logger
        let sealer = database.sealer
        try await database.transaction { connection in
            let rows = try await connection.query(
                "SELECT state FROM jobs WHERE job_id = \(jobID.rawValue) AND user_id = \(user.rawValue) FOR UPDATE",
                logger: logger)
            guard let state = try await rows.decode(String.self).first(where: { _ in true }) else {
                throw StoreRefusal.jobNotFound(jobID)
            }
            if let message = try await body(ExecutionState(rawValue: state) ?? .submitted, connection) {
                try await Outbox.enqueue([message], on: connection, sealer: sealer, logger: logger)
            }
        }
    }

    // MARK: Helpers

    /// One page of a task's instances, in index order: how many `filter` keeps in all, and the query for `columns`
    /// of the page.
    private func instancePage(
        _ jobID: JobID, task: String, paging: Paging, columns: String, filter: (inout SQLBuilder) -> Void
    ) async throws -> (total: Int, page: PostgresQuery) {
        var query = SQLBuilder("FROM task_instances WHERE job_id = ")
        query.append(query.bind(jobID.rawValue))
        query.append(" AND task_name = \(query.bind(task))")
        filter(&query)
        let total = try await Self.count(query.countQuery, client: database.client, logger: logger)
        query.append(" ORDER BY instance_index LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))")
        query.prepend("SELECT \(columns) ")
        return (total, query.query)
    }

    private func taskExists(_ jobID: JobID, task: String, user: UserID) async throws -> Bool {
        try await database.client.query(
            """
            SELECT 1 FROM tasks t JOIN jobs j USING (job_id)
            WHERE t.job_id = \(jobID.rawValue) AND t.task_name = \(task) AND j.user_id = \(user.rawValue)
            """, logger: logger
        ).decode(Int.self).first { _ in true } != nil
    }

    private func instanceStateCounts(_ jobID: JobID, task: String?) async throws -> StateCounts {
        var counts = StateCounts()
        let rows =
            if let task {
                try await database.client.query(
                    """
                    SELECT state, count::bigint FROM task_instance_counts WHERE job_id = \(jobID.rawValue)
                        AND task_name = \(task)
                    """, logger: logger)
            } else {
                try await database.client.query(
                    """
                    SELECT state, sum(count)::bigint FROM task_instance_counts WHERE job_id = \(jobID.rawValue)
                    GROUP BY state
                    """,
                    logger: logger)
            }
        for try await (state, count) in rows.decode((String, Int).self) {
            counts[ExecutionState(rawValue: state) ?? .submitted] += count
        }
        return counts
    }

    static func stateCounts(json: String) throws -> StateCounts {
        let object = try JSONDecoder().decode([String: Int].self, from: Data(json.utf8))
        var counts = StateCounts()
        for (state, count) in object { counts[ExecutionState(rawValue: state) ?? .submitted] += count }
        return counts
    }

    /// Serializes a user's quota checks.
    /// Locks the user's row until the transaction ends and returns their quotas: `defaults` with the operator's
    /// settings for this user (``UserStore/setQuotas(name:_:)``) on top.
    static func lockUser(_ user: UserID, defaults: Quotas, on connection: PostgresConnection, logger: Logger)
        async throws -> Quotas
    {
        let rows = try await connection.query(
            """
            SELECT job_quota, task_template_quota, compute_env_quota FROM users WHERE user_id = \(user.rawValue)
            FOR UPDATE
            """, logger: logger)
        var quotas = defaults
        if let (jobs, templates, envs) = try await rows.decode((Int?, Int?, Int?).self).first(where: { _ in true }) {
            quotas.jobsPerUser = jobs ?? quotas.jobsPerUser
            quotas.taskTemplatesPerUser = templates ?? quotas.taskTemplatesPerUser
            quotas.computeEnvsPerUser = envs ?? quotas.computeEnvsPerUser
        }
        return quotas
    }

    static func count(_ query: PostgresQuery, on connection: PostgresConnection, logger: Logger) async throws -> Int {
        try await connection.query(query, logger: logger).decode(Int.self).first { _ in true } ?? 0
    }

    static func count(_ query: PostgresQuery, client: PostgresClient, logger: Logger) async throws -> Int {
        try await client.query(query, logger: logger).decode(Int.self).first { _ in true } ?? 0
    }

    /// `tag-key`, `tag-value` and `tag:<key>` filters on a jsonb array of `{"Key", "Value"}`.
    static func appendTagFilters(_ filters: FilterSet, column: String, to query: inout SQLBuilder) {
        if let keys = filters["tag-key"] {
            query.append(
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(\(column)) t WHERE t->>'Key' = ANY(\(query.bind(keys))))"
            )
        }
        if let values = filters["tag-value"] {
            query.append(
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(\(column)) t WHERE t->>'Value' = ANY(\(query.bind(values))))"
            )
        }
        for (key, values) in filters.tagValues.sorted(by: { $0.key < $1.key }) {
            query.append(
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(\(column)) t WHERE t->>'Key' = \(query.bind(key))"
                    + " AND t->>'Value' = ANY(\(query.bind(values))))")
        }
    }
}
