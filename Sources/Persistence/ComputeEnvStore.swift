import BatchCore
import Foundation
import MessageContracts
import PostgresNIO

/// Compute environments, their nodes and their activities. The API's calls are scoped to the environment's owner;
/// the provisioner's calls are not.
public struct ComputeEnvStore: Sendable {
    let database: Database
    let quotas: Quotas

    public init(database: Database, quotas: Quotas = Quotas()) {
        self.database = database
        self.quotas = quotas
    }

    var logger: Logger { database.logger }

    // MARK: The API's calls

    /// Creates a named environment and, in the same transaction, the `env.created` event.
    /// Throws ``StoreRefusal/quota(_:)`` past the user's quota.
    public func create(user: UserID, spec: NamedComputeEnv, zone: String?, driver: String = "process") async throws
        -> EnvID
    {
        let envID = EnvID.generate()
        let specSealed = try database.sealer.seal(try BatchJSON.encode(spec), context: "compute_envs.spec:\(envID)")
        let tags = String(decoding: try BatchJSON.encode(spec.tags ?? []), as: UTF8.self)
        let logger = self.logger
        let quotas = self.quotas
        try await withEvent(
            routingKey: Topology.Event.computeEnvCreated, ComputeEnvCreated(envID: envID), env: envID
        ) { connection in
            let quotas = try await JobStore.lockUser(user, defaults: quotas, on: connection, logger: logger)
            let count = try await JobStore.count(
                "SELECT count(*) FROM compute_envs WHERE user_id = \(user.rawValue) AND anonymous_for IS NULL",
                on: connection, logger: logger)
            if let violation = quotas.check(.computeEnvs, current: count) { throw StoreRefusal.quota(violation) }
            try await connection.query(
                """
                INSERT INTO compute_envs (env_id, user_id, name, description, env_type, driver, desired_node_count,
                    spec_sealed, zone, tags)
                VALUES (\(envID.rawValue), \(user.rawValue), \(spec.envName), \(spec.envDescription),
                    \(spec.envType ?? "MANAGED"), \(driver), \(spec.desiredComputeNodeCount), \(specSealed), \(zone),
                    \(tags)::jsonb)
                """, logger: logger)
            return true
        }
        return envID
    }

    /// Creates the anonymous environment of a task (`Task.ComputeEnv`), without nodes until the task is released
    /// (the scheduler sets its node count then, and back to zero when the task ends). Not counted in the quota.
    public static func createAnonymous(
        job: JobID, task: TaskSpec, spec: AnonymousComputeEnv, user: UserID, zone: String?, sealer: Sealer,
        on connection: PostgresConnection, logger: Logger
    ) async throws -> EnvID {
        let envID = EnvID.generate()
        var named = NamedComputeEnv(envName: "anonymous: \(job)/\(task.taskName)", desiredComputeNodeCount: 0)
        named.envType = spec.envType ?? "MANAGED"
        named.envData = spec.envData
        named.mountDataDisks = spec.mountDataDisks
        named.authentications = task.authentications
        let sealed = try sealer.seal(try BatchJSON.encode(named), context: "compute_envs.spec:\(envID)")
        try await connection.query(
            """
            INSERT INTO compute_envs (env_id, user_id, name, env_type, driver, desired_node_count, spec_sealed, zone,
                tags, anonymous_for)
            VALUES (\(envID.rawValue), \(user.rawValue), \(named.envName), \(named.envType ?? "MANAGED"), 'process', 0,
                \(sealed), \(zone), '[]'::jsonb, \("\(job)/\(task.taskName)"))
            """, logger: logger)
        return envID
    }

    /// The environment with its nodes, if it exists and belongs to `user`.
    public func view(_ envID: EnvID, user: UserID) async throws -> ComputeEnvView? {
        try await list(
            user: user, envIDs: [envID], filters: FilterSet([], supported: []), paging: .all, includeNodes: true
        )
        .envs.first
    }

    /// `DescribeComputeEnvs`: the user's environments by ids and filters (`zone`, `env-id`, `env-name`,
    /// `env-state`, `resource-type`, `next-action`, `tag-key`, `tag-value`, `tag:<key>`).
    public func list(
        user: UserID, envIDs: [EnvID]?, filters: FilterSet, paging: Paging, includeNodes: Bool = false
    ) async throws -> (total: Int, envs: [ComputeEnvView]) {
        var query = SQLBuilder("FROM compute_envs e WHERE e.user_id = ")
        query.append(query.bind(user.rawValue))
        // Anonymous environments are shown when asked for by id, never listed.
        if let envIDs {
            query.append(" AND e.env_id = ANY(\(query.bind(envIDs.map(\.rawValue))))")
        } else {
            query.append(" AND e.anonymous_for IS NULL")
        }
        for (column, name) in [
            ("e.env_id", "env-id"), ("e.name", "env-name"), ("e.zone", "zone"), ("e.next_action", "next-action"),
        ] {
            if let values = filters[name] { query.append(" AND \(column) = ANY(\(query.bind(values)))") }
        }
        if let types = filters["resource-type"], !types.contains("CVM") { query.append(" AND false") }
        JobStore.appendTagFilters(filters, column: "e.tags", to: &query)
        let total = try await JobStore.count(query.countQuery, client: database.client, logger: logger)
        query.append(
            " ORDER BY e.created_at DESC, e.env_id LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))"
        )
        query.prepend(
            """
            SELECT e.env_id, e.name, e.description, e.zone, e.created_at, e.env_type, e.desired_node_count,
                e.next_action, e.tags::text
            """)
        var rows: [(EnvID, String, String?, String?, Date, String, Int, String?, String)] = []
        for try await (id, name, description, zone, created, type, desired, next, tags) in try await database.client
            .query(query.query, logger: logger).decode(
                (String, String, String?, String?, Date, String, Int, String?, String).self)
        {
            rows.append((EnvID(rawValue: id), name, description, zone, created, type, desired, next, tags))
        }
        let nodes = try await nodes(of: rows.map(\.0))
        let envs = try rows.map { envID, name, description, zone, created, type, desired, next, tags in
            ComputeEnvView(
                envId: envID, envName: name, envDescription: description, zone: zone, createTime: created,
                envType: type, desiredComputeNodeCount: desired, nextAction: next,
                tags: try BatchJSON.decode([Tag].self, from: Array(tags.utf8)), nodes: nodes[envID] ?? [],
                includeNodes: includeNodes)
        }
        return (total, envs)
    }

    /// `DescribeComputeEnvCreateInfo(s)`: environments as created (with later changes), secrets masked.
    public func createInfos(user: UserID, envIDs: [EnvID]?, filters: FilterSet, paging: Paging) async throws
        -> (total: Int, envs: [(EnvID, NamedComputeEnv)])
    {
        var query = SQLBuilder("FROM compute_envs e WHERE e.user_id = ")
        query.append(query.bind(user.rawValue))
        // Anonymous environments are shown when asked for by id, never listed.
        if let envIDs {
            query.append(" AND e.env_id = ANY(\(query.bind(envIDs.map(\.rawValue))))")
        } else {
            query.append(" AND e.anonymous_for IS NULL")
        }
        for (column, name) in [("e.env_id", "env-id"), ("e.name", "env-name"), ("e.zone", "zone")] {
            if let values = filters[name] { query.append(" AND \(column) = ANY(\(query.bind(values)))") }
        }
        let total = try await JobStore.count(query.countQuery, client: database.client, logger: logger)
        query.append(
            " ORDER BY e.created_at DESC, e.env_id LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))"
        )
        query.prepend("SELECT e.env_id, e.spec_sealed, e.name, e.description, e.desired_node_count")
        var result: [(EnvID, NamedComputeEnv)] = []
        for try await (id, sealed, name, description, desired) in try await database.client.query(
            query.query, logger: logger
        ).decode((String, String, String, String?, Int).self) {
            var spec = try BatchJSON.decode(
                NamedComputeEnv.self, from: try database.sealer.openBytes(sealed, context: "compute_envs.spec:\(id)"))
            spec.envName = name
            spec.envDescription = description
            spec.desiredComputeNodeCount = desired
            result.append((EnvID(rawValue: id), spec.redacted))
        }
        return (total, result)
    }

    /// `ModifyComputeEnv`: a new desired node count, name, description or instance types; the provisioner
    /// reconciles.
    public func modify(
        _ envID: EnvID, user: UserID, desired: Int?, name: String?, description: String?, instanceTypes: [String]?
    ) async throws {
        let logger = self.logger
        let sealer = database.sealer
        try await withEvent(routingKey: Topology.Event.computeEnvModified, ComputeEnvModified(envID: envID), env: envID)
        {
            connection in
            let rows = try await connection.query(
                """
                SELECT spec_sealed, next_action FROM compute_envs
                WHERE env_id = \(envID.rawValue) AND user_id = \(user.rawValue) FOR UPDATE
                """, logger: logger)
            guard let (sealed, next) = try await rows.decode((String, String?).self).first(where: { _ in true }) else {
                throw StoreRefusal.computeEnvNotFound(envID, field: "EnvId")
            }
            guard next == nil else {
                throw StoreRefusal.computeEnvDeleting(envID)
            }
            var spec = try BatchJSON.decode(
                NamedComputeEnv.self, from: try sealer.openBytes(sealed, context: "compute_envs.spec:\(envID)"))
            spec.desiredComputeNodeCount = desired ?? spec.desiredComputeNodeCount
            spec.envName = name ?? spec.envName
            spec.envDescription = description ?? spec.envDescription
            if let instanceTypes {
                var data = spec.envData ?? EnvData()
                data.instanceTypes = instanceTypes
                data.instanceType = nil
                spec.envData = data
            }
            let problems = spec.validate()
            guard problems.isEmpty else { throw StoreRefusal.invalid(problems) }
            try await connection.query(
                """
                UPDATE compute_envs SET desired_node_count = \(spec.desiredComputeNodeCount), name = \(spec.envName),
                    description = \(spec.envDescription),
                    spec_sealed = \(try sealer.seal(try BatchJSON.encode(spec), context: "compute_envs.spec:\(envID)"))
                WHERE env_id = \(envID.rawValue)
                """, logger: logger)
            return true
        }
    }

    /// `DeleteComputeEnv`: refused while unfinished jobs use it; otherwise marked `DELETING` and handed to the
    /// provisioner, which removes its nodes and then the environment.
    public func requestDeletion(_ envID: EnvID, user: UserID) async throws {
        let logger = self.logger
        try await withEvent(
            routingKey: Topology.Event.computeEnvDeletionRequested, ComputeEnvDeletionRequested(envID: envID),
            env: envID
        ) { connection in
            let rows = try await connection.query(
                """
                SELECT next_action FROM compute_envs
                WHERE env_id = \(envID.rawValue) AND user_id = \(user.rawValue) FOR UPDATE
                """, logger: logger)
            guard let next = try await rows.decode(String?.self).first(where: { _ in true }) else {
                throw StoreRefusal.computeEnvNotFound(envID, field: "EnvId")
            }
            guard next == nil else { return false }
            let busy = try await JobStore.count(
                """
                SELECT count(*) FROM tasks t JOIN jobs j USING (job_id)
                WHERE t.env_id = \(envID.rawValue) AND j.state NOT IN \(unescaped: [ExecutionState.succeed, .failed, .failedInterrupted].sql)
                """, on: connection, logger: logger)
            guard busy == 0 else {
                throw StoreRefusal.computeEnvInUse(envID, tasks: busy)
            }
            try await connection.query(
                "UPDATE compute_envs SET next_action = \(unescaped: ComputeEnvNextAction.deleting.sql) WHERE env_id = \(envID.rawValue)",
                logger: logger)
            return true
        }
    }

    /// `DescribeComputeEnvActivities`, newest first; filter `compute-node-id`.
    public func activities(_ envID: EnvID, user: UserID, nodeIDs: [String]?, paging: Paging) async throws
        -> (total: Int, activities: [ActivityView])?
    {
        guard try await owns(envID, user: user) else { return nil }
        var query = SQLBuilder("FROM compute_env_activities WHERE env_id = ")
        query.append(query.bind(envID.rawValue))
        if let nodeIDs { query.append(" AND node_id = ANY(\(query.bind(nodeIDs)))") }
        let total = try await JobStore.count(query.countQuery, client: database.client, logger: logger)
        query.append(
            " ORDER BY start_time DESC, activity_id LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))"
        )
        query.prepend(
            "SELECT activity_id, node_id, activity_type, cause, state, state_reason, start_time, end_time, instance_id")
        var activities: [ActivityView] = []
        for try await (id, node, type, cause, state, reason, start, end, instance) in try await database.client.query(
            query.query, logger: logger
        ).decode((String, String?, String, String?, String, String?, Date, Date?, String?).self) {
            activities.append(
                ActivityView(
                    activityId: id, computeNodeId: node, computeNodeActivityType: type, envId: envID, cause: cause,
                    activityState: state, stateReason: reason, startTime: start, endTime: end, instanceId: instance))
        }
        return (total, activities)
    }

    /// `TerminateComputeNode(s)`: nodes of the user's environment in a state that allows it (`CREATED`,
    /// `CREATION_FAILED`, `RUNNING`, `ABNORMAL`) are marked `DELETING` and handed to the provisioner.
    public func requestNodeTermination(_ envID: EnvID, user: UserID, nodeIDs: [NodeID]) async throws {
        let logger = self.logger
        try await withEvent(
            routingKey: Topology.Event.nodeTerminationRequested,
            NodeTerminationRequested(envID: envID, nodeIDs: nodeIDs), env: envID
        ) { connection in
            guard try await owns(envID, user: user, on: connection) else {
                throw StoreRefusal.computeEnvNotFound(envID, field: "EnvId")
            }
            var states: [String: String] = [:]
            for try await (id, state) in try await connection.query(
                """
                SELECT node_id, state FROM compute_nodes
                WHERE env_id = \(envID.rawValue) AND node_id = ANY(\(nodeIDs.map(\.rawValue))) FOR UPDATE
                """, logger: logger
            ).decode((String, String).self) {
                states[id] = state
            }
            for node in nodeIDs {
                guard let state = states[node.rawValue] else {
                    throw StoreRefusal.computeNodeNotFound(node, env: envID)
                }
                if state == ComputeNodeState.deleting.rawValue {
                    throw StoreRefusal.computeNodeDeleting(node)
                }
                let terminable: [ComputeNodeState] = [.created, .creationFailed, .running, .abnormal]
                guard terminable.map(\.rawValue).contains(state) else {
                    throw StoreRefusal.computeNodeNotTerminable(node, state: state)
                }
            }
            try await connection.query(
                """
                UPDATE compute_nodes SET state = \(unescaped: ComputeNodeState.deleting.sql), updated_at = now()
                WHERE node_id = ANY(\(nodeIDs.map(\.rawValue)))
                """, logger: logger)
            // The environment keeps the nodes it has left: it does not make new ones in their place.
            try await connection.query(
                """
                UPDATE compute_envs SET desired_node_count = greatest(0, desired_node_count - (
                    SELECT count(*) FROM compute_nodes WHERE node_id = ANY(\(nodeIDs.map(\.rawValue)))
                        AND resource_origin = 'BATCH_CREATED'))
                WHERE env_id = \(envID.rawValue)
                """, logger: logger)
            return true
        }
    }

    /// `AttachInstances`: machines that run an executor of their own join the environment as `USER_ATTACHED`
    /// nodes; each is `CREATED` until its executor reports.
    public func attach(_ envID: EnvID, user: UserID, instanceIDs: [String]) async throws {
        let logger = self.logger
        try await database.transaction { connection in
            guard try await owns(envID, user: user, on: connection) else {
                throw StoreRefusal.computeEnvNotFound(envID, field: "EnvId")
            }
            let taken = try await connection.query(
                "SELECT instance_id FROM compute_nodes WHERE instance_id = ANY(\(instanceIDs))", logger: logger
            ).decode(String.self).first { _ in true }
            if let taken {
                throw StoreRefusal.instanceAttached(taken)
            }
            let nodes = instanceIDs.map { _ in NodeID.generate().rawValue }
            try await connection.query(
                """
                INSERT INTO compute_nodes (node_id, env_id, state, slots, free_slots, resource_origin, instance_id)
                SELECT node, \(envID.rawValue), \(unescaped: ComputeNodeState.created.sql), 0, 0, 'USER_ATTACHED', instance
                FROM unnest(\(nodes)::text[], \(instanceIDs)::text[]) AS t(node, instance)
                """, logger: logger)
            try await connection.query(
                """
                INSERT INTO compute_env_activities (activity_id, env_id, node_id, activity_type, cause, state, instance_id,
                    end_time)
                SELECT 'act-' || substr(md5(random()::text), 1, 8), \(envID.rawValue), node, 'create',
                    'instance attached by the user', \(unescaped: ExecutionState.succeed.sql), instance, now()
                FROM unnest(\(nodes)::text[], \(instanceIDs)::text[]) AS t(node, instance)
                """, logger: logger)
        }
    }

    /// `DetachInstances`: only user-attached nodes; they leave the environment.
    public func detach(_ envID: EnvID, user: UserID, instanceIDs: [String]) async throws {
        let logger = self.logger
        try await withEvent(routingKey: nil, ComputeEnvModified(envID: envID), env: envID) { connection in
            guard try await owns(envID, user: user, on: connection) else {
                throw StoreRefusal.computeEnvNotFound(envID, field: "EnvId")
            }
            var origins: [String: String] = [:]
            for try await (instance, origin) in try await connection.query(
                """
                SELECT instance_id, resource_origin FROM compute_nodes
                WHERE env_id = \(envID.rawValue) AND instance_id = ANY(\(instanceIDs))
                """, logger: logger
            ).decode((String, String).self) {
                origins[instance] = origin
            }
            for instance in instanceIDs {
                guard let origin = origins[instance] else {
                    throw StoreRefusal.instanceNotInEnv(instance, env: envID)
                }
                guard origin == "USER_ATTACHED" else {
                    throw StoreRefusal.instanceNotAttached(instance)
                }
            }
            // Nodes not running yet just go; running ones drain (finish their instances) and go when they stop.
            try await connection.query(
                """
                DELETE FROM compute_nodes WHERE env_id = \(envID.rawValue) AND instance_id = ANY(\(instanceIDs))
                    AND state = \(unescaped: ComputeNodeState.created.sql)
                """, logger: logger)
            var draining: [NodeID] = []
            for try await node in try await connection.query(
                """
                UPDATE compute_nodes SET state = \(unescaped: ComputeNodeState.deleting.sql), updated_at = now()
                WHERE env_id = \(envID.rawValue) AND instance_id = ANY(\(instanceIDs)) RETURNING node_id
                """, logger: logger
            ).decode(String.self) {
                draining.append(NodeID(rawValue: node))
            }
            guard !draining.isEmpty else { return false }
            try await Outbox.enqueue(
                [
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.nodeTerminationRequested,
                        payload: NodeTerminationRequested(envID: envID, nodeIDs: draining, drain: true),
                        correlationID: envID.rawValue)
                ], on: connection, sealer: database.sealer, logger: logger)
            return false
        }
    }

    // MARK: The provisioner's calls

    /// Which of `envIDs` exist and belong to `user`.
    public func owned(_ envIDs: Set<EnvID>, user: UserID, on connection: PostgresConnection) async throws -> Set<EnvID>
    {
        let rows = try await connection.query(
            """
            SELECT env_id FROM compute_envs WHERE env_id = ANY(\(envIDs.map(\.rawValue))) AND user_id = \(user.rawValue)
                AND next_action IS NULL
            """, logger: logger)
        var result: Set<EnvID> = []
        for try await id in rows.decode(String.self) { result.insert(EnvID(rawValue: id)) }
        return result
    }

    /// An environment as the provisioner sees it.
    public struct Provisioned: Sendable {
        public var envID: EnvID
        public var desired: Int
        public var driver: String
        /// `DeleteComputeEnv` was called: its nodes go, then it does.
        public var deleting: Bool
        /// Its nodes run instances in a sandbox.
        public var sandbox: Bool
        /// Its instances may open connections out of the node.
        public var egress: Bool
        /// Each instance's memory limit in MiB (nil: the node's default).
        public var instanceMemoryLimit: Int?
    }

    /// Every environment, for the provisioner.
    public func all() async throws -> [Provisioned] {
        try await provisioned(
            "SELECT env_id, desired_node_count, driver, next_action, spec_sealed FROM compute_envs ORDER BY created_at")
    }

    /// One environment, for the provisioner.
    public func find(_ envID: EnvID) async throws -> Provisioned? {
        try await provisioned(
            """
            SELECT env_id, desired_node_count, driver, next_action, spec_sealed FROM compute_envs
            WHERE env_id = \(envID.rawValue)
            """
        ).first
    }

    private func provisioned(_ query: PostgresQuery) async throws -> [Provisioned] {
        let rows = try await database.client.query(query, logger: logger)
        var result: [Provisioned] = []
        for try await (id, desired, driver, next, sealed) in rows.decode((String, Int, String, String?, String).self) {
            let spec = try BatchJSON.decode(
                NamedComputeEnv.self, from: try database.sealer.openBytes(sealed, context: "compute_envs.spec:\(id)"))
            result.append(
                Provisioned(
                    envID: EnvID(rawValue: id), desired: desired, driver: driver,
                    deleting: next == ComputeNodeState.deleting.rawValue,
                    sandbox: spec.sandbox ?? true, egress: spec.egress ?? false,
                    instanceMemoryLimit: spec.instanceMemoryLimit))
        }
        return result
    }

    /// The nodes of `env` that have not been heard from for `silentAfter` and are not being deleted: for the
    /// provisioner to mark `ABNORMAL` and replace.
    public func silentNodes(of env: EnvID, silentAfter: Duration) async throws -> [NodeID] {
        let rows = try await database.client.query(
            """
            SELECT node_id FROM compute_nodes
            WHERE env_id = \(env.rawValue) AND state IN \(unescaped: [ComputeNodeState.creating, .created, .running].sql)
                AND coalesce(last_heartbeat, created_at)
                    < heartbeats_recorded_until() - \(Int(silentAfter.components.seconds)) * interval '1 s'
            """, logger: logger)
        var nodes: [NodeID] = []
        for try await id in rows.decode(String.self) { nodes.append(NodeID(rawValue: id)) }
        return nodes
    }

    /// Removes an environment whose nodes are gone.
    public func deleteEnvironment(_ envID: EnvID) async throws {
        try await database.client.query("DELETE FROM compute_envs WHERE env_id = \(envID.rawValue)", logger: logger)
    }

    /// The nodes of each of `envIDs`, in one query.
    public func nodes(of envIDs: [EnvID]) async throws -> [EnvID: [ComputeNodeView]] {
        guard !envIDs.isEmpty else { return [:] }
        let rows = try await database.client.query(
            """
            SELECT env_id, node_id, instance_id, state, slots, free_slots, created_at, host, resource_origin
            FROM compute_nodes WHERE env_id = ANY(\(envIDs.map(\.rawValue))) ORDER BY created_at, node_id
            """, logger: logger)
        var nodes: [EnvID: [ComputeNodeView]] = [:]
        for try await (env, id, instance, state, slots, free, created, host, origin) in rows.decode(
            (String, String, String?, String, Int, Int, Date, String?, String).self)
        {
            nodes[EnvID(rawValue: env), default: []].append(
                ComputeNodeView(
                    computeNodeId: NodeID(rawValue: id), computeNodeInstanceId: instance ?? id, computeNodeState: state,
                    cpu: slots, mem: slots * 2, resourceCreatedTime: created, taskInstanceNumAvailable: free,
                    privateIpAddresses: host.map { [$0] } ?? [], resourceOrigin: origin))
        }
        return nodes
    }

    /// Marks the nodes this installation's `process` driver made as going (`DELETING`): they stop with the
    /// provisioner that started them (they watch their parent), handing their instances back first. A row goes when
    /// its node reports that it stopped, or once it has been silent (``goneNodes(of:silentAfter:)``); until then the
    /// scheduler does not count the node lost, so its instances run again only once they stopped here. Attached
    /// nodes stay as they are.
    public func forgetProcessNodes() async throws {
        try await database.client.query(
            """
            UPDATE compute_nodes SET state = \(unescaped: ComputeNodeState.deleting.sql), updated_at = now() WHERE resource_origin = 'BATCH_CREATED'
                AND env_id IN (SELECT env_id FROM compute_envs WHERE driver = 'process')
            """, logger: logger)
    }

    /// The nodes of `env` being deleted that have not been heard from for `silentAfter`: gone without a word, for
    /// the provisioner to remove unless its driver still runs them.
    public func goneNodes(of env: EnvID, silentAfter: Duration) async throws -> [NodeID] {
        let rows = try await database.client.query(
            """
            SELECT node_id FROM compute_nodes
            WHERE env_id = \(env.rawValue) AND state = \(unescaped: ComputeNodeState.deleting.sql)
                AND coalesce(last_heartbeat, created_at)
                    < heartbeats_recorded_until() - \(Int(silentAfter.components.seconds)) * interval '1 s'
            """, logger: logger)
        var nodes: [NodeID] = []
        for try await id in rows.decode(String.self) { nodes.append(NodeID(rawValue: id)) }
        return nodes
    }

    /// Records a node the provisioner is creating, and its `create` activity.
    public func nodeCreating(_ nodeID: NodeID, env: EnvID, slots: Int, host: String, cause: String) async throws {
        let logger = self.logger
        try await database.transaction { connection in
            try await connection.query(
                """
                INSERT INTO compute_nodes (node_id, env_id, state, slots, free_slots, host)
                VALUES (\(nodeID.rawValue), \(env.rawValue), \(unescaped: ComputeNodeState.creating.sql), \(slots), 0, \(host))
                ON CONFLICT (node_id) DO NOTHING
                """, logger: logger)
            try await Self.recordActivity(
                env: env, node: nodeID, type: "create", cause: cause, state: "PROCESSING", on: connection,
                logger: logger)
        }
    }

    /// Ends a node's open activity of `type` with `state` (`SUCCEED` or `FAILED`).
    public func finishActivity(node: NodeID, type: String, state: String, reason: String? = nil) async throws {
        try await database.client.query(
            """
            UPDATE compute_env_activities SET state = \(state), state_reason = \(reason), end_time = now()
            WHERE node_id = \(node.rawValue) AND activity_type = \(type) AND end_time IS NULL
            """, logger: logger)
    }

    /// Records many heartbeats in two statements (the latest of each node counts): 2,000 nodes beating every few
    /// seconds cost a few statements a second, not thousands. A beat of a process whose node was removed
    /// (``deleteNode(_:in:cause:)``) is dropped; a new process under the same node id joins again.
    ///
    /// With `recordedUntil` (the latest ``HeartbeatMark`` taken with these beats), it also records that every
    /// heartbeat confirmed before then is in: nodes' silence counts up to there (`heartbeats_recorded_until()`).
    public func heartbeats(_ beats: [NodeHeartbeat], recordedUntil mark: Date? = nil) async throws {
        var latest: [NodeID: NodeHeartbeat] = [:]
        for beat in beats where beat.at >= latest[beat.nodeID]?.at ?? .distantPast { latest[beat.nodeID] = beat }
        let logger = self.logger
        guard !latest.isEmpty else {
            if let mark { try await database.client.query(Self.recordingMark(mark), logger: logger) }
            return
        }
        let rows = latest.values.sorted { $0.nodeID.rawValue < $1.nodeID.rawValue }
        try await database.transaction { connection in
            let attached = rows.filter { $0.attached == true && $0.instanceID != nil }
            if !attached.isEmpty {
                // A machine attached by `AttachInstances` before its executor started: its row takes the node's id.
                try await connection.query(
                    """
                    UPDATE compute_nodes n SET node_id = b.node
                    FROM unnest(\(attached.map(\.nodeID.rawValue))::text[], \(attached.map(\.envID.rawValue))::text[],
                        \(attached.map { $0.instanceID ?? "" })::text[]) AS b(node, env, instance)
                    WHERE n.env_id = b.env AND n.instance_id = b.instance AND n.node_id <> b.node
                        AND n.resource_origin = 'USER_ATTACHED'
                        AND NOT EXISTS (SELECT 1 FROM compute_nodes m WHERE m.node_id = b.node)
                    """, logger: logger)
            }
            try await connection.query(
                """
                INSERT INTO compute_nodes (node_id, env_id, state, slots, free_slots, host, pid, last_heartbeat,
                    instance_id, resource_origin)
                SELECT node, env, \(unescaped: ComputeNodeLifecycle.joinedState.sql), slots, free, host, pid, at,
                    NULLIF(instance, ''),
                    CASE WHEN attached THEN 'USER_ATTACHED' ELSE 'BATCH_CREATED' END
                FROM unnest(\(rows.map(\.nodeID.rawValue))::text[], \(rows.map(\.envID.rawValue))::text[],
                    \(rows.map(\.slots))::integer[], \(rows.map(\.freeSlots))::integer[], \(rows.map(\.host))::text[],
                    \(rows.map { Int($0.pid) })::integer[], \(rows.map(\.at))::timestamptz[],
                    \(rows.map { $0.instanceID ?? "" })::text[], \(rows.map { $0.attached ?? false })::boolean[])
                    AS b(node, env, slots, free, host, pid, at, instance, attached)
                WHERE EXISTS (SELECT 1 FROM compute_envs e WHERE e.env_id = b.env)
                    AND NOT EXISTS (
                        SELECT 1 FROM compute_node_tombstones t
                        WHERE t.node_id = b.node AND (t.pid IS NULL OR t.pid = b.pid))
                ON CONFLICT (node_id) DO UPDATE SET
                    state = \(unescaped: Self.heartbeatTransitions),
                    slots = EXCLUDED.slots, free_slots = EXCLUDED.free_slots, pid = EXCLUDED.pid,
                    last_heartbeat = greatest(compute_nodes.last_heartbeat, EXCLUDED.last_heartbeat),
                    updated_at = now()
                WHERE compute_nodes.env_id = EXCLUDED.env_id
                """, logger: logger)
            try await connection.query(
                """
                UPDATE compute_env_activities SET state = \(unescaped: ExecutionState.succeed.sql), end_time = now()
                WHERE node_id = ANY(\(rows.map(\.nodeID.rawValue))) AND activity_type = 'create' AND end_time IS NULL
                """, logger: logger)
            if let mark { try await connection.query(Self.recordingMark(mark), logger: logger) }
        }
    }

    /// Moves `heartbeats_recorded` forward to `mark` (never back: marks of a batch redelivered come again).
    private static func recordingMark(_ mark: Date) -> PostgresQuery {
        """
        INSERT INTO heartbeats_recorded (until) VALUES (\(mark))
        ON CONFLICT (singleton) DO UPDATE SET until = greatest(heartbeats_recorded.until, EXCLUDED.until)
        """
    }

    /// Sets a node's state (`ABNORMAL`, `CREATION_FAILED`, …).
    public func setNodeState(_ nodeID: NodeID, _ state: ComputeNodeState) async throws {
        try await database.client.query(
            "UPDATE compute_nodes SET state = \(state.rawValue), updated_at = now() WHERE node_id = \(nodeID.rawValue)",
            logger: logger)
    }

    /// What a heartbeat does to a node's state, as ``ComputeNodeLifecycle`` decides it, for many rows at once:
    /// `CASE compute_nodes.state WHEN 'CREATING' THEN 'RUNNING' … ELSE compute_nodes.state END`.
    static let heartbeatTransitions: String = {
        let cases = ComputeNodeLifecycle.heartbeatTargets.map { "WHEN \($0.from.sql) THEN \($0.to.sql)" }
        return "CASE compute_nodes.state \(cases.joined(separator: " ")) ELSE compute_nodes.state END"
    }()

    /// Marks a node `DELETING` and opens its `destroy` activity with `cause` (it ends when the node is gone).
    public func nodeDeleting(_ nodeID: NodeID, cause: String) async throws {
        let logger = self.logger
        try await database.transaction { connection in
            let env = try await connection.query(
                """
                UPDATE compute_nodes SET state = \(unescaped: ComputeNodeState.deleting.sql), updated_at = now() WHERE node_id = \(nodeID.rawValue)
                RETURNING env_id
                """, logger: logger
            ).decode(String.self).first { _ in true }
            guard let env else { return }
            let open = try await connection.query(
                """
                SELECT 1 FROM compute_env_activities
                WHERE node_id = \(nodeID.rawValue) AND activity_type = 'destroy' AND end_time IS NULL
                """, logger: logger
            ).decode(Int.self).first { _ in true }
            guard open == nil else { return }
            try await Self.recordActivity(
                env: EnvID(rawValue: env), node: nodeID, type: "destroy", cause: cause, state: "PROCESSING",
                on: connection, logger: logger)
        }
    }

    /// Removes a node that is gone and tells the scheduler (``NodeGone``, through the outbox). Its open `destroy`
    /// activity succeeds; without one (the node ended on its own), one is recorded with `cause`. An unfinished
    /// `create` fails with `cause`. With `only`, a node of another environment stays.
    public func deleteNode(_ nodeID: NodeID, in only: EnvID? = nil, cause: String) async throws {
        let logger = self.logger
        try await database.transaction { connection in
            // The row goes, and a tombstone stays for a day: the node's last heartbeats may still be queued behind
            // its end, and must not bring it back as a node that runs.
            let env = try await connection.query(
                """
                WITH gone AS (
                    DELETE FROM compute_nodes WHERE node_id = \(nodeID.rawValue)
                        AND env_id = coalesce(\(only?.rawValue)::text, env_id)
                    RETURNING env_id, pid),
                tombstone AS (
                    INSERT INTO compute_node_tombstones (node_id, pid) SELECT \(nodeID.rawValue), pid FROM gone
                    ON CONFLICT (node_id) DO UPDATE SET pid = EXCLUDED.pid, deleted_at = now()
                )
                SELECT env_id FROM gone
                """, logger: logger
            ).decode(String.self).first { _ in true }
            guard let env else { return }
            try await connection.query(
                "DELETE FROM compute_node_tombstones WHERE deleted_at < now() - interval '1 day'", logger: logger)
            // The scheduler runs again what the node had not finished once it hears this, behind all it reported.
            try await Outbox.enqueue(
                [
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.nodeGone,
                        payload: NodeGone(nodeID: nodeID, envID: EnvID(rawValue: env), cause: cause),
                        correlationID: env)
                ], on: connection, sealer: database.sealer, logger: logger)
            try await connection.query(
                """
                UPDATE compute_env_activities SET state = \(unescaped: ExecutionState.failed.sql), state_reason = \(cause), end_time = now()
                WHERE node_id = \(nodeID.rawValue) AND activity_type = 'create' AND end_time IS NULL
                """, logger: logger)
            let closed = try await connection.query(
                """
                UPDATE compute_env_activities SET state = \(unescaped: ExecutionState.succeed.sql), end_time = now()
                WHERE node_id = \(nodeID.rawValue) AND activity_type = 'destroy' AND end_time IS NULL
                RETURNING 1
                """, logger: logger
            ).decode(Int.self).first { _ in true }
            guard closed == nil else { return }
            try await Self.recordActivity(
                env: EnvID(rawValue: env), node: nodeID, type: "destroy", cause: cause,
                state: ExecutionState.succeed.rawValue,
                on: connection, logger: logger)
        }
    }

    // MARK: Helpers

    static func recordActivity(
        env: EnvID, node: NodeID, type: String, cause: String, state: String, on connection: PostgresConnection,
        logger: Logger
    ) async throws {
        let id = "act-" + String(UUID().uuidString.lowercased().prefix(8))
        try await connection.query(
            """
            INSERT INTO compute_env_activities (activity_id, env_id, node_id, activity_type, cause, state, end_time)
            VALUES (\(id), \(env.rawValue), \(node.rawValue), \(type), \(cause), \(state),
                CASE WHEN \(state) = 'PROCESSING' THEN NULL ELSE now() END)
            """, logger: logger)
    }

    private func owns(_ envID: EnvID, user: UserID) async throws -> Bool {
        try await database.client.query(
            "SELECT 1 FROM compute_envs WHERE env_id = \(envID.rawValue) AND user_id = \(user.rawValue)",
            logger: logger
        ).decode(Int.self).first { _ in true } != nil
    }

    private func owns(_ envID: EnvID, user: UserID, on connection: PostgresConnection) async throws -> Bool {
        try await connection.query(
            "SELECT 1 FROM compute_envs WHERE env_id = \(envID.rawValue) AND user_id = \(user.rawValue) FOR UPDATE",
            logger: logger
        ).decode(Int.self).first { _ in true } != nil
    }

    /// Runs `body` in a transaction and, when it returns true and `routingKey` is set, enqueues `payload` in it.
    private func withEvent<Payload: MessageContract>(
        routingKey: String?, _ payload: Payload, env: EnvID, _ body: (PostgresConnection) async throws -> Bool
    ) async throws {
        let logger = self.logger
        let sealer = database.sealer
        try await database.transaction { connection in
            guard try await body(connection), let routingKey else { return }
            try await Outbox.enqueue(
                [
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: routingKey, payload: payload,
                        correlationID: env.rawValue)
                ], on: connection, sealer: sealer, logger: logger)
        }
    }
}

extension Paging {
    /// Everything (for one-item lookups).
    static let all = try! Paging(offset: 0, limit: 10_000, defaultLimit: 10_000, maximum: 10_000)
}
