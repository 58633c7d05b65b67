import BatchCore
import Foundation
import Messaging
import PostgresNIO

/// Compute environments and their nodes, scoped to their owner.
public struct ComputeEnvStore: Sendable {
    let database: Database
    let quotas: Quotas

    public init(database: Database, quotas: Quotas = Quotas()) {
        self.database = database
        self.quotas = quotas
    }

    /// Creates a named environment and, in the same transaction, the `env.created` event.
    /// Throws ``APIError`` `LimitExceeded.ComputeEnvQuota` past the user's quota.
    public func create(user: UserID, spec: NamedComputeEnv, driver: String = "process") async throws -> EnvID {
        let envID = EnvID.generate()
        let specSealed = try database.sealer.seal(try BatchJSON.encode(spec), context: "compute_envs.spec:\(envID)")
        let logger = database.logger
        let sealer = database.sealer
        try await database.transaction { connection in
            try await connection.query(
                "SELECT 1 FROM users WHERE user_id = \(user.rawValue) FOR UPDATE", logger: logger)
            let count =
                try await connection.query(
                    "SELECT count(*) FROM compute_envs WHERE user_id = \(user.rawValue)", logger: logger
                ).decode(Int.self).first { _ in true } ?? 0
            if let violation = quotas.check(.computeEnvs, current: count) { throw violation.apiError }
            try await connection.query(
                """
                INSERT INTO compute_envs (env_id, user_id, name, description, env_type, driver, desired_node_count,
                    spec_sealed)
                VALUES (\(envID.rawValue), \(user.rawValue), \(spec.envName), \(spec.envDescription),
                    \(spec.envType ?? "MANAGED"), \(driver), \(spec.desiredComputeNodeCount), \(specSealed))
                """, logger: logger)
            try await Outbox.enqueue(
                [
                    try OutgoingMessage(
                        exchange: Topology.eventsExchange, routingKey: Topology.Event.computeEnvCreated,
                        payload: ComputeEnvCreated(envID: envID), correlationID: envID.rawValue)
                ], on: connection, sealer: sealer, logger: logger)
        }
        return envID
    }

    /// The environment with its nodes, if it exists and belongs to `user`.
    public func view(_ envID: EnvID, user: UserID) async throws -> ComputeEnvView? {
        let rows = try await database.client.query(
            """
            SELECT name, description, env_type, desired_node_count, created_at FROM compute_envs
            WHERE env_id = \(envID.rawValue) AND user_id = \(user.rawValue)
            """, logger: database.logger)
        guard
            let (name, description, type, desired, created) = try await rows.decode(
                (String, String?, String, Int, Date).self
            ).first(where: { _ in true })
        else { return nil }
        return ComputeEnvView(
            envId: envID, envName: name, envDescription: description, envType: type,
            desiredComputeNodeCount: desired, createTime: created, computeNodeSet: try await nodes(of: envID))
    }

    /// Which of `envIDs` exist and belong to `user`.
    public func owned(_ envIDs: Set<EnvID>, user: UserID, on connection: PostgresConnection) async throws -> Set<EnvID>
    {
        let rows = try await connection.query(
            """
            SELECT env_id FROM compute_envs WHERE env_id = ANY(\(envIDs.map(\.rawValue))) AND user_id = \(user.rawValue)
            """, logger: database.logger)
        var result: Set<EnvID> = []
        for try await id in rows.decode(String.self) { result.insert(EnvID(rawValue: id)) }
        return result
    }

    /// Every environment, for the provisioner: id, desired node count and node driver.
    public func all() async throws -> [(envID: EnvID, desired: Int, driver: String)] {
        let rows = try await database.client.query(
            "SELECT env_id, desired_node_count, driver FROM compute_envs ORDER BY created_at", logger: database.logger)
        var result: [(EnvID, Int, String)] = []
        for try await (id, desired, driver) in rows.decode((String, Int, String).self) {
            result.append((EnvID(rawValue: id), desired, driver))
        }
        return result
    }

    /// One environment, for the provisioner.
    public func find(_ envID: EnvID) async throws -> (desired: Int, driver: String)? {
        let rows = try await database.client.query(
            "SELECT desired_node_count, driver FROM compute_envs WHERE env_id = \(envID.rawValue)",
            logger: database.logger)
        for try await (desired, driver) in rows.decode((Int, String).self) { return (desired, driver) }
        return nil
    }

    // MARK: Nodes

    public func nodes(of envID: EnvID) async throws -> [ComputeNodeView] {
        let rows = try await database.client.query(
            """
            SELECT node_id, state, free_slots, created_at FROM compute_nodes
            WHERE env_id = \(envID.rawValue) ORDER BY created_at, node_id
            """, logger: database.logger)
        var nodes: [ComputeNodeView] = []
        for try await (id, state, free, created) in rows.decode((String, String, Int, Date).self) {
            nodes.append(
                ComputeNodeView(
                    computeNodeId: NodeID(rawValue: id), computeNodeState: state, taskInstanceNumAvailable: free,
                    resourceCreatedTime: created))
        }
        return nodes
    }

    /// Records a node the provisioner is creating.
    public func nodeCreating(_ nodeID: NodeID, env: EnvID, slots: Int, host: String) async throws {
        try await database.client.query(
            """
            INSERT INTO compute_nodes (node_id, env_id, state, slots, free_slots, host)
            VALUES (\(nodeID.rawValue), \(env.rawValue), 'CREATING', \(slots), 0, \(host))
            ON CONFLICT (node_id) DO NOTHING
            """, logger: database.logger)
    }

    /// Records a heartbeat: the node is `RUNNING` with `freeSlots` free.
    public func heartbeat(_ beat: NodeHeartbeat) async throws {
        try await database.client.query(
            """
            INSERT INTO compute_nodes (node_id, env_id, state, slots, free_slots, host, pid, last_heartbeat)
            VALUES (\(beat.nodeID.rawValue), \(beat.envID.rawValue), 'RUNNING', \(beat.slots), \(beat.freeSlots),
                \(beat.host), \(Int(beat.pid)), \(beat.at))
            ON CONFLICT (node_id) DO UPDATE SET state = CASE WHEN compute_nodes.state = 'DELETING' THEN 'DELETING'
                    ELSE 'RUNNING' END,
                slots = EXCLUDED.slots, free_slots = EXCLUDED.free_slots, pid = EXCLUDED.pid,
                last_heartbeat = greatest(compute_nodes.last_heartbeat, EXCLUDED.last_heartbeat), updated_at = now()
            """, logger: database.logger)
    }

    /// Sets a node's state (`DELETING`, `ABNORMAL`, …).
    public func setNodeState(_ nodeID: NodeID, _ state: String) async throws {
        try await database.client.query(
            "UPDATE compute_nodes SET state = \(state), updated_at = now() WHERE node_id = \(nodeID.rawValue)",
            logger: database.logger)
    }

    /// Removes a node that is gone.
    public func deleteNode(_ nodeID: NodeID) async throws {
        try await database.client.query(
            "DELETE FROM compute_nodes WHERE node_id = \(nodeID.rawValue)", logger: database.logger)
    }
}
