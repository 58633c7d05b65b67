import BatchCore

/// The schema, as numbered migrations applied in order. Never edit a released migration; add one.
///
/// Each migration is a list of statements (the extended query protocol runs one statement per query) applied in
/// one transaction.
public struct Migration: Sendable {
    public var version: Int
    public var name: String
    public var statements: [String]
}

extension Migration {
    public static let all: [Migration] = [
        Migration(
            version: 1, name: "walking skeleton",
            statements: [
                """
                CREATE TABLE users (
                    user_id text PRIMARY KEY,
                    name text NOT NULL UNIQUE,
                    disabled boolean NOT NULL DEFAULT false,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE credentials (
                    secret_id text PRIMARY KEY,
                    user_id text NOT NULL REFERENCES users ON DELETE CASCADE,
                    secret_key_sealed text NOT NULL,
                    disabled boolean NOT NULL DEFAULT false,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE keyring (
                    key_id text PRIMARY KEY,
                    canary_sealed text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE compute_envs (
                    env_id text PRIMARY KEY,
                    user_id text NOT NULL REFERENCES users,
                    name text NOT NULL,
                    description text,
                    env_type text NOT NULL,
                    driver text NOT NULL DEFAULT 'process',
                    desired_node_count integer NOT NULL,
                    spec text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX compute_envs_user ON compute_envs (user_id)",
                """
                CREATE TABLE compute_nodes (
                    node_id text PRIMARY KEY,
                    env_id text NOT NULL REFERENCES compute_envs ON DELETE CASCADE,
                    state text NOT NULL,
                    slots integer NOT NULL,
                    free_slots integer NOT NULL,
                    host text,
                    pid integer,
                    last_heartbeat timestamptz,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX compute_nodes_env ON compute_nodes (env_id)",
                """
                CREATE TABLE jobs (
                    job_id text PRIMARY KEY,
                    user_id text NOT NULL REFERENCES users,
                    name text,
                    description text,
                    priority integer NOT NULL DEFAULT 0,
                    state text NOT NULL,
                    state_reason text,
                    dependency_rule text NOT NULL,
                    dependences text NOT NULL,
                    spec_sealed text NOT NULL,
                    client_token text,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    end_time timestamptz,
                    UNIQUE (user_id, client_token)
                )
                """,
                "CREATE INDEX jobs_user ON jobs (user_id, created_at DESC)",
                """
                CREATE TABLE tasks (
                    job_id text NOT NULL REFERENCES jobs ON DELETE CASCADE,
                    task_name text NOT NULL,
                    position integer NOT NULL,
                    state text NOT NULL,
                    state_reason text,
                    instance_num integer NOT NULL,
                    env_id text,
                    max_retry_count integer NOT NULL,
                    timeout_seconds integer NOT NULL,
                    spec_sealed text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    start_time timestamptz,
                    end_time timestamptz,
                    PRIMARY KEY (job_id, task_name)
                )
                """,
                """
                CREATE TABLE task_instances (
                    job_id text NOT NULL,
                    task_name text NOT NULL,
                    instance_index integer NOT NULL,
                    state text NOT NULL,
                    attempt integer NOT NULL DEFAULT 0,
                    exit_code integer,
                    node_id text,
                    state_reason text,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    launch_time timestamptz,
                    end_time timestamptz,
                    PRIMARY KEY (job_id, task_name, instance_index),
                    FOREIGN KEY (job_id, task_name) REFERENCES tasks ON DELETE CASCADE
                )
                """,
                """
                CREATE TABLE outbox (
                    id bigserial PRIMARY KEY,
                    exchange text NOT NULL,
                    routing_key text NOT NULL,
                    message_id text NOT NULL,
                    message_type text,
                    correlation_id text,
                    body_sealed text NOT NULL,
                    mandatory boolean NOT NULL DEFAULT false,
                    attempts integer NOT NULL DEFAULT 0,
                    next_attempt_at timestamptz NOT NULL DEFAULT now(),
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX outbox_due ON outbox (next_attempt_at, id)",
            ]
        ),
        Migration(
            version: 2, name: "compute environment specs sealed",
            statements: [
                // Environment specs hold storage credentials and login passwords: sealed from now on.
                "ALTER TABLE compute_envs RENAME COLUMN spec TO spec_sealed"
            ]
        ),
        Migration(
            version: 3, name: "full API: tags, templates, activities, attached nodes, log tails",
            statements: [
                """
                ALTER TABLE jobs ADD COLUMN zone text, ADD COLUMN tags jsonb NOT NULL DEFAULT '[]',
                    ADD COLUMN next_action text
                """,
                "CREATE INDEX jobs_tags ON jobs USING gin (tags jsonb_path_ops)",
                """
                CREATE TABLE task_templates (
                    template_id text PRIMARY KEY,
                    user_id text NOT NULL REFERENCES users,
                    name text NOT NULL,
                    description text,
                    spec_sealed text NOT NULL,
                    tags jsonb NOT NULL DEFAULT '[]',
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX task_templates_user ON task_templates (user_id, created_at)",
                """
                ALTER TABLE compute_envs ADD COLUMN zone text, ADD COLUMN tags jsonb NOT NULL DEFAULT '[]',
                    ADD COLUMN next_action text
                """,
                """
                ALTER TABLE compute_nodes ADD COLUMN resource_origin text NOT NULL DEFAULT 'BATCH_CREATED',
                    ADD COLUMN instance_id text
                """,
                """
                CREATE TABLE compute_env_activities (
                    activity_id text PRIMARY KEY,
                    env_id text NOT NULL REFERENCES compute_envs ON DELETE CASCADE,
                    node_id text,
                    activity_type text NOT NULL,
                    cause text,
                    state text NOT NULL,
                    state_reason text,
                    instance_id text,
                    start_time timestamptz NOT NULL DEFAULT now(),
                    end_time timestamptz
                )
                """,
                "CREATE INDEX compute_env_activities_env ON compute_env_activities (env_id, start_time DESC)",
                // The last 2 KiB of each stream of an instance's last attempt, sealed, for DescribeTaskLogs.
                "ALTER TABLE task_instances ADD COLUMN stdout_tail_sealed text, ADD COLUMN stderr_tail_sealed text",
            ]
        ),
        Migration(
            version: 4, name: "per-user job counter for the quota",
            statements: [
                "ALTER TABLE users ADD COLUMN job_count integer NOT NULL DEFAULT 0",
                "UPDATE users SET job_count = (SELECT count(*) FROM jobs WHERE jobs.user_id = users.user_id)",
            ]
        ),
        Migration(
            version: 5, name: "scheduler: dispatch under capacity, attempts, retries, concurrency limits",
            statements: [
                // `dispatched`: an `instance.run` for the current attempt is out (queued or on a node) and its end
                // is not known yet. `failures` count against MaxRetryCount; `not_before` holds a retry back-off.
                """
                ALTER TABLE task_instances ADD COLUMN dispatched boolean NOT NULL DEFAULT false,
                    ADD COLUMN failures integer NOT NULL DEFAULT 0, ADD COLUMN not_before timestamptz,
                    ADD COLUMN dispatched_at timestamptz
                """,
                "UPDATE task_instances SET dispatched = true WHERE state IN ('RUNNABLE', 'STARTING', 'RUNNING')",
                """
                CREATE INDEX task_instances_waiting ON task_instances (job_id, task_name, instance_index)
                    WHERE state = 'RUNNABLE' AND NOT dispatched
                """,
                "CREATE INDEX task_instances_out ON task_instances (job_id, task_name) WHERE dispatched",
                "CREATE INDEX task_instances_node ON task_instances (node_id) WHERE dispatched",
                "ALTER TABLE tasks ADD COLUMN max_concurrent_num integer",
                """
                CREATE INDEX tasks_started ON tasks (job_id)
                    WHERE state IN ('RUNNABLE', 'STARTING', 'RUNNING')
                """,
            ]
        ),
        Migration(
            version: 6, name: "instance state counts kept by a trigger; retry back-offs indexed",
            statements: [
                // How many of a task's instances are in each state, so neither the scheduler nor DescribeJob counts
                // a 100,000-instance task row by row. A statement-level trigger applies each INSERT's and UPDATE's
                // changes, read from its transition tables (O(rows changed)). Instances are deleted only with their
                // task, which takes its counts with it.
                """
                CREATE TABLE task_instance_counts (
                    job_id text NOT NULL,
                    task_name text NOT NULL,
                    state text NOT NULL,
                    count integer NOT NULL,
                    PRIMARY KEY (job_id, task_name, state),
                    FOREIGN KEY (job_id, task_name) REFERENCES tasks ON DELETE CASCADE
                )
                """,
                """
                INSERT INTO task_instance_counts (job_id, task_name, state, count)
                SELECT job_id, task_name, state, count(*) FROM task_instances GROUP BY job_id, task_name, state
                """,
                """
                CREATE FUNCTION count_task_instances() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP = 'INSERT' THEN
                        INSERT INTO task_instance_counts AS c (job_id, task_name, state, count)
                        SELECT job_id, task_name, state, count(*) FROM new_rows GROUP BY job_id, task_name, state
                        ON CONFLICT (job_id, task_name, state) DO UPDATE SET count = c.count + EXCLUDED.count;
                    ELSE
                        INSERT INTO task_instance_counts AS c (job_id, task_name, state, count)
                        SELECT job_id, task_name, state, sum(change) FROM (
                            SELECT job_id, task_name, state, 1 AS change FROM new_rows
                            UNION ALL
                            SELECT job_id, task_name, state, -1 FROM old_rows) changes
                        GROUP BY job_id, task_name, state HAVING sum(change) <> 0
                        ON CONFLICT (job_id, task_name, state) DO UPDATE SET count = c.count + EXCLUDED.count;
                    END IF;
                    RETURN NULL;
                END
                $$
                """,
                """
                CREATE TRIGGER task_instances_counted_on_insert AFTER INSERT ON task_instances
                    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_task_instances()
                """,
                """
                CREATE TRIGGER task_instances_counted_on_update AFTER UPDATE ON task_instances
                    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION count_task_instances()
                """,
                """
                CREATE INDEX task_instances_backoff ON task_instances (job_id, task_name, not_before)
                    WHERE state = 'RUNNABLE' AND NOT dispatched AND not_before IS NOT NULL
                """,
            ]
        ),
        Migration(
            version: 7, name: "anonymous compute environments",
            statements: [
                // `<job id>/<task name>` of the task an anonymous environment was made for; NULL for named ones.
                "ALTER TABLE compute_envs ADD COLUMN anonymous_for text",
                "CREATE UNIQUE INDEX compute_envs_anonymous ON compute_envs (anonymous_for)",
            ]
        ),
        Migration(
            version: 8, name: "nodes removed stay removed: a late heartbeat of their process does not bring them back",
            statements: [
                // The node and the process (pid) whose row was removed; NULL pid: it had not beaten yet.
                """
                CREATE TABLE compute_node_tombstones (
                    node_id text PRIMARY KEY,
                    pid integer,
                    deleted_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX compute_node_tombstones_age ON compute_node_tombstones (deleted_at)",
            ]
        ),
        Migration(
            version: 9, name: "a node is silent only for heartbeats the provisioner has had the chance to record",
            statements: [
                // The provisioner has recorded every heartbeat the broker confirmed before `until` (one row).
                """
                CREATE TABLE heartbeats_recorded (
                    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                    until timestamptz NOT NULL
                )
                """,
                // The instant up to which nodes' silence counts: now, or where the provisioner's recording of
                // heartbeats stands if that is earlier (it is behind, or stopped).
                """
                CREATE FUNCTION heartbeats_recorded_until() RETURNS timestamptz LANGUAGE sql STABLE AS
                $$ SELECT least(now(), coalesce((SELECT until FROM heartbeats_recorded), now())) $$
                """,
            ]
        ),
        Migration(
            version: 10, name: "operators: users who may call the admin actions",
            statements: ["ALTER TABLE users ADD COLUMN operator boolean NOT NULL DEFAULT false"]
        ),
        Migration(
            version: 11, name: "quotas per user; ended jobs found by age for retention",
            statements: [
                // NULL: the gateway's default for everyone.
                """
                ALTER TABLE users ADD COLUMN job_quota integer, ADD COLUMN task_template_quota integer,
                    ADD COLUMN compute_env_quota integer
                """,
                "CREATE INDEX jobs_ended ON jobs (end_time) WHERE end_time IS NOT NULL",
            ]
        ),
        Migration(
            version: 12, name: "started tasks in dispatch order per environment",
            statements: [
                // A task is dispatched in its job's order (priority, then age), kept on the task: the dispatch pass
                // reads an environment's first waiting tasks from an index instead of ordering every started task.
                """
                ALTER TABLE tasks ADD COLUMN job_priority integer NOT NULL DEFAULT 0,
                    ADD COLUMN job_created_at timestamptz NOT NULL DEFAULT now()
                """,
                """
                UPDATE tasks t SET job_priority = j.priority, job_created_at = j.created_at
                FROM jobs j WHERE j.job_id = t.job_id
                """,
                """
                CREATE INDEX tasks_dispatch_order ON tasks (env_id, job_priority DESC, job_created_at, job_id, position)
                    WHERE state IN ('RUNNABLE', 'STARTING', 'RUNNING')
                """,
                // Started tasks not told yet why they wait (or running with nothing waiting).
                """
                CREATE INDEX tasks_unexplained ON tasks (env_id)
                    WHERE state IN ('RUNNABLE', 'STARTING', 'RUNNING') AND state_reason IS NULL
                """,
            ]
        ),
    ]
}

extension Migration {
    /// The schema version this build knows: that of its last migration.
    public static var latest: Int { all.last!.version }
}

extension BatchRelease {
    /// What a service that migrates the database prints with `--version`: the release and its schema version.
    public static var serviceVersion: String { "\(version) (database schema \(Migration.latest))" }
}
