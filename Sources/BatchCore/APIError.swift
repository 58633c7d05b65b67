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

        public static let invalidParameter: Code = "InvalidParameter"
        public static let invalidParameterValue: Code = "InvalidParameterValue"
        public static let missingParameter: Code = "MissingParameter"
        public static let jobNameTooLong: Code = "InvalidParameter.JobNameTooLong"
        public static let taskNameTooLong: Code = "InvalidParameter.TaskNameTooLong"
        public static let envIdMalformed: Code = "InvalidParameter.EnvIdMalformed"
        public static let jobIdMalformed: Code = "InvalidParameter.JobIdMalformed"
        public static let allowedOneAttributeInEnvIdAndComputeEnv: Code = "AllowedOneAttributeInEnvIdAndComputeEnv"
        public static let dependenceNotFoundTaskName: Code = "InvalidParameterValue.DependenceNotFoundTaskName"
        public static let dependenceUnfeasible: Code = "InvalidParameterValue.DependenceUnfeasible"
        public static let taskInstanceNum: Code = "InvalidParameterValue.TaskInstanceNum"
        public static let maxRetryCount: Code = "InvalidParameterValue.MaxRetryCount"
        public static let jobQuota: Code = "LimitExceeded.JobQuota"
        public static let computeEnvQuota: Code = "LimitExceeded.ComputeEnvQuota"
        public static let jobNotFound: Code = "ResourceNotFound.Job"
        public static let computeEnvNotFound: Code = "ResourceNotFound.ComputeEnv"
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
