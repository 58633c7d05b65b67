import Foundation

/// The admin actions' requests and responses (ours, not Tencent Cloud's; only an operator's key pair may call them),
/// coded with ``BatchJSON`` like every other action: the gateway decodes them and `batchctl admin` sends them.
public enum AdminAPI {
    /// `CreateUser`.
    public struct CreateUserRequest: Codable, Sendable {
        public var userName: String
        public var `operator`: Bool?

        public init(userName: String, operator isOperator: Bool? = nil) {
            self.userName = userName
            self.operator = isOperator
        }
    }

    public struct CreateUserResponse: Codable, Sendable {
        public var userId: String
        public var userName: String
        public var secretId: String
        /// Shown only here, once.
        public var secretKey: String
        public var `operator`: Bool

        public init(userId: String, userName: String, secretId: String, secretKey: String, operator isOperator: Bool) {
            self.userId = userId
            self.userName = userName
            self.secretId = secretId
            self.secretKey = secretKey
            self.operator = isOperator
        }
    }

    /// `DisableUser`, `EnableUser`.
    public struct UserNameRequest: Codable, Sendable {
        public var userName: String

        public init(userName: String) { self.userName = userName }
    }

    /// `ModifyUserQuota`: nil leaves a quota as it is, 0 returns it to the gateway's default.
    public struct ModifyUserQuotaRequest: Codable, Sendable {
        public var userName: String
        public var jobQuota: Int?
        public var taskTemplateQuota: Int?
        public var computeEnvQuota: Int?

        public init(userName: String, jobQuota: Int? = nil, taskTemplateQuota: Int? = nil, computeEnvQuota: Int? = nil)
        {
            self.userName = userName
            self.jobQuota = jobQuota
            self.taskTemplateQuota = taskTemplateQuota
            self.computeEnvQuota = computeEnvQuota
        }
    }

    /// `DescribeComputeEnvNodeKey`.
    public struct NodeKeyRequest: Codable, Sendable {
        public var envId: String

        public init(envId: String) { self.envId = envId }
    }

    public struct NodeKeyResponse: Codable, Sendable {
        public var envId: String
        public var nodeKey: String

        public init(envId: String, nodeKey: String) {
            self.envId = envId
            self.nodeKey = nodeKey
        }
    }

    /// `DescribeUserKeyPairs`: a user's key pairs, without their secrets.
    public struct KeyPairsResponse: Codable, Sendable {
        public struct KeyPair: Codable, Sendable {
            public var secretId: String
            public var createdTime: Date
            /// `ACTIVE` or `REVOKED`.
            public var status: String

            public init(secretId: String, createdTime: Date, status: String) {
                self.secretId = secretId
                self.createdTime = createdTime
                self.status = status
            }
        }

        public var userName: String
        public var keyPairs: [KeyPair]

        public init(userName: String, keyPairs: [KeyPair]) {
            self.userName = userName
            self.keyPairs = keyPairs
        }
    }

    /// `CreateUserKeyPair`: the new key pair; its SecretKey is shown only here.
    public struct KeyPairResponse: Codable, Sendable {
        public var userName: String
        public var secretId: String
        public var secretKey: String

        public init(userName: String, secretId: String, secretKey: String) {
            self.userName = userName
            self.secretId = secretId
            self.secretKey = secretKey
        }
    }

    /// `RevokeUserKeyPair`.
    public struct RevokeKeyPairRequest: Codable, Sendable {
        public var userName: String
        public var secretId: String

        public init(userName: String, secretId: String) {
            self.userName = userName
            self.secretId = secretId
        }
    }

    /// An answer with nothing but its `RequestId`.
    public struct Empty: Codable, Sendable {
        public init() {}
    }
}
