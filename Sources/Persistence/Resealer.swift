import BatchCore
import PostgresNIO

/// Re-seals every sealed value under the current master key, so that a retired key can leave `BATCH_MASTER_KEY`.
///
/// Rotating the master key: put the new key first and the old one after it (`k2:…,k1:…`) on every service, restart
/// them, run ``reseal(batchSize:)`` (`SchedulerService reseal`), then drop the old key. Values are re-sealed a batch
/// at a time, each written only if it is still the value that was read, so services may run meanwhile.
public struct Resealer: Sendable {
    /// A sealed column: the columns that find its row, and how its context is made from their values.
    struct Column: Sendable {
        var table: String
        var column: String
        /// The row's key columns with their SQL types.
        var keys: [(name: String, type: String)]
        /// Columns (read as text) the context is made from, after the keys.
        var extra: [String] = []
        /// The context from the key values, then the extra values.
        var context: @Sendable ([String]) -> String

        var name: String { "\(table).\(column)" }
    }

    /// Every sealed column but `keyring.canary_sealed` (one canary per key id, never re-sealed). A test holds this
    /// list to the schema's `*_sealed` columns.
    static let columns: [Column] = [
        Column(table: "credentials", column: "secret_key_sealed", keys: [("secret_id", "text")]) {
            "credentials:\($0[0])"
        },
        Column(table: "jobs", column: "spec_sealed", keys: [("job_id", "text")]) { "jobs.spec:\($0[0])" },
        Column(table: "tasks", column: "spec_sealed", keys: [("job_id", "text"), ("task_name", "text")]) {
            "tasks.spec:\($0[0])/\($0[1])"
        },
        Column(table: "task_templates", column: "spec_sealed", keys: [("template_id", "text")]) {
            "templates.spec:\($0[0])"
        },
        Column(table: "compute_envs", column: "spec_sealed", keys: [("env_id", "text")]) {
            "compute_envs.spec:\($0[0])"
        },
        Column(
            table: "task_instances", column: "stdout_tail_sealed",
            keys: [("job_id", "text"), ("task_name", "text"), ("instance_index", "integer")]
        ) { "logs:\($0[0])/\($0[1])/\($0[2])/stdout" },
        Column(
            table: "task_instances", column: "stderr_tail_sealed",
            keys: [("job_id", "text"), ("task_name", "text"), ("instance_index", "integer")]
        ) { "logs:\($0[0])/\($0[1])/\($0[2])/stderr" },
        Column(table: "outbox", column: "body_sealed", keys: [("id", "bigint")], extra: ["message_id"]) {
            "outbox:\($0[1])"
        },
    ]

    let database: Database

    public init(database: Database) { self.database = database }

    /// Re-seals, under the current key, every value sealed with another; returns how many, by `table.column`.
    /// Throws a ``SealingError`` naming the column when a value does not open with any configured key.
    public func reseal(batchSize: Int = 500) async throws -> [(column: String, count: Int)] {
        var counts: [(column: String, count: Int)] = []
        for column in Self.columns {
            counts.append((column.name, try await reseal(column, batchSize: batchSize)))
        }
        return counts
    }

    /// Values sealed with a key other than the current one, by `table.column` (those with none left out).
    public func remaining() async throws -> [(column: String, count: Int)] {
        var counts: [(column: String, count: Int)] = []
        for column in Self.columns {
            let rows = try await database.client.query(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT count(*) FROM \(column.table)
                        WHERE \(column.column) IS NOT NULL AND NOT starts_with(\(column.column), $1)
                        """, binds: bindings(database.sealer.current.id + ":")), logger: database.logger)
            let count = try await rows.decode(Int.self).first { _ in true } ?? 0
            if count > 0 { counts.append((column.name, count)) }
        }
        return counts
    }

    private func bindings(_ values: String...) -> PostgresBindings {
        var binds = PostgresBindings()
        for value in values { binds.append(value) }
        return binds
    }

    private func reseal(_ column: Column, batchSize: Int) async throws -> Int {
        let sealer = database.sealer
        let prefix = sealer.current.id + ":"
        let selected = (column.keys.map { "\($0.name)::text" } + column.extra.map { "\($0)::text" })
            .joined(separator: ", ")
        let select = """
            SELECT \(selected), \(column.column) FROM \(column.table)
            WHERE \(column.column) IS NOT NULL AND NOT starts_with(\(column.column), $1) LIMIT \(batchSize)
            """
        var total = 0
        var idle = 0
        while true {
            var keys = Array(repeating: [String](), count: column.keys.count)
            var old: [String] = []
            var new: [String] = []
            let rows = try await database.client.query(
                PostgresQuery(unsafeSQL: select, binds: bindings(prefix)), logger: database.logger)
            for try await row in rows {
                var values: [String] = []
                for cell in row { values.append(try cell.decode(String.self)) }
                let sealed = values.removeLast()
                let context = column.context(values)
                let plain: [UInt8]
                do {
                    plain = try sealer.openBytes(sealed, context: context)
                } catch let error as SealingError {
                    throw SealingError("\(column.name): \(error.message)")
                }
                for index in column.keys.indices { keys[index].append(values[index]) }
                old.append(sealed)
                new.append(try sealer.seal(plain, context: context))
            }
            guard !old.isEmpty else { return total }
            var update = SQLBuilder("UPDATE \(column.table) t SET \(column.column) = u.new FROM unnest(")
            let arrays = keys.map { update.bind($0) + "::text[]" } + [update.bind(old) + "::text[]"]
            update.append((arrays + [update.bind(new) + "::text[]"]).joined(separator: ", "))
            let names = column.keys.indices.map { "k\($0)" }
            update.append(") AS u(\((names + ["old", "new"]).joined(separator: ", "))) WHERE ")
            update.append(
                (zip(column.keys, names).map { "t.\($0.name) = u.\($1)::\($0.type)" }
                    + ["t.\(column.column) = u.old"]).joined(separator: " AND "))
            update.append(" RETURNING 1")
            let written = try await database.client.query(update.query, logger: database.logger).collect().count
            total += written
            // Every value read was changed meanwhile (sealed anew, under the current key): read again, a few times.
            idle = written == 0 ? idle + 1 : 0
            if idle >= 3 {
                throw SealingError("\(column.name): values keep changing while being re-sealed; run it again")
            }
        }
    }
}
