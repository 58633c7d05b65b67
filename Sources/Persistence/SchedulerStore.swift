import BatchCore
import Foundation
import Messaging
import PostgresNIO

/// The scheduler's reads and writes, each on a connection inside the transaction that handles one event.
///
/// Every change applies only from the state it expects, so a redelivered or stale event changes nothing.
public struct SchedulerStore: Sendable {
    /// A job row held `FOR UPDATE` for the rest of the transaction: events of one job are handled one at a time.
    public struct LockedJob: Sendable {
        public var id: JobID
        public var user: UserID
        public var state: ExecutionState
        public var rule: DependencyRule
        public var dependences: [Dependence]
        public var priority: Int
    }

    let database: Database
    var logger: Logger { database.logger }

    public init(database: Database) { self.database = database }

    public func lockJob(_ jobID: JobID, on connection: PostgresConnection) async throws -> LockedJob? {
        let rows = try await connection.query(
            """
            SELECT user_id, state, dependency_rule, dependences, priority FROM jobs
            WHERE job_id = \(jobID.rawValue) FOR UPDATE
            """, logger: logger)
        for try await (user, state, rule, dependences, priority) in rows.decode(
            (String, String, String, String, Int).self)
        {
            return LockedJob(
                id: jobID, user: UserID(rawValue: user), state: ExecutionState(rawValue: state) ?? .submitted,
                rule: DependencyRule(rawValue: rule) ?? .preTaskSucceed,
                dependences: try BatchJSON.decode([Dependence].self, from: Array(dependences.utf8)), priority: priority)
        }
        return nil
    }

    /// The job's tasks with their states and their instances' state counts.
    public func progress(of job: LockedJob, on connection: PostgresConnection) async throws -> JobProgress {
        let rows = try await connection.query(
            """
            SELECT t.task_name, t.state, i.state, count(i.instance_index)
            FROM tasks t LEFT JOIN task_instances i USING (job_id, task_name)
            WHERE t.job_id = \(job.id.rawValue)
            GROUP BY t.position, t.task_name, t.state, i.state ORDER BY t.position
            """, logger: logger)
        var order: [String] = []
        var tasks: [String: JobProgress.TaskProgress] = [:]
        for try await (name, state, instanceState, count) in rows.decode((String, String, String?, Int).self) {
            if tasks[name] == nil {
                order.append(name)
                tasks[name] = JobProgress.TaskProgress(name: name, state: ExecutionState(rawValue: state) ?? .submitted)
            }
            if let instanceState, let parsed = ExecutionState(rawValue: instanceState) {
                tasks[name]!.instances[parsed] += count
            }
        }
        return JobProgress(
            state: job.state, tasks: order.map { tasks[$0]! },
            graph: JobGraph(tasks: order, dependences: job.dependences), rule: job.rule)
    }

    /// Creates a task's instances (`RUNNABLE`, attempt 1) and returns the `instance.run` messages that dispatch
    /// them to the task's environment.
    public func startTask(_ name: String, of job: LockedJob, on connection: PostgresConnection) async throws
        -> [OutgoingMessage]
    {
        let rows = try await connection.query(
            """
            SELECT env_id, instance_num, timeout_seconds, spec_sealed FROM tasks
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name)
            """, logger: logger)
        guard
            let (envID, count, timeout, sealed) = try await rows.decode((String?, Int, Int, String).self).first(
                where: { _ in true })
        else { return [] }
        let spec = try BatchJSON.decode(
            TaskSpec.self,
            from: try database.sealer.openBytes(sealed, context: "tasks.spec:\(job.id)/\(name)"))
        guard let envID else {
            try await skipTask(
                name, of: job, reason: "anonymous compute environments are not supported yet", on: connection)
            return []
        }
        // New instances start at attempt 1; failed ones (RetryJobs) go back to RUNNABLE with their next attempt.
        try await connection.query(
            """
            INSERT INTO task_instances (job_id, task_name, instance_index, state, attempt)
            SELECT \(job.id.rawValue), \(name), i, 'RUNNABLE', 1 FROM generate_series(0, \(count) - 1) AS i
            ON CONFLICT DO NOTHING
            """, logger: logger)
        try await connection.query(
            """
            UPDATE task_instances SET state = 'RUNNABLE', attempt = attempt + 1, exit_code = NULL,
                state_reason = NULL, node_id = NULL, launch_time = NULL, end_time = NULL
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name) AND state IN ('FAILED', 'FAILED_INTERRUPTED')
            """, logger: logger)
        try await connection.query(
            """
            UPDATE tasks SET state = 'RUNNABLE', state_reason = NULL, end_time = NULL,
                start_time = coalesce(start_time, now())
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name)
            """, logger: logger)
        let command = spec.application?.script ?? ""
        var messages: [OutgoingMessage] = []
        for try await (index, attempt) in try await connection.query(
            """
            SELECT instance_index, attempt FROM task_instances
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name) AND state = 'RUNNABLE' ORDER BY instance_index
            """, logger: logger
        ).decode((Int, Int).self) {
            messages.append(
                try OutgoingMessage(
                    exchange: Topology.commandsExchange, routingKey: Topology.workRoutingKey(env: envID),
                    payload: InstanceRun(
                        jobID: job.id, taskName: name, instanceIndex: index, instanceCount: count, attempt: attempt,
                        envID: EnvID(rawValue: envID), command: command, environment: spec.envVars ?? [],
                        timeoutSeconds: timeout),
                    correlationID: job.id.rawValue, mandatory: true))
        }
        return messages
    }

    /// A task that can never run ends `FAILED` with `reason`.
    public func skipTask(_ name: String, of job: LockedJob, reason: String, on connection: PostgresConnection)
        async throws
    {
        try await connection.query(
            """
            UPDATE tasks SET state = 'FAILED', state_reason = \(reason), end_time = now()
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name)
            """, logger: logger)
    }

    public func setTaskState(
        _ name: String, of job: LockedJob, _ state: ExecutionState, on connection: PostgresConnection
    ) async throws {
        try await connection.query(
            """
            UPDATE tasks SET state = \(state.rawValue),
                end_time = CASE WHEN \(state.isFinal) THEN now() END,
                state_reason = CASE WHEN \(state.isFinal) THEN state_reason END
            WHERE job_id = \(job.id.rawValue) AND task_name = \(name)
            """, logger: logger)
    }

    public func setJobState(
        _ job: LockedJob, _ state: ExecutionState, reason: String? = nil, on connection: PostgresConnection
    ) async throws {
        try await connection.query(
            """
            UPDATE jobs SET state = \(state.rawValue),
                state_reason = CASE WHEN \(state.isFinal) THEN coalesce(\(reason), state_reason) END,
                updated_at = now(), end_time = CASE WHEN \(state.isFinal) THEN now() END
            WHERE job_id = \(job.id.rawValue)
            """, logger: logger)
    }

    /// Marks an instance `RUNNING` if the event is for its current attempt and it has not gone further.
    public func instanceStarted(_ event: InstanceStarted, on connection: PostgresConnection) async throws -> Bool {
        let rows = try await connection.query(
            """
            UPDATE task_instances SET state = 'RUNNING', launch_time = \(event.startedAt),
                node_id = \(event.nodeID.rawValue)
            WHERE job_id = \(event.jobID.rawValue) AND task_name = \(event.taskName)
                AND instance_index = \(event.instanceIndex) AND attempt = \(event.attempt)
                AND state IN ('SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING')
            RETURNING 1
            """, logger: logger)
        return try await rows.decode(Int.self).first { _ in true } != nil
    }

    /// Records an instance's end if the event is for its current attempt and it is not final yet, with the end
    /// of its logs (sealed).
    public func instanceFinished(_ event: InstanceFinished, on connection: PostgresConnection) async throws -> Bool {
        let state: ExecutionState = event.succeeded ? .succeed : .failed
        let reason: String? =
            event.succeeded ? nil : event.reason ?? event.exitCode.map { "exited with code \($0)" }
        let context = "logs:\(event.jobID)/\(event.taskName)/\(event.instanceIndex)"
        let stdout = try event.stdoutTail.map { try database.sealer.seal($0, context: "\(context)/stdout") }
        let stderr = try event.stderrTail.map { try database.sealer.seal($0, context: "\(context)/stderr") }
        let rows = try await connection.query(
            """
            UPDATE task_instances SET state = \(state.rawValue), exit_code = \(event.exitCode),
                state_reason = \(reason), end_time = \(event.finishedAt), node_id = \(event.nodeID.rawValue),
                launch_time = coalesce(launch_time, \(event.finishedAt)), stdout_tail_sealed = \(stdout),
                stderr_tail_sealed = \(stderr)
            WHERE job_id = \(event.jobID.rawValue) AND task_name = \(event.taskName)
                AND instance_index = \(event.instanceIndex) AND attempt = \(event.attempt)
                AND state NOT IN ('SUCCEED', 'FAILED', 'FAILED_INTERRUPTED')
            RETURNING 1
            """, logger: logger)
        return try await rows.decode(Int.self).first { _ in true } != nil
    }

    /// Ends instances that have not finished (and releases kept ones): all of the job's, or one. Returns the
    /// `instance.kill` messages for those that were on a node.
    @discardableResult
    public func terminateInstances(
        of job: LockedJob, task: String? = nil, index: Int? = nil, reason: String, on connection: PostgresConnection
    ) async throws -> [OutgoingMessage] {
        var query = SQLBuilder(
            "UPDATE task_instances SET state = 'FAILED', end_time = now(), state_reason = ")
        query.append(query.bind(reason))
        query.append(" WHERE job_id = \(query.bind(job.id.rawValue)) AND state NOT IN ('SUCCEED', 'FAILED')")
        if let task { query.append(" AND task_name = \(query.bind(task))") }
        if let index { query.append(" AND instance_index = \(query.bind(index))") }
        query.append(" RETURNING task_name, instance_index, attempt, node_id")
        var kills: [OutgoingMessage] = []
        for try await (taskName, instanceIndex, attempt, node) in try await connection.query(
            query.query, logger: logger
        )
        .decode((String, Int, Int, String?).self) {
            guard let node else { continue }
            kills.append(
                try OutgoingMessage(
                    exchange: Topology.commandsExchange, routingKey: Topology.nodeRoutingKey(node: node),
                    payload: InstanceKill(
                        jobID: job.id, taskName: taskName, instanceIndex: instanceIndex, attempt: attempt,
                        reason: reason),
                    correlationID: job.id.rawValue))
        }
        return kills
    }

    /// Clears `NextAction` once a requested change is carried out.
    public func clearNextAction(_ job: LockedJob, on connection: PostgresConnection) async throws {
        try await connection.query(
            "UPDATE jobs SET next_action = NULL WHERE job_id = \(job.id.rawValue)", logger: logger)
    }
}
