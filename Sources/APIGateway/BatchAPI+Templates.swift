import BatchCore
import Foundation
import Persistence

extension BatchAPI {
    struct CreateTaskTemplateResponse: Encodable, Sendable {
        var taskTemplateId: TaskTemplateID
    }

    func createTaskTemplate(_ context: ActionContext) async throws -> CreateTaskTemplateResponse {
        let spec = try context.decode(TaskTemplateSpec.self)
        let problems = spec.validate()
        guard problems.isEmpty else { throw APIError(problems: problems) }
        return CreateTaskTemplateResponse(taskTemplateId: try await templates.create(user: context.user, spec: spec))
    }

    struct DescribeTaskTemplatesRequest: Decodable {
        var taskTemplateIds: [String]?
        var filters: [Filter]?
        var offset: Int?
        var limit: Int?
    }

    struct DescribeTaskTemplatesResponse: Encodable, Sendable {
        var taskTemplateSet: [TaskTemplateView]
        var totalCount: Int
    }

    func describeTaskTemplates(_ context: ActionContext) async throws -> DescribeTaskTemplatesResponse {
        let request = try context.decode(DescribeTaskTemplatesRequest.self)
        guard request.taskTemplateIds == nil || request.filters == nil else {
            throw APIError(.invalidParameterCombination, "TaskTemplateIds and Filters: give at most one")
        }
        let ids = try request.taskTemplateIds.map { try Self.ids($0, field: "TaskTemplateIds", parse: Self.templateID) }
        let filters = try FilterSet(
            request.filters, supported: ["task-template-name", "tag-key", "tag-value"], tags: true)
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 20, maximum: 100)
        let (total, templates) = try await self.templates.list(
            user: context.user, ids: ids, filters: filters, paging: paging)
        return DescribeTaskTemplatesResponse(taskTemplateSet: templates, totalCount: total)
    }

    struct ModifyTaskTemplateRequest: Decodable {
        var taskTemplateId: String
        var taskTemplateName: String?
        var taskTemplateDescription: String?
        var taskTemplateInfo: TaskSpec?
    }

    func modifyTaskTemplate(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(ModifyTaskTemplateRequest.self)
        let id = try Self.templateID(request.taskTemplateId, field: "TaskTemplateId")
        guard
            request.taskTemplateName != nil || request.taskTemplateDescription != nil || request.taskTemplateInfo != nil
        else {
            throw APIError(
                .atLeastOneAttribute,
                "give at least one of TaskTemplateName, TaskTemplateDescription and TaskTemplateInfo")
        }
        try await templates.modify(
            id, user: context.user, name: request.taskTemplateName, description: request.taskTemplateDescription,
            info: request.taskTemplateInfo)
        return EmptyResponse()
    }

    struct DeleteTaskTemplatesRequest: Decodable {
        var taskTemplateIds: [String]
    }

    func deleteTaskTemplates(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(DeleteTaskTemplatesRequest.self)
        let ids = try Self.ids(request.taskTemplateIds, field: "TaskTemplateIds", parse: Self.templateID)
        try await templates.delete(ids, user: context.user)
        return EmptyResponse()
    }
}
