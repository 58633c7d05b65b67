import BatchCore
import Foundation
import Persistence

extension BatchAPI {
    struct CreateComputeEnvRequest: Decodable {
        var computeEnv: NamedComputeEnv
        var placement: PlacementRequest?
        var clientToken: String?
    }

    struct CreateComputeEnvResponse: Encodable, Sendable {
        var envId: EnvID
    }

    func createComputeEnv(_ context: ActionContext) async throws -> CreateComputeEnvResponse {
        let request = try context.decode(CreateComputeEnvRequest.self)
        let problems = request.computeEnv.validate()
        guard problems.isEmpty else { throw APIError(problems: problems) }
        if request.computeEnv.sandbox == false {
            try await checkUnsandboxedAllowed(context.user)
        }
        let envID = try await envs.create(
            user: context.user, spec: request.computeEnv, zone: request.placement?.zone ?? zone)
        return CreateComputeEnvResponse(envId: envID)
    }

    /// Instances without a sandbox run as the node's user with the node's view of everything: only users the
    /// operator named (`BATCH_UNSANDBOXED_USERS`) may ask for that.
    func checkUnsandboxedAllowed(_ user: UserID) async throws {
        let name = unsandboxedUsers.isEmpty ? nil : try await UserStore(database: database).name(of: user)
        guard let name, unsandboxedUsers.contains(name) else {
            throw APIError(
                .unauthorizedOperation,
                "ComputeEnv.Sandbox: false runs instances without isolation and is allowed only for users the operator "
                    + "named in BATCH_UNSANDBOXED_USERS")
        }
    }

    struct EnvRequest: Decodable {
        var envId: String
    }

    func describeComputeEnv(_ context: ActionContext) async throws -> ComputeEnvView {
        let envID = try Self.envID(try context.decode(EnvRequest.self).envId)
        guard let view = try await envs.view(envID, user: context.user) else {
            throw APIError(.computeEnvNotFound, "EnvId: no compute environment \(envID)")
        }
        return view
    }

    struct DescribeComputeEnvsRequest: Decodable {
        var envIds: [String]?
        var filters: [Filter]?
        var offset: Int?
        var limit: Int?
    }

    struct DescribeComputeEnvsResponse: Encodable, Sendable {
        var computeEnvSet: [ComputeEnvView]
        var totalCount: Int
    }

    static let environmentFilters: Set<String> = [
        "zone", "env-id", "env-name", "resource-type", "next-action", "tag-key", "tag-value",
    ]

    func describeComputeEnvs(_ context: ActionContext) async throws -> DescribeComputeEnvsResponse {
        let request = try context.decode(DescribeComputeEnvsRequest.self)
        let ids = try request.envIds.map { try Self.ids($0, field: "EnvIds", parse: Self.envID) }
        let filters = try FilterSet(request.filters, supported: Self.environmentFilters, tags: true)
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 20, maximum: 100)
        let (total, envs) = try await self.envs.list(user: context.user, envIDs: ids, filters: filters, paging: paging)
        return DescribeComputeEnvsResponse(computeEnvSet: envs, totalCount: total)
    }

    struct ModifyComputeEnvRequest: Decodable {
        struct EnvData: Decodable {
            var instanceTypes: [String]?
        }
        var envId: String
        var desiredComputeNodeCount: Int?
        var envName: String?
        var envDescription: String?
        var envData: EnvData?
    }

    func modifyComputeEnv(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(ModifyComputeEnvRequest.self)
        let envID = try Self.envID(request.envId)
        guard
            request.desiredComputeNodeCount != nil || request.envName != nil || request.envDescription != nil
                || request.envData?.instanceTypes != nil
        else {
            throw APIError(
                .atLeastOneAttribute,
                "give at least one of DesiredComputeNodeCount, EnvName, EnvDescription and EnvData")
        }
        try await envs.modify(
            envID, user: context.user, desired: request.desiredComputeNodeCount, name: request.envName,
            description: request.envDescription, instanceTypes: request.envData?.instanceTypes)
        return EmptyResponse()
    }

    func deleteComputeEnv(_ context: ActionContext) async throws -> EmptyResponse {
        let envID = try Self.envID(try context.decode(EnvRequest.self).envId)
        try await envs.requestDeletion(envID, user: context.user)
        return EmptyResponse()
    }

    struct DescribeComputeEnvActivitiesRequest: Decodable {
        var envId: String
        var offset: Int?
        var limit: Int?
        var filters: Filter?
    }

    struct DescribeComputeEnvActivitiesResponse: Encodable, Sendable {
        var activitySet: [ActivityView]
        var totalCount: Int
    }

    func describeComputeEnvActivities(_ context: ActionContext) async throws -> DescribeComputeEnvActivitiesResponse {
        let request = try context.decode(DescribeComputeEnvActivitiesRequest.self)
        let envID = try Self.envID(request.envId)
        let filters = try FilterSet(request.filters.map { [$0] }, supported: ["compute-node-id"])
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 20, maximum: 100)
        guard
            let (total, activities) = try await envs.activities(
                envID, user: context.user, nodeIDs: filters["compute-node-id"], paging: paging)
        else { throw APIError(.computeEnvNotFound, "EnvId: no compute environment \(envID)") }
        return DescribeComputeEnvActivitiesResponse(activitySet: activities, totalCount: total)
    }

    /// `ComputeEnvCreateInfo`: the environment's spec with its id, secrets masked.
    struct CreateInfo: Encodable, Sendable {
        var envId: EnvID
        var envName: String
        var envDescription: String?
        var envType: String
        var envData: EnvData?
        var mountDataDisks: [MountDataDisk]
        var inputMappings: [InputMapping]
        var authentications: [Authentication]
        var notifications: [JobNotification]
        var desiredComputeNodeCount: Int
        var tags: [Tag]

        init(_ id: EnvID, _ spec: NamedComputeEnv) {
            envId = id
            envName = spec.envName
            envDescription = spec.envDescription
            envType = spec.envType ?? "MANAGED"
            envData = spec.envData
            mountDataDisks = spec.mountDataDisks ?? []
            inputMappings = spec.inputMappings ?? []
            authentications = spec.authentications ?? []
            notifications = spec.notifications ?? []
            desiredComputeNodeCount = spec.desiredComputeNodeCount
            tags = spec.tags ?? []
        }
    }

    func describeComputeEnvCreateInfo(_ context: ActionContext) async throws -> CreateInfo {
        let envID = try Self.envID(try context.decode(EnvRequest.self).envId)
        let (_, infos) = try await envs.createInfos(
            user: context.user, envIDs: [envID], filters: try FilterSet([], supported: []), paging: .one)
        guard let (id, spec) = infos.first else {
            throw APIError(.computeEnvNotFound, "EnvId: no compute environment \(envID)")
        }
        return CreateInfo(id, spec)
    }

    struct DescribeComputeEnvCreateInfosResponse: Encodable, Sendable {
        var totalCount: Int
        var computeEnvCreateInfoSet: [CreateInfo]
    }

    func describeComputeEnvCreateInfos(_ context: ActionContext) async throws -> DescribeComputeEnvCreateInfosResponse {
        let request = try context.decode(DescribeComputeEnvsRequest.self)
        let ids = try request.envIds.map { try Self.ids($0, field: "EnvIds", parse: Self.envID) }
        let filters = try FilterSet(request.filters, supported: ["zone", "env-id", "env-name"])
        let paging = try Paging(offset: request.offset, limit: request.limit, defaultLimit: 20, maximum: 100)
        let (total, infos) = try await envs.createInfos(
            user: context.user, envIDs: ids, filters: filters, paging: paging)
        return DescribeComputeEnvCreateInfosResponse(
            totalCount: total, computeEnvCreateInfoSet: infos.map(CreateInfo.init))
    }

    struct TerminateComputeNodeRequest: Decodable {
        var envId: String
        var computeNodeId: String
    }

    func terminateComputeNode(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(TerminateComputeNodeRequest.self)
        try await envs.requestNodeTermination(
            try Self.envID(request.envId), user: context.user,
            nodeIDs: [try Self.nodeID(request.computeNodeId, field: "ComputeNodeId")])
        return EmptyResponse()
    }

    struct TerminateComputeNodesRequest: Decodable {
        var envId: String
        var computeNodeIds: [String]
    }

    func terminateComputeNodes(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(TerminateComputeNodesRequest.self)
        try await envs.requestNodeTermination(
            try Self.envID(request.envId), user: context.user,
            nodeIDs: try Self.ids(request.computeNodeIds, field: "ComputeNodeIds", parse: Self.nodeID))
        return EmptyResponse()
    }

    struct AttachInstancesRequest: Decodable {
        struct Instance: Decodable {
            var instanceId: String
        }
        var envId: String
        var instances: [Instance]
    }

    /// Records machines as `USER_ATTACHED` nodes of the environment (`CREATED`, no slots until an executor runs there).
    func attachInstances(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(AttachInstancesRequest.self)
        let instances = try Self.ids(request.instances.map(\.instanceId), field: "Instances") { id, field in
            guard !id.isEmpty, id.count <= 64 else {
                throw APIError(.invalidParameterValue, "\(field).InstanceId: 1 to 64 characters")
            }
            return id
        }
        try await envs.attach(try Self.envID(request.envId), user: context.user, instanceIDs: instances)
        return EmptyResponse()
    }

    struct DetachInstancesRequest: Decodable {
        var envId: String
        var instanceIds: [String]
    }

    func detachInstances(_ context: ActionContext) async throws -> EmptyResponse {
        let request = try context.decode(DetachInstancesRequest.self)
        let instances = try Self.ids(request.instanceIds, field: "InstanceIds") { id, _ in id }
        try await envs.detach(try Self.envID(request.envId), user: context.user, instanceIDs: instances)
        return EmptyResponse()
    }
}

extension Paging {
    static let one = try! Paging(offset: 0, limit: 1, defaultLimit: 1, maximum: 1)
}
