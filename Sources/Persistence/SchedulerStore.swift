import BatchCore
import Foundation
import MessageContracts
import PostgresNIO

/// The scheduler's reads and writes, each on a connection inside the transaction that handles a batch of events.
///
/// Every change applies only from the state it expects, so a redelivered or stale event changes nothing; the work
/// of a job with many instances is done with set-based statements, never one round trip per instance.
public struct SchedulerStore: Sendable {
    /// A job row held `FOR UPDATE` for the rest of the transaction: events of one job are handled one at a time.
    public struct LockedJob: Sendable {
        public var id: JobID
        public var user: UserID
        public var name: String?
        public var state: ExecutionState
        public var rule: DependencyRule
        public var dependences: [Dependence]
        public var priority: Int
        /// The job's `Notifications`, when they were asked for (they never change: the scheduler keeps them).
        public var notifications: [JobNotification]?
    }

    /// One instance, by job, task and index.
    public struct InstanceKey: Sendable, Hashable, Comparable {
        public var task: String
        public var index: Int
        public init(task: String, index: Int) {
            self.task = task
            self.index = index
        }
        public static func < (a: Self, b: Self) -> Bool { (a.task, a.index) < (b.task, b.index) }
    }

    /// An instance's row as the scheduler changes it; written back with ``saveInstances(_:on:)``.
    public struct InstanceRow: Sendable {
        public var key: InstanceKey
        public var lifecycle: InstanceLifecycle
        public var launchTime: Date?
        public var endTime: Date?
        /// Sealed log tails of the attempt that ended, when it reported them.
        public var stdoutSealed: String?
        public var stderrSealed: String?
    }

    let database: Database
    var logger: Logger { database.logger }
    /// Stands for "no exit code" in bound arrays (exit codes are 0…255, or 128+N for signals).
    static let noExitCode = -1_000_000

    public init(database: Database) { self.database = database }

    // MARK: Jobs

    /// Locks the jobs of a batch (those that exist), in one statement and in id order; each job's `Notifications`
    /// are read when its id is in `withNotifications`.
    public func lockJobs(_ ids: [JobID], withNotifications: Set<JobID>, on connection: PostgresConnection)
        async throws -> [JobID: LockedJob]
    {
        var jobs: [JobID: LockedJob] = [:]
        let rows = try await connection.query(
            """
            SELECT job_id, user_id, name, state, dependency_rule, dependences, priority,
                CASE WHEN job_id = ANY(\(withNotifications.map(\.rawValue))) THEN spec_sealed END
            FROM jobs WHERE job_id = ANY(\(ids.map(\.rawValue))) ORDER BY job_id FOR UPDATE
            """, logger: logger)
        for try await (id, user, name, state, rule, dependences, priority, sealed) in rows.decode(
            (String, String, String?, String, String, String, Int, String?).self)
        {
            let notifications = try sealed.map {
                try BatchJSON.decode(
                    JobSpec.self, from: try database.sealer.openBytes($0, context: "jobs.spec:\(id)")
                ).notifications ?? []
            }
            let job = JobID(rawValue: id)
            jobs[job] = LockedJob(
                id: job, user: UserID(rawValue: user), name: name,
                state: ExecutionState(rawValue: state) ?? .submitted,
                rule: DependencyRule(rawValue: rule) ?? .preTaskSucceed,
                dependences: try BatchJSON.decode([Dependence].self, from: Array(dependences.utf8)), priority: priority,
                notifications: notifications)
        }
        return jobs
    }

    /// Each job's tasks with their states, and the instances' state counts of its `counting` tasks (all when nil),
    /// in one round trip for all of them.
    public func progress(
        of jobs: [(job: LockedJob, counting: Set<String>?)], on connection: PostgresConnection
    ) async throws -> [JobID: JobProgress] {
        guard !jobs.isEmpty else { return [:] }
        var order: [JobID: [String]] = [:]
        var tasks: [JobID: [String: JobProgress.TaskProgress]] = [:]
        let counted = jobs.flatMap { entry in (entry.counting ?? []).map { (entry.job.id.rawValue, $0) } }
        for try await row in try await connection.execute(
            Statements.Progress(
                jobs: jobs.map(\.job.id.rawValue),
                countingAll: jobs.filter { $0.counting == nil }.map(\.job.id.rawValue),
                countedJobs: counted.map(\.0), countedTasks: counted.map(\.1)),
            logger: logger)
        {
            let (id, name, state, instanceState, count) = try row.decode((String, String, String, String?, Int?).self)
            let job = JobID(rawValue: id)
            if tasks[job, default: [:]][name] == nil {
                order[job, default: []].append(name)
                tasks[job, default: [:]][name] = JobProgress.TaskProgress(
                    name: name, state: ExecutionState(rawValue: state) ?? .submitted)
            }
            if let instanceState = instanceState.flatMap(ExecutionState.init(rawValue:)), let count {
                tasks[job]![name]!.instances[instanceState] += count
            }
        }
        var progress: [JobID: JobProgress] = [:]
        for (job, _) in jobs {
            let names = order[job.id] ?? []
            progress[job.id] = JobProgress(
                state: job.state, tasks: names.map { tasks[job.id]![$0]! },
                graph: JobGraph(tasks: names, dependences: job.dependences), rule: job.rule)
        }
        return progress
    }

    /// Clears `NextAction` once a requested change is carried out.
    public func clearNextAction(_ job: LockedJob, on connection: PostgresConnection) async throws {
        try await connection.query(
            "UPDATE jobs SET next_action = NULL WHERE job_id = \(job.id.rawValue)", logger: logger)
    }

    // MARK: Decisions

    /// What ``JobProgress`` decided for the jobs of a batch, to be written in one statement per kind.
    public struct Decided: Sendable {
        /// Tasks whose state follows from their instances (or that now wait for predecessors).
        public var taskStates: [(job: JobID, task: String, state: ExecutionState)] = []
        /// Tasks that can never run: they end `FAILED` with the reason.
        public var skipped: [(job: JobID, task: String, reason: String)] = []
        /// Tasks released: their instances are created, or failed ones made runnable again.
        public var started: [(job: JobID, task: String)] = []
        /// Jobs whose state changed, with the reason of a final state.
        public var jobStates: [(job: JobID, state: ExecutionState, reason: String?)] = []

        public init() {}
    }

    /// Writes what was decided: task states first (the last one given for a task counts; a task set back to
    /// `PENDING` by `RetryJobs` may be started in the same decision), then tasks skipped, then tasks started, then
    /// job states (the last one given for a job counts). At most four statements, whatever the number of jobs.
    /// Returns how many instances were created and the anonymous environments (`Task.ComputeEnv`) resized: sized
    /// to a started task's instances, `MaxConcurrentNum` and `maxNodes`, whichever is least, or released (zero
    /// nodes) when their task ended (but for `FAILED_INTERRUPTED`: its nodes are kept for inspection).
    public func save(_ decided: Decided, maxNodes: Int, on connection: PostgresConnection) async throws
        -> (created: Int, resized: [EnvID])
    {
        var resized: [EnvID] = []
        let taskStates = Self.lastOfEach(decided.taskStates) { "\($0.job)/\($0.task)" }
        if !taskStates.isEmpty {
            for try await env in try await connection.query(
                """
                WITH task AS (
                    UPDATE tasks t SET state = u.state, end_time = CASE WHEN u.final THEN now() END,
                        state_reason = CASE WHEN NOT u.final THEN t.state_reason END
                    FROM unnest(\(taskStates.map(\.job.rawValue))::text[], \(taskStates.map(\.task))::text[],
                        \(taskStates.map(\.state.rawValue))::text[], \(taskStates.map(\.state.isFinal))::boolean[],
                        \(taskStates.map { $0.state.isFinal && $0.state != .failedInterrupted })::boolean[])
                        AS u(job_id, task_name, state, final, release)
                    WHERE t.job_id = u.job_id AND t.task_name = u.task_name
                    RETURNING t.env_id, u.release
                )
                UPDATE compute_envs e SET desired_node_count = 0
                FROM (SELECT DISTINCT env_id FROM task WHERE release) r
                WHERE e.env_id = r.env_id AND e.anonymous_for IS NOT NULL AND e.desired_node_count > 0
                RETURNING e.env_id
                """, logger: logger
            ).decode(String.self) {
                resized.append(EnvID(rawValue: env))
            }
        }
        let skipped = decided.skipped
        if !skipped.isEmpty {
            try await connection.query(
                """
                UPDATE tasks t SET state = \(unescaped: ExecutionState.failed.sql), state_reason = u.reason, end_time = now()
                FROM unnest(\(skipped.map(\.job.rawValue))::text[], \(skipped.map(\.task))::text[],
                    \(skipped.map(\.reason))::text[]) AS u(job_id, task_name, reason)
                WHERE t.job_id = u.job_id AND t.task_name = u.task_name
                """, logger: logger)
        }
        var created = 0
        let started = decided.started
        if !started.isEmpty {
            for try await (count, env) in try await connection.query(
                """
                WITH task AS (
                    UPDATE tasks t SET state = \(unescaped: ExecutionState.runnable.sql), state_reason = NULL, end_time = NULL,
                        start_time = coalesce(t.start_time, now())
                    FROM unnest(\(started.map(\.job.rawValue))::text[], \(started.map(\.task))::text[])
                        AS u(job_id, task_name)
                    WHERE t.job_id = u.job_id AND t.task_name = u.task_name
                    RETURNING t.job_id, t.task_name, t.instance_num, t.max_concurrent_num, t.env_id
                ), created AS (
                    INSERT INTO task_instances (job_id, task_name, instance_index, state, attempt)
                    SELECT task.job_id, task.task_name, i, \(unescaped: ExecutionState.runnable.sql), 0
                    FROM task, generate_series(0, task.instance_num - 1) AS i
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                ), reset AS (
                    UPDATE task_instances i SET state = \(unescaped: ExecutionState.runnable.sql), dispatched = false, failures = 0,
                        not_before = NULL, exit_code = NULL, state_reason = NULL, node_id = NULL, launch_time = NULL,
                        end_time = NULL
                    FROM task WHERE i.job_id = task.job_id AND i.task_name = task.task_name
                        AND i.state IN \(unescaped: [ExecutionState.failed, .failedInterrupted].sql)
                ), sized AS (
                    UPDATE compute_envs e SET desired_node_count = least(task.instance_num,
                        coalesce(task.max_concurrent_num, task.instance_num), \(maxNodes))
                    FROM task WHERE e.env_id = task.env_id AND e.anonymous_for IS NOT NULL AND e.next_action IS NULL
                    RETURNING e.env_id
                )
                SELECT (SELECT count(*) FROM created)::integer, NULL::text
                UNION ALL SELECT NULL, env_id FROM sized
                """, logger: logger
            ).decode((Int?, String?).self) {
                created += count ?? 0
                if let env { resized.append(EnvID(rawValue: env)) }
            }
        }
        let jobStates = Self.lastOfEach(decided.jobStates) { $0.job.rawValue }
        if !jobStates.isEmpty {
            try await connection.query(
                """
                UPDATE jobs j SET state = u.state,
                    state_reason = CASE WHEN u.final THEN coalesce(nullif(u.reason, ''), j.state_reason) END,
                    updated_at = now(), end_time = CASE WHEN u.final THEN now() END
                FROM unnest(\(jobStates.map(\.job.rawValue))::text[], \(jobStates.map(\.state.rawValue))::text[],
                    \(jobStates.map(\.state.isFinal))::boolean[], \(jobStates.map { $0.reason ?? "" })::text[])
                    AS u(job_id, state, final, reason)
                WHERE j.job_id = u.job_id
                """, logger: logger)
        }
        return (created, resized)
    }

    /// The last element for each key, in the order of their first appearance.
    static func lastOfEach<Element>(_ elements: [Element], key: (Element) -> String) -> [Element] {
        var position: [String: Int] = [:]
        var result: [Element] = []
        for element in elements {
            if let index = position[key(element)] {
                result[index] = element
            } else {
                position[key(element)] = result.count
                result.append(element)
            }
        }
        return result
    }

    /// Refreshes the planner's statistics of instances, after many were created: until then it takes a large new
    /// task for a handful of rows and plans the per-batch statements accordingly. Runs outside any transaction.
    public func refreshInstanceStatistics() async throws {
        try await database.client.query("ANALYZE task_instances", logger: logger)
    }

    // MARK: Instances

    /// The rows of the instances `keys` names by job (those that exist), for all jobs in one round trip.
    public func instances(_ keys: [JobID: Set<InstanceKey>], on connection: PostgresConnection) async throws
        -> [JobID: [InstanceKey: InstanceRow]]
    {
        let flat = keys.flatMap { job, keys in keys.map { (job: job.rawValue, key: $0) } }
        guard !flat.isEmpty else { return [:] }
        var rows: [JobID: [InstanceKey: InstanceRow]] = [:]
        for try await row in try await connection.execute(
            Statements.Instances(jobs: flat.map(\.job), tasks: flat.map(\.key.task), indices: flat.map(\.key.index)),
            logger: logger)
        {
            let (
                job, task, index, state, attempt, dispatched, failures, node, exitCode, reason, notBefore, launch, end
            ) =
                try row.decode(
                    (String, String, Int, String, Int, Bool, Int, String?, Int?, String?, Date?, Date?, Date?).self)
            let key = InstanceKey(task: task, index: index)
            rows[JobID(rawValue: job), default: [:]][key] = InstanceRow(
                key: key,
                lifecycle: InstanceLifecycle(
                    state: ExecutionState(rawValue: state) ?? .runnable, attempt: attempt, dispatched: dispatched,
                    failures: failures, node: node.map(NodeID.init(rawValue:)), exitCode: exitCode, reason: reason,
                    notBefore: notBefore),
                launchTime: launch, endTime: end)
        }
        return rows
    }

    /// Writes changed rows of any number of jobs back, all in one statement.
    public func saveInstances(_ rows: [JobID: [InstanceRow]], on connection: PostgresConnection) async throws {
        let rows = rows.flatMap { job, rows in rows.map { (job: job.rawValue, row: $0) } }
            .sorted { ($0.job, $0.row.key) < ($1.job, $1.row.key) }
        guard !rows.isEmpty else { return }
        // Arrays bind without NULLs: an empty string, a code no exit has, and the epoch stand for NULL.
        let none = Self.noExitCode
        let epoch = Date(timeIntervalSince1970: 0)
        let lifecycles = rows.map(\.row.lifecycle)
        try await connection.query(
            """
            UPDATE task_instances i SET state = u.state, attempt = u.attempt, dispatched = u.dispatched,
                failures = u.failures, node_id = NULLIF(u.node_id, ''), exit_code = NULLIF(u.exit_code, \(none)),
                state_reason = NULLIF(u.reason, ''), not_before = NULLIF(u.not_before, 'epoch'),
                launch_time = NULLIF(u.launch_time, 'epoch'), end_time = NULLIF(u.end_time, 'epoch'),
                stdout_tail_sealed = coalesce(NULLIF(u.stdout, ''), i.stdout_tail_sealed),
                stderr_tail_sealed = coalesce(NULLIF(u.stderr, ''), i.stderr_tail_sealed)
            FROM unnest(\(rows.map(\.job))::text[], \(rows.map(\.row.key.task))::text[],
                \(rows.map(\.row.key.index))::integer[],
                \(lifecycles.map(\.state.rawValue))::text[], \(lifecycles.map(\.attempt))::integer[],
                \(lifecycles.map(\.dispatched))::boolean[], \(lifecycles.map(\.failures))::integer[],
                \(lifecycles.map { $0.node?.rawValue ?? "" })::text[],
                \(lifecycles.map { $0.exitCode ?? none })::integer[], \(lifecycles.map { $0.reason ?? "" })::text[],
                \(lifecycles.map { $0.notBefore ?? epoch })::timestamptz[],
                \(rows.map { $0.row.launchTime ?? epoch })::timestamptz[],
                \(rows.map { $0.row.endTime ?? epoch })::timestamptz[],
                \(rows.map { $0.row.stdoutSealed ?? "" })::text[], \(rows.map { $0.row.stderrSealed ?? "" })::text[])
                AS u(job_id, task_name, instance_index, state, attempt, dispatched, failures, node_id, exit_code,
                    reason, not_before, launch_time, end_time, stdout, stderr)
            WHERE i.job_id = u.job_id AND i.task_name = u.task_name AND i.instance_index = u.instance_index
            """, logger: logger)
    }

    /// An instance that was ended, with the nodes that may run its attempt: the one it runs on; every node of its
    /// environment when its run message was sent and not yet taken (whichever takes it must skip it); none when it
    /// was never sent.
    public struct Ended: Sendable {
        public var task: String
        public var index: Int
        public var attempt: Int
        public var nodes: [NodeID]
    }

    /// Ends instances that have not finished (and releases kept ones): all of the job's, a task's, or one; with
    /// `notStarted`, only those whose commands have not started (`FAST_INTERRUPT`: waiting, or claimed by a node and
    /// waiting there for a slot). Returns them, for the kills and notifications.
    public func terminateInstances(
        of job: JobID, task: String? = nil, index: Int? = nil, notStarted: Bool = false, reason: String,
        on connection: PostgresConnection
    ) async throws -> [Ended] {
        var query = SQLBuilder(
            """
            UPDATE task_instances i SET state = \(ExecutionState.failed.sql), dispatched = false, not_before = NULL,
                end_time = now(), state_reason =
            """)
        query.append(" \(query.bind(reason)) FROM tasks t")
        query.append(
            " WHERE t.job_id = i.job_id AND t.task_name = i.task_name AND i.job_id = \(query.bind(job.rawValue))")
        query.append(
            notStarted
                ? " AND i.state IN \([ExecutionState.submitted, .pending, .runnable, .starting].sql)"
                : " AND i.state NOT IN \([ExecutionState.succeed, .failed].sql)")
        if let task { query.append(" AND i.task_name = \(query.bind(task))") }
        if let index { query.append(" AND i.instance_index = \(query.bind(index))") }
        query.append(" RETURNING i.task_name, i.instance_index, i.attempt, i.node_id, t.env_id")
        var rows: [(task: String, index: Int, attempt: Int, node: String?, env: String?)] = []
        for try await row in try await connection.query(query.query, logger: logger).decode(
            (String, Int, Int, String?, String?).self)
        {
            rows.append(row)
        }
        let sentEnvs = Set(rows.filter { $0.node == nil && $0.attempt > 0 }.compactMap(\.env))
        var envNodes: [String: [NodeID]] = [:]
        if !sentEnvs.isEmpty {
            for try await (env, node) in try await connection.query(
                "SELECT env_id, node_id FROM compute_nodes WHERE env_id = ANY(\(Array(sentEnvs)))", logger: logger
            ).decode((String, String).self) {
                envNodes[env, default: []].append(NodeID(rawValue: node))
            }
        }
        return rows.map { row in
            let nodes =
                if let node = row.node { [NodeID(rawValue: node)] } else if row.attempt > 0, let env = row.env {
                    envNodes[env] ?? []
                } else { [NodeID]() }
            return Ended(task: row.task, index: row.index, attempt: row.attempt, nodes: nodes)
        }
    }

    // MARK: Dispatch

    /// A started task with instances waiting to be dispatched.
    public struct WaitingTask: Sendable {
        public var job: JobID
        public var task: String
        public var env: EnvID
        public var maxConcurrent: Int?
        public var stateReason: String?
        public var ready: Int
        public var backoffEnd: Date?
        public var key: DispatchPlanner.TaskKey { DispatchPlanner.TaskKey(job: job, task: task) }
    }

    /// What the dispatch pass starts from: the slots of each environment's live nodes (running, heard from within
    /// `lostAfter`) with their number and the slots of the smallest, and the instances dispatched and not ended by
    /// task, with its environment. One round trip.
    public func capacityAndActive(lostAfter: Duration, on connection: PostgresConnection) async throws -> (
        capacity: [EnvID: Int], nodes: [EnvID: (count: Int, smallest: Int)],
        active: [DispatchPlanner.TaskKey: (env: EnvID?, count: Int)]
    ) {
        var capacity: [EnvID: Int] = [:]
        var nodes: [EnvID: (count: Int, smallest: Int)] = [:]
        var active: [DispatchPlanner.TaskKey: (env: EnvID?, count: Int)] = [:]
        for try await row in try await connection.execute(
            Statements.CapacityAndActive(lostAfterSeconds: Int(lostAfter.components.seconds)), logger: logger)
        {
            let (job, task, env, count, smallest, nodeCount) = try row.decode(
                (String?, String?, String?, Int, Int?, Int?).self)
            if let job, let task {
                active[DispatchPlanner.TaskKey(job: JobID(rawValue: job), task: task)] = (env.map(EnvID.init), count)
            } else if let env {
                capacity[EnvID(rawValue: env)] = count
                nodes[EnvID(rawValue: env)] = (nodeCount ?? 1, smallest ?? 1)
            }
        }
        return (capacity, nodes, active)
    }

    /// Started tasks with instances waiting for dispatch, highest job priority first, then oldest job, then task
    /// order; with how many are ready (past any retry back-off; counted up to `readyCap`, so a task of 100,000
    /// waiting instances costs no more than one of `readyCap`) and when the earliest back-off ends. Only tasks of
    /// the environments in `free` (those with free slots), and tasks without a pending reason yet: a task already
    /// told it waits for a full environment is not looked at again until a slot frees up there.
    ///
    /// Unless `all`, only the first tasks of each environment in dispatch order with instances ready are read: as
    /// many as it has free slots, plus one (to know the next one waits), plus its `active` tasks (those with
    /// instances out, which may be held by `MaxConcurrentNum`); a task whose waiting instances are all in a retry
    /// back-off holds no place (it is read while it has no pending reason, and by a pass with `all`). So a pass costs in proportion to the slots, not to the jobs waiting: with a
    /// backlog of 20,000 jobs, reading each on every pass would cost more than the pass. Of those read, a task told it
    /// waits for a free node is left out when the instances ready ahead of it fill the free slots; tasks held by
    /// `MaxConcurrentNum` do not count ahead of others. A pass with `all` reads every waiting task of the
    /// environments, for the queue positions it writes.
    public func waitingTasks(
        free: [EnvID: Int], active: [EnvID: Int], all: Bool, readyCap: Int, on connection: PostgresConnection
    ) async throws -> [WaitingTask] {
        var tasks: [WaitingTask] = []
        let envs = Array(free.keys)
        for try await row in try await connection.execute(
            Statements.WaitingTasks(
                readyCap: readyCap, envs: envs.map(\.rawValue), slots: envs.map { free[$0]! }, all: all,
                caps: envs.map { free[$0]! + 1 + active[$0, default: 0] }),
            logger: logger)
        {
            let (job, task, env, limit, reason, ready, backoffEnd) = try row.decode(
                (String, String, String, Int?, String?, Int, Date?).self)
            tasks.append(
                WaitingTask(
                    job: JobID(rawValue: job), task: task, env: EnvID(rawValue: env), maxConcurrent: limit,
                    stateReason: reason, ready: ready, backoffEnd: backoffEnd))
        }
        return tasks
    }

    /// Marks up to `limit` of each task's waiting instances dispatched (lowest index first, none in back-off), each
    /// with its next attempt, for all tasks in one statement; returns their indices and attempts by task. The rows
    /// picked are updated by their `ctid`: with the statistics of a task just created, the planner would otherwise
    /// walk every instance of the task and re-run the pick for each (280 ms instead of 0.2 ms at 20,000 instances).
    public func dispatch(_ picks: [(task: DispatchPlanner.TaskKey, limit: Int)], on connection: PostgresConnection)
        async throws -> [DispatchPlanner.TaskKey: [(index: Int, attempt: Int)]]
    {
        guard !picks.isEmpty else { return [:] }
        var dispatched: [DispatchPlanner.TaskKey: [(index: Int, attempt: Int)]] = [:]
        for try await (job, task, index, attempt) in try await connection.query(
            """
            UPDATE task_instances SET dispatched = true, attempt = attempt + 1, dispatched_at = now(),
                node_id = NULL, state_reason = NULL, not_before = NULL
            WHERE ctid = ANY(ARRAY(
                SELECT w.ctid
                FROM unnest(\(picks.map(\.task.job.rawValue))::text[], \(picks.map(\.task.task))::text[],
                    \(picks.map(\.limit))::integer[]) AS k(job_id, task_name, lim)
                CROSS JOIN LATERAL (
                    SELECT i.ctid FROM task_instances i
                    WHERE i.job_id = k.job_id AND i.task_name = k.task_name AND i.state = \(unescaped: ExecutionState.runnable.sql)
                        AND NOT i.dispatched AND (i.not_before IS NULL OR i.not_before <= now())
                    ORDER BY i.instance_index LIMIT k.lim FOR UPDATE) w))
            RETURNING job_id, task_name, instance_index, attempt
            """, logger: logger
        ).decode((String, String, Int, Int).self) {
            dispatched[DispatchPlanner.TaskKey(job: JobID(rawValue: job), task: task), default: []].append(
                (index, attempt))
        }
        return dispatched.mapValues { $0.sorted { $0.index < $1.index } }
    }

    /// Sets waiting tasks' `StateReason` (why their instances are not running; nil clears it) in one statement: a
    /// dispatch pass behind a full environment changes the queue position of every task waiting there.
    public func setPendingReasons(
        _ reasons: [(task: DispatchPlanner.TaskKey, reason: String?)], on connection: PostgresConnection
    ) async throws {
        guard !reasons.isEmpty else { return }
        try await connection.query(
            """
            UPDATE tasks t SET state_reason = nullif(r.reason, '')
            FROM unnest(\(reasons.map(\.task.job.rawValue))::text[], \(reasons.map(\.task.task))::text[],
                \(reasons.map { $0.reason ?? "" })::text[]) AS r(job_id, task_name, reason)
            WHERE t.job_id = r.job_id AND t.task_name = r.task_name
            """, logger: logger)
    }

    // MARK: Watchdog

    /// An instance the watchdog found: past its `Timeout` with no result, or on a node that is gone.
    public struct Overdue: Sendable {
        public var job: JobID
        public var key: InstanceKey
        public var attempt: Int
        public var node: NodeID?
        public var timeoutSeconds: Int
    }

    /// Running instances whose node never reported their end `grace` after their `Timeout`.
    public func timedOut(grace: Duration, on connection: PostgresConnection) async throws -> [Overdue] {
        try await overdue(
            """
            SELECT i.job_id, i.task_name, i.instance_index, i.attempt, i.node_id, t.timeout_seconds
            FROM task_instances i JOIN tasks t USING (job_id, task_name)
            WHERE i.dispatched AND i.state IN \(unescaped: [ExecutionState.starting, .running].sql)
                AND i.launch_time + (t.timeout_seconds + \(Int(grace.components.seconds))) * interval '1 s' < now()
            LIMIT 1000
            """, on: connection)
    }

    /// Takes the scheduling lock for the rest of the transaction: one scheduler transaction at a time, even with
    /// several scheduler processes, since dispatch reads capacity and writes instances of many jobs and must neither
    /// double-book a slot nor deadlock with another. In the same round trip, returns which of `nodes` have been
    /// heard from within `lostAfter` (the others are, or are about to be, counted lost), with their environments.
    public func lockScheduling(
        andFindAlive nodes: Set<NodeID>, lostAfter: Duration, on connection: PostgresConnection
    ) async throws -> [NodeID: EnvID] {
        var alive: [NodeID: EnvID] = [:]
        for try await row in try await connection.execute(
            Statements.LockScheduling(
                nodes: nodes.map(\.rawValue), lostAfterSeconds: Int(lostAfter.components.seconds)),
            logger: logger)
        {
            let (id, env) = try row.decode((String, String).self)
            guard !id.isEmpty else { continue }
            alive[NodeID(rawValue: id)] = EnvID(rawValue: env)
        }
        return alive
    }

    /// Instances out on a node silent for longer than `lostAfter` (up to where the provisioner has recorded
    /// heartbeats: one behind or stopped leaves beats of live nodes queued), or on one whose row is gone with no
    /// word of it: removed without a tombstone, or longer than `lostAfter` ago. A node removed with a tombstone is
    /// the ``NodeGone`` message's (``onNodes(_:on:)``): the scheduler hears it after all the node reported, while a
    /// sweep that counted the node lost as soon as its row went would run again instances whose ends are still
    /// queued (a node that drained reports its last ends, stops, and is removed at once).
    public func onLostNodes(lostAfter: Duration, on connection: PostgresConnection) async throws -> [Overdue] {
        let seconds = Int(lostAfter.components.seconds)
        return try await overdue(
            """
            SELECT i.job_id, i.task_name, i.instance_index, i.attempt, i.node_id, 0
            FROM task_instances i
            WHERE i.dispatched AND i.node_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM compute_nodes n WHERE n.node_id = i.node_id
                    AND coalesce(n.last_heartbeat, n.created_at)
                        > heartbeats_recorded_until() - \(seconds) * interval '1 s')
                AND NOT EXISTS (
                    SELECT 1 FROM compute_node_tombstones t
                    WHERE t.node_id = i.node_id AND t.deleted_at > now() - \(seconds) * interval '1 s'
                        AND NOT EXISTS (SELECT 1 FROM compute_nodes n WHERE n.node_id = i.node_id))
            LIMIT 1000
            """, on: connection)
    }

    /// Instances still out on `nodes`, which are gone: once the scheduler heard all they reported, what is still
    /// out will not be finished by them.
    public func onNodes(_ nodes: [NodeID], on connection: PostgresConnection) async throws -> [Overdue] {
        try await overdue(
            """
            SELECT i.job_id, i.task_name, i.instance_index, i.attempt, i.node_id, 0
            FROM task_instances i
            WHERE i.dispatched AND i.node_id = ANY(\(nodes.map(\.rawValue)))
            """, on: connection)
    }

    /// Runs a watchdog query selecting job, task, index, attempt, node and timeout.
    private func overdue(_ query: PostgresQuery, on connection: PostgresConnection) async throws -> [Overdue] {
        var found: [Overdue] = []
        for try await (job, task, index, attempt, node, timeout) in try await connection.query(query, logger: logger)
            .decode((String, String, Int, Int, String?, Int).self)
        {
            found.append(
                Overdue(
                    job: JobID(rawValue: job), key: InstanceKey(task: task, index: index), attempt: attempt,
                    node: node.map(NodeID.init), timeoutSeconds: timeout))
        }
        return found
    }
}

extension SchedulerStore {
    /// What the scheduler needs of a task to dispatch and judge its instances; fixed once the job is submitted.
    public struct TaskConfig: Sendable {
        public var env: EnvID?
        public var instanceCount: Int
        public var timeoutSeconds: Int
        public var command: String
        public var environment: [EnvVar]
        public var policy: RetryPolicy
        public var failedAction: FailedAction
        public var io: InstanceIO?
    }

    /// The configurations of `tasks` (those that exist), from their rows and sealed specs, in one round trip.
    public func taskConfigs(_ tasks: [DispatchPlanner.TaskKey], on connection: PostgresConnection) async throws
        -> [DispatchPlanner.TaskKey: TaskConfig]
    {
        guard !tasks.isEmpty else { return [:] }
        var configs: [DispatchPlanner.TaskKey: TaskConfig] = [:]
        for try await (job, task, env, count, timeout, sealed) in try await connection.query(
            """
            SELECT t.job_id, t.task_name, t.env_id, t.instance_num, t.timeout_seconds, t.spec_sealed
            FROM tasks t JOIN unnest(\(tasks.map(\.job.rawValue))::text[], \(tasks.map(\.task))::text[])
                AS k(job_id, task_name) USING (job_id, task_name)
            """, logger: logger
        ).decode((String, String, String?, Int, Int, String).self) {
            let spec = try BatchJSON.decode(
                TaskSpec.self, from: try database.sealer.openBytes(sealed, context: "tasks.spec:\(job)/\(task)"))
            configs[DispatchPlanner.TaskKey(job: JobID(rawValue: job), task: task)] = TaskConfig(
                env: env.map(EnvID.init), instanceCount: count, timeoutSeconds: timeout,
                command: spec.application?.script ?? "", environment: spec.envVars ?? [],
                policy: RetryPolicy(task: spec),
                failedAction: spec.failedAction.flatMap(FailedAction.init(rawValue:)) ?? .terminate,
                io: InstanceIO(task: spec))
        }
        return configs
    }
}
