/// An error the API reports: one of Tencent Cloud Batch's error codes and a message that names the field.
///
/// Messages never carry secrets (keys, env var values, commands).
public struct APIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// An API error code, e.g. `InvalidParameterValue.DependenceUnfeasible`.
    public struct Code: RawRepresentable, Sendable, Hashable, ExpressibleByStringLiteral {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(stringLiteral value: String) { self.rawValue = value }

        // Request and parameters.
        public static let invalidParameter: Code = "InvalidParameter"
        public static let invalidParameterValue: Code = "InvalidParameterValue"
        public static let missingParameter: Code = "MissingParameter"
        public static let unknownParameter: Code = "UnknownParameter"
        public static let invalidParameterCombination: Code = "InvalidParameter.InvalidParameterCombination"
        public static let atLeastOneAttribute: Code = "InvalidParameterAtLeastOneAttribute"
        public static let jobNameTooLong: Code = "InvalidParameter.JobNameTooLong"
        public static let jobDescriptionTooLong: Code = "InvalidParameter.JobDescriptionTooLong"
        public static let taskName: Code = "InvalidParameter.TaskName"
        public static let taskNameTooLong: Code = "InvalidParameter.TaskNameTooLong"
        public static let envNameTooLong: Code = "InvalidParameter.EnvNameTooLong"
        public static let envDescriptionTooLong: Code = "InvalidParameter.EnvDescriptionTooLong"
        public static let envIdMalformed: Code = "InvalidParameter.EnvIdMalformed"
        public static let jobIdMalformed: Code = "InvalidParameter.JobIdMalformed"
        public static let computeNodeIdMalformed: Code = "InvalidParameter.ComputeNodeIdMalformed"
        public static let taskTemplateIdMalformed: Code = "InvalidParameter.TaskTemplateIdMalformed"
        public static let taskTemplateName: Code = "InvalidParameter.TaskTemplateName"
        public static let taskTemplateNameTooLong: Code = "InvalidParameter.TaskTemplateNameTooLong"
        public static let taskTemplateDescriptionTooLong: Code = "InvalidParameter.TaskTemplateDescriptionTooLong"
        public static let notificationEventNameDuplicate: Code = "InvalidParameter.NotificationEventNameDuplicate"
        public static let notificationTopicName: Code = "InvalidParameter.NotificationTopicName"
        public static let notificationTopicNameTooLong: Code = "InvalidParameter.NotificationTopicNameTooLong"
        public static let allowedOneAttributeInEnvIdAndComputeEnv: Code = "AllowedOneAttributeInEnvIdAndComputeEnv"
        public static let dependenceNotFoundTaskName: Code = "InvalidParameterValue.DependenceNotFoundTaskName"
        public static let dependenceUnfeasible: Code = "InvalidParameterValue.DependenceUnfeasible"
        public static let taskInstanceNum: Code = "InvalidParameterValue.TaskInstanceNum"
        public static let maxRetryCount: Code = "InvalidParameterValue.MaxRetryCount"
        public static let negative: Code = "InvalidParameterValue.Negative"
        public static let limitExceededValue: Code = "InvalidParameterValue.LimitExceeded"
        public static let localPath: Code = "InvalidParameterValue.LocalPath"
        public static let remoteStoragePath: Code = "InvalidParameterValue.RemoteStoragePath"
        public static let remoteStorageSchemeType: Code = "InvalidParameterValue.RemoteStorageSchemeType"
        public static let instanceTypeDuplicate: Code = "InvalidParameterValue.InstanceTypeDuplicate"
        public static let instanceTypesEmpty: Code = "InvalidParameterValue.InstanceTypesEmpty"
        public static let invalidComputeEnv: Code = "InvalidParameterValue.ComputeEnv"
        public static let invalidFilter: Code = "InvalidParameterValue.InvalidFilter"
        // Quotas.
        public static let jobQuota: Code = "LimitExceeded.JobQuota"
        public static let taskTemplateQuota: Code = "LimitExceeded.TaskTemplateQuota"
        public static let computeEnvQuota: Code = "LimitExceeded.ComputeEnvQuota"
        public static let cpuQuota: Code = "LimitExceeded.CpuQuota"
        public static let requestLimitExceeded: Code = "RequestLimitExceeded"
        // Resources.
        public static let jobNotFound: Code = "ResourceNotFound.Job"
        public static let taskNotFound: Code = "ResourceNotFound.Task"
        public static let taskInstanceNotFound: Code = "ResourceNotFound.TaskInstance"
        public static let taskTemplateNotFound: Code = "ResourceNotFound.TaskTemplate"
        public static let computeEnvNotFound: Code = "ResourceNotFound.ComputeEnv"
        public static let computeNodeNotFound: Code = "ResourceNotFound.ComputeNode"
        public static let userNotFound: Code = "ResourceNotFound.User"
        public static let keyPairNotFound: Code = "ResourceNotFound.KeyPair"
        public static let userInUse: Code = "ResourceInUse.User"
        public static let jobInUse: Code = "ResourceInUse.Job"
        public static let unsupportedOperation: Code = "UnsupportedOperation"
        public static let unauthorizedOperation: Code = "UnauthorizedOperation"
        // Authentication and protocol.
        public static let authFailure: Code = "AuthFailure"
        public static let signatureFailure: Code = "AuthFailure.SignatureFailure"
        public static let signatureExpire: Code = "AuthFailure.SignatureExpire"
        public static let secretIdNotFound: Code = "AuthFailure.SecretIdNotFound"
        public static let invalidAuthorization: Code = "AuthFailure.InvalidAuthorization"
        public static let missingAuthorization: Code = "AuthFailure.MissingAuthorization"
        public static let invalidAction: Code = "InvalidAction"
        public static let unsupportedProtocol: Code = "UnsupportedProtocol"
        public static let requestSizeLimitExceeded: Code = "RequestSizeLimitExceeded"
        public static let internalError: Code = "InternalError"
    }
}

/// One thing wrong with a spec: the code, the field (`Job.Tasks[1].TaskName`) and what is wrong.
public struct ValidationProblem: Sendable, Hashable, CustomStringConvertible {
    public var code: APIError.Code
    public var field: String
    public var message: String

    public init(_ code: APIError.Code, _ field: String, _ message: String) {
        self.code = code
        self.field = field
        self.message = message
    }

    public var description: String { "\(field): \(message)" }
}

extension APIError {
    /// One error for all the problems of a spec: the first problem's code, every problem in the message.
    public init(problems: [ValidationProblem]) {
        precondition(!problems.isEmpty)
        self.init(problems[0].code, problems.map(\.description).joined(separator: "; "))
    }
}
