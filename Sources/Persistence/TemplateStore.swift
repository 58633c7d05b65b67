import BatchCore
import Foundation
import PostgresNIO

/// Task templates, scoped to their owner. Template specs are sealed like task specs.
public struct TemplateStore: Sendable {
    let database: Database
    let quotas: Quotas

    public init(database: Database, quotas: Quotas = Quotas()) {
        self.database = database
        self.quotas = quotas
    }

    var logger: Logger { database.logger }

    /// `CreateTaskTemplate`, within the user's quota (`LimitExceeded.TaskTemplateQuota`).
    public func create(user: UserID, spec: TaskTemplateSpec) async throws -> TaskTemplateID {
        let id = TaskTemplateID.generate()
        let sealed = try database.sealer.seal(
            try BatchJSON.encode(spec.taskTemplateInfo), context: "templates.spec:\(id)")
        let tags = String(decoding: try BatchJSON.encode(spec.tags ?? []), as: UTF8.self)
        let logger = self.logger
        let quotas = self.quotas
        try await database.transaction { connection in
            let quotas = try await JobStore.lockUser(user, defaults: quotas, on: connection, logger: logger)
            let count = try await JobStore.count(
                "SELECT count(*) FROM task_templates WHERE user_id = \(user.rawValue)", on: connection, logger: logger)
            if let violation = quotas.check(.taskTemplates, current: count) { throw StoreRefusal.quota(violation) }
            try await connection.query(
                """
                INSERT INTO task_templates (template_id, user_id, name, description, spec_sealed, tags)
                VALUES (\(id.rawValue), \(user.rawValue), \(spec.taskTemplateName), \(spec.taskTemplateDescription),
                    \(sealed), \(tags)::jsonb)
                """, logger: logger)
        }
        return id
    }

    /// The user's templates among `ids`, unredacted, for resolving a job's template references.
    public func specs(_ ids: [TaskTemplateID], user: UserID) async throws -> [TaskTemplateID: TaskSpec] {
        guard !ids.isEmpty else { return [:] }
        var specs: [TaskTemplateID: TaskSpec] = [:]
        for try await (id, sealed) in try await database.client.query(
            """
            SELECT template_id, spec_sealed FROM task_templates
            WHERE template_id = ANY(\(ids.map(\.rawValue))) AND user_id = \(user.rawValue)
            """, logger: logger
        ).decode((String, String).self) {
            specs[TaskTemplateID(rawValue: id)] = try BatchJSON.decode(
                TaskSpec.self, from: try database.sealer.openBytes(sealed, context: "templates.spec:\(id)"))
        }
        return specs
    }

    /// `DescribeTaskTemplates`: by ids and filters (`task-template-name`, `tag-key`, `tag-value`, `tag:<key>`),
    /// secrets masked.
    public func list(user: UserID, ids: [TaskTemplateID]?, filters: FilterSet, paging: Paging) async throws
        -> (total: Int, templates: [TaskTemplateView])
    {
        var query = SQLBuilder("FROM task_templates WHERE user_id = ")
        query.append(query.bind(user.rawValue))
        if let ids { query.append(" AND template_id = ANY(\(query.bind(ids.map(\.rawValue))))") }
        if let names = filters["task-template-name"] { query.append(" AND name = ANY(\(query.bind(names)))") }
        JobStore.appendTagFilters(filters, column: "tags", to: &query)
        let total = try await JobStore.count(query.countQuery, client: database.client, logger: logger)
        query.append(
            " ORDER BY created_at DESC, template_id LIMIT \(query.bind(paging.limit)) OFFSET \(query.bind(paging.offset))"
        )
        query.prepend("SELECT template_id, name, description, spec_sealed, created_at, tags::text")
        var templates: [TaskTemplateView] = []
        for try await (id, name, description, sealed, created, tags) in try await database.client.query(
            query.query, logger: logger
        ).decode((String, String, String?, String, Date, String).self) {
            let spec = try BatchJSON.decode(
                TaskSpec.self, from: try database.sealer.openBytes(sealed, context: "templates.spec:\(id)"))
            templates.append(
                TaskTemplateView(
                    taskTemplateId: TaskTemplateID(rawValue: id), taskTemplateName: name,
                    taskTemplateDescription: description, taskTemplateInfo: spec.redacted, createTime: created,
                    tags: try BatchJSON.decode([Tag].self, from: Array(tags.utf8))))
        }
        return (total, templates)
    }

    /// `ModifyTaskTemplate`: any of name, description and task; the result is validated as a whole.
    public func modify(
        _ id: TaskTemplateID, user: UserID, name: String?, description: String?, info: TaskSpec?
    ) async throws {
        let logger = self.logger
        let sealer = database.sealer
        try await database.transaction { connection in
            let rows = try await connection.query(
                """
                SELECT name, description, spec_sealed FROM task_templates
                WHERE template_id = \(id.rawValue) AND user_id = \(user.rawValue) FOR UPDATE
                """, logger: logger)
            guard
                let (oldName, oldDescription, sealed) = try await rows.decode((String, String?, String).self).first(
                    where: { _ in true })
            else { throw StoreRefusal.taskTemplateNotFound(id, field: "TaskTemplateId") }
            let template = TaskTemplateSpec(
                taskTemplateName: name ?? oldName,
                taskTemplateInfo: try info
                    ?? BatchJSON.decode(
                        TaskSpec.self, from: try sealer.openBytes(sealed, context: "templates.spec:\(id)")),
                taskTemplateDescription: description ?? oldDescription)
            let problems = template.validate()
            guard problems.isEmpty else { throw StoreRefusal.invalid(problems) }
            try await connection.query(
                """
                UPDATE task_templates SET name = \(template.taskTemplateName),
                    description = \(template.taskTemplateDescription),
                    spec_sealed = \(try sealer.seal(try BatchJSON.encode(template.taskTemplateInfo), context: "templates.spec:\(id)")),
                    updated_at = now()
                WHERE template_id = \(id.rawValue)
                """, logger: logger)
        }
    }

    /// `DeleteTaskTemplates`: all of them or, if one is not the user's, none (`ResourceNotFound.TaskTemplate`).
    public func delete(_ ids: [TaskTemplateID], user: UserID) async throws {
        let logger = self.logger
        try await database.transaction { connection in
            var found: Set<String> = []
            for try await id in try await connection.query(
                """
                DELETE FROM task_templates WHERE template_id = ANY(\(ids.map(\.rawValue))) AND user_id = \(user.rawValue)
                RETURNING template_id
                """, logger: logger
            ).decode(String.self) {
                found.insert(id)
            }
            if let missing = ids.first(where: { !found.contains($0.rawValue) }) {
                throw StoreRefusal.taskTemplateNotFound(missing, field: "TaskTemplateIds")
            }
        }
    }
}
