/// Per-user and per-environment limits, with the API's codes and a reason naming the limit.
public struct Quotas: Sendable, Hashable {
    public enum Kind: String, Sendable, CaseIterable {
        case jobs
        case taskTemplates = "task templates"
        case computeEnvs = "compute environments"
        case nodesPerEnv = "nodes in one compute environment"
    }

    /// Jobs a user keeps (not deleted). Default 1000.
    public var jobsPerUser = 1000
    /// Task templates a user keeps. Default 50.
    public var taskTemplatesPerUser = 50
    /// Compute environments a user keeps. Default 10.
    public var computeEnvsPerUser = 10
    /// Nodes in one compute environment. Default 2000.
    public var nodesPerEnv = 2000

    public init() {}

    public func limit(_ kind: Kind) -> Int {
        switch kind {
        case .jobs: jobsPerUser
        case .taskTemplates: taskTemplatesPerUser
        case .computeEnvs: computeEnvsPerUser
        case .nodesPerEnv: nodesPerEnv
        }
    }

    /// A limit that adding `adding` to `current` would pass.
    public struct Violation: Error, Sendable, Hashable, CustomStringConvertible {
        public var kind: Kind
        public var limit: Int
        public var current: Int

        public init(kind: Kind, limit: Int, current: Int) {
            self.kind = kind
            self.limit = limit
            self.current = current
        }

        public var code: APIError.Code {
            switch kind {
            case .jobs: .jobQuota
            case .taskTemplates: .taskTemplateQuota
            case .computeEnvs: .computeEnvQuota
            case .nodesPerEnv: .limitExceededValue
            }
        }

        public var description: String {
            kind == .nodesPerEnv
                ? "at most \(limit) \(kind.rawValue); it has \(current)"
                : "quota of \(limit) \(kind.rawValue) per user reached (\(current) in use)"
        }

        public var apiError: APIError { APIError(code, description) }
    }

    /// Nil when `current + adding` stays within the limit.
    public func check(_ kind: Kind, current: Int, adding: Int = 1) -> Violation? {
        current + adding <= limit(kind) ? nil : Violation(kind: kind, limit: limit(kind), current: current)
    }
}
