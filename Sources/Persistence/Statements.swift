import BatchCore
import PostgresNIO

/// The scheduler's statements that run in every batch, prepared once per connection: PostgreSQL plans an unnamed
/// statement each time it runs, and planning these took as long as running them (1.4 ms of the 2.2 ms the dispatch
/// pass's search for waiting tasks took in a 5,000-instance run). Each decodes its rows where it is used.
enum Statements {
    /// A statement whose values are bound when it is made, and whose rows are decoded where it runs.
    protocol Bound: PostgresPreparedStatement where Row == PostgresRow {
        var bindings: PostgresBindings { get }
    }

    /// The jobs' tasks in order with the counts of their instances per state: all tasks' of the jobs in
    /// `countingAll`, and those of the job and task pairs given.
    struct Progress: Bound {
        static let sql = """
            SELECT t.job_id, t.task_name, t.state, c.state, c.count
            FROM tasks t LEFT JOIN task_instance_counts c
                ON c.job_id = t.job_id AND c.task_name = t.task_name AND (t.job_id = ANY($2::text[])
                    OR (t.job_id, t.task_name) IN (SELECT * FROM unnest($3::text[], $4::text[])))
            WHERE t.job_id = ANY($1::text[]) ORDER BY t.job_id, t.position
            """
        let bindings: PostgresBindings

        init(jobs: [String], countingAll: [String], countedJobs: [String], countedTasks: [String]) {
            bindings = Statements.bind(jobs, countingAll, countedJobs, countedTasks)
        }
    }

    /// The rows of instances by job, task and index.
    struct Instances: Bound {
        static let sql = """
            SELECT i.job_id, i.task_name, i.instance_index, i.state, i.attempt, i.dispatched, i.failures, i.node_id,
                i.exit_code, i.state_reason, i.not_before, i.launch_time, i.end_time
            FROM task_instances i
                JOIN unnest($1::text[], $2::text[], $3::integer[]) AS k(job_id, task_name, instance_index)
                USING (job_id, task_name, instance_index)
            """
        let bindings: PostgresBindings

        init(jobs: [String], tasks: [String], indices: [Int]) {
            bindings = Statements.bind(jobs, tasks, indices)
        }
    }

    /// The slots of each environment's live nodes, the slots of its smallest one and their number (job and task
    /// NULL), then the instances out by task.
    struct CapacityAndActive: Bound {
        static let sql = """
            SELECT NULL, NULL, env_id, sum(slots)::integer, min(slots)::integer, count(*)::integer FROM compute_nodes
            WHERE state = \(ComputeNodeState.running.sql) AND coalesce(last_heartbeat, created_at) > now() - $1 * interval '1 s'
            GROUP BY env_id
            UNION ALL
            SELECT i.job_id, i.task_name, t.env_id, count(*)::integer, NULL, NULL
            FROM task_instances i JOIN tasks t USING (job_id, task_name)
            WHERE i.dispatched GROUP BY i.job_id, i.task_name, t.env_id
            """
        let bindings: PostgresBindings

        init(lostAfterSeconds: Int) {
            bindings = Statements.bind(lostAfterSeconds)
        }
    }

    /// Started tasks with instances waiting for dispatch, in dispatch order (``SchedulerStore/waitingTasks``): in
    /// each environment of `$2` (with `$3` free slots), its first `$5` tasks with instances ready to dispatch (past
    /// any back-off; all of them with `$4`), read in order from the `tasks_dispatch_order` index; and tasks not told
    /// yet why they wait.
    struct WaitingTasks: Bound {
        static let sql = """
            WITH candidate AS (
                SELECT c.* FROM unnest($2::text[], $5::integer[]) AS f(env_id, cap)
                CROSS JOIN LATERAL (
                    SELECT t.job_id, t.task_name, t.env_id, t.max_concurrent_num, t.state_reason, t.job_priority,
                        t.job_created_at, t.position
                    FROM tasks t
                    WHERE t.env_id = f.env_id AND t.state IN \([ExecutionState.runnable, .starting, .running].sql)
                        AND EXISTS (SELECT 1 FROM task_instances i
                            WHERE i.job_id = t.job_id AND i.task_name = t.task_name
                                AND i.state = \(ExecutionState.runnable.sql) AND NOT i.dispatched
                                AND (i.not_before IS NULL OR i.not_before <= now()))
                    ORDER BY t.job_priority DESC, t.job_created_at, t.job_id, t.position
                    LIMIT CASE WHEN $4 THEN NULL ELSE f.cap END) c
                UNION
                SELECT t.job_id, t.task_name, t.env_id, t.max_concurrent_num, t.state_reason, t.job_priority,
                    t.job_created_at, t.position
                FROM tasks t
                WHERE t.state IN \([ExecutionState.runnable, .starting, .running].sql) AND t.state_reason IS NULL
                    AND t.env_id IS NOT NULL
            ), waiting AS (
                SELECT t.*, w.ready, w.backoff_end,
                    coalesce(sum(CASE WHEN t.state_reason LIKE 'MAX_CONCURRENT_REACHED%' THEN 0 ELSE w.ready END)
                        OVER (PARTITION BY t.env_id ORDER BY t.job_priority DESC, t.job_created_at, t.job_id, t.position
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS ahead
                FROM candidate t
                CROSS JOIN LATERAL (
                    SELECT
                        (SELECT count(*)::integer FROM (
                            SELECT 1 FROM task_instances i
                            WHERE i.job_id = t.job_id AND i.task_name = t.task_name AND i.state = \(ExecutionState.runnable.sql)
                                AND NOT i.dispatched AND (i.not_before IS NULL OR i.not_before <= now())
                            LIMIT $1) r) AS ready,
                        (SELECT min(i.not_before) FROM task_instances i
                            WHERE i.job_id = t.job_id AND i.task_name = t.task_name AND i.state = \(ExecutionState.runnable.sql)
                                AND NOT i.dispatched AND i.not_before > now()) AS backoff_end
                    -- Not pulled up into the outer query, which would count the ready instances once per use.
                    OFFSET 0) w
                WHERE w.ready > 0 OR w.backoff_end IS NOT NULL
            )
            SELECT w.job_id, w.task_name, w.env_id, w.max_concurrent_num, w.state_reason, w.ready, w.backoff_end
            FROM waiting w
            LEFT JOIN unnest($2::text[], $3::integer[]) AS f(env_id, slots) ON f.env_id = w.env_id
            WHERE $4 OR w.state_reason IS NULL OR w.state_reason NOT LIKE 'NO_FREE_NODE%'
                OR w.ahead < coalesce(f.slots, 0)
            ORDER BY w.job_priority DESC, w.job_created_at, w.job_id, w.position
            """
        let bindings: PostgresBindings

        init(readyCap: Int, envs: [String], slots: [Int], all: Bool, caps: [Int]) {
            bindings = Statements.bind(readyCap, envs, slots, all, caps)
        }
    }

    /// Takes the scheduling lock; returns '' and then those of `nodes` heard from within the last seconds given.
    struct LockScheduling: Bound {
        static let sql = """
            SELECT '', '' FROM (SELECT pg_advisory_xact_lock(7482001)) l
            UNION ALL
            SELECT node_id, env_id FROM compute_nodes WHERE node_id = ANY($1::text[])
                AND coalesce(last_heartbeat, created_at) > now() - $2 * interval '1 s'
            """
        let bindings: PostgresBindings

        init(nodes: [String], lostAfterSeconds: Int) {
            bindings = Statements.bind(nodes, lostAfterSeconds)
        }
    }
}

extension Statements {
    /// The values of a statement's parameters, `$1` first.
    static func bind<each Value: PostgresNonThrowingEncodable>(_ values: repeat each Value) -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in repeat each values { bindings.append(value) }
        return bindings
    }
}

extension Statements.Bound {
    func makeBindings() throws -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}
