import BatchCore
import Foundation
import Persistence

/// The admin actions: users, their key pairs, and environments' node keys. Not part of Tencent Cloud's API; only an
/// operator's key pair may call them (`batchctl admin`). A gateway started with `--operator-credentials FILE` writes
/// an operator's key pair there on first start.
extension BatchAPI {

    /// Refuses a caller who is not an operator.
    static func requireOperator(_ context: ActionContext, _ action: String) throws {
        guard context.isOperator else {
            throw APIError(.unauthorizedOperation, "\(action) is an operator's action; this key pair is not one")
        }
    }

    func createUser(_ context: ActionContext) async throws -> AdminAPI.CreateUserResponse {
        try Self.requireOperator(context, "CreateUser")
        let request = try context.decode(AdminAPI.CreateUserRequest.self)
        let created = try await UserStore(database: database).createUser(
            name: request.userName, operator: request.operator ?? false)
        context.logger.notice(
            "user created", metadata: ["created.user.id": "\(created.userID)", "operator": "\(created.isOperator)"])
        return AdminAPI.CreateUserResponse(
            userId: created.userID.rawValue, userName: created.name, secretId: created.secretID,
            secretKey: created.secretKey, operator: created.isOperator)
    }

    func setUserDisabled(_ context: ActionContext, _ disabled: Bool) async throws -> EmptyResponse {
        try Self.requireOperator(context, disabled ? "DisableUser" : "EnableUser")
        let request = try context.decode(AdminAPI.UserNameRequest.self)
        guard try await UserStore(database: database).setDisabled(name: request.userName, disabled) else {
            throw APIError(.userNotFound, "UserName: no user named \(request.userName.prefix(64))")
        }
        context.logger.notice("user \(disabled ? "disabled" : "enabled")", metadata: ["name": "\(request.userName)"])
        return EmptyResponse()
    }

    /// Sets a user's quotas over the gateway's defaults (`--quota-jobs` …); 0 returns one to the default.
    func modifyUserQuota(_ context: ActionContext) async throws -> EmptyResponse {
        try Self.requireOperator(context, "ModifyUserQuota")
        let request = try context.decode(AdminAPI.ModifyUserQuotaRequest.self)
        for (field, value) in [
            ("JobQuota", request.jobQuota), ("TaskTemplateQuota", request.taskTemplateQuota),
            ("ComputeEnvQuota", request.computeEnvQuota),
        ] {
            if let value, value < 0 || value > 10_000_000 {
                throw APIError(.invalidParameterValue, "\(field): 0 (the default) to 10000000")
            }
        }
        guard request.jobQuota != nil || request.taskTemplateQuota != nil || request.computeEnvQuota != nil else {
            throw APIError(.atLeastOneAttribute, "give JobQuota, TaskTemplateQuota or ComputeEnvQuota")
        }
        guard
            try await UserStore(database: database).setQuotas(
                name: request.userName, jobs: request.jobQuota, taskTemplates: request.taskTemplateQuota,
                computeEnvs: request.computeEnvQuota)
        else {
            throw APIError(.userNotFound, "UserName: no user named \(request.userName.prefix(64))")
        }
        context.logger.notice("user quota changed", metadata: ["name": "\(request.userName)"])
        return EmptyResponse()
    }

    /// A user's key pairs, active and revoked, without their secrets.
    func describeUserKeyPairs(_ context: ActionContext) async throws -> AdminAPI.KeyPairsResponse {
        try Self.requireOperator(context, "DescribeUserKeyPairs")
        let request = try context.decode(AdminAPI.UserNameRequest.self)
        guard let pairs = try await UserStore(database: database).keyPairs(name: request.userName) else {
            throw APIError(.userNotFound, "UserName: no user named \(request.userName.prefix(64))")
        }
        return AdminAPI.KeyPairsResponse(
            userName: request.userName,
            keyPairs: pairs.map {
                .init(secretId: $0.secretID, createdTime: $0.createdAt, status: $0.revoked ? "REVOKED" : "ACTIVE")
            })
    }

    /// Another key pair for a user (to rotate: add one, move to it, revoke the old).
    func createUserKeyPair(_ context: ActionContext) async throws -> AdminAPI.KeyPairResponse {
        try Self.requireOperator(context, "CreateUserKeyPair")
        let request = try context.decode(AdminAPI.UserNameRequest.self)
        guard let created = try await UserStore(database: database).createKeyPair(name: request.userName) else {
            throw APIError(.userNotFound, "UserName: no user named \(request.userName.prefix(64))")
        }
        context.logger.notice(
            "key pair created", metadata: ["name": "\(request.userName)", "secret.id": "\(created.secretID)"])
        return AdminAPI.KeyPairResponse(
            userName: created.name, secretId: created.secretID, secretKey: created.secretKey)
    }

    /// Revokes a user's key pair for good; every gateway refuses it within its credential cache's few seconds. The
    /// key pair a request is signed with cannot revoke itself (an operator would lock themselves out).
    func revokeUserKeyPair(_ context: ActionContext) async throws -> EmptyResponse {
        try Self.requireOperator(context, "RevokeUserKeyPair")
        let request = try context.decode(AdminAPI.RevokeKeyPairRequest.self)
        guard request.secretId != context.secretID else {
            throw APIError(
                .unsupportedOperation,
                "SecretId: the request is signed with this key pair; sign with another to revoke it")
        }
        guard try await UserStore(database: database).revokeKeyPair(name: request.userName, secretID: request.secretId)
        else {
            throw APIError(
                .keyPairNotFound,
                "SecretId: user \(request.userName.prefix(64)) has no key pair \(request.secretId.prefix(64))")
        }
        context.logger.notice(
            "key pair revoked", metadata: ["name": "\(request.userName)", "secret.id": "\(request.secretId)"])
        return EmptyResponse()
    }

    /// The key an environment's nodes hold, for a host attached by hand (`batchctl admin node-key`).
    func describeComputeEnvNodeKey(_ context: ActionContext) async throws -> AdminAPI.NodeKeyResponse {
        try Self.requireOperator(context, "DescribeComputeEnvNodeKey")
        let env = try Self.envID(try context.decode(AdminAPI.NodeKeyRequest.self).envId)
        guard try await envs.find(env) != nil else {
            throw APIError(.computeEnvNotFound, "EnvId: no compute environment \(env)")
        }
        context.logger.notice("node key read", metadata: ["env.id": "\(env)"])
        return AdminAPI.NodeKeyResponse(envId: env.rawValue, nodeKey: database.sealer.nodeKey(env: env).base64)
    }
}
