/// An identifier with a fixed prefix and 8 random lowercase letters and digits, as the API shows them
/// (`job-n4ohivif`, `env-3kq9x0ab`).
public protocol PrefixedID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
where RawValue == String {
    static var prefix: String { get }
    init(rawValue: String)
}

extension PrefixedID {
    /// A new random identifier.
    public static func generate() -> Self {
        var generator = SystemRandomNumberGenerator()
        return generate(using: &generator)
    }

    public static func generate<G: RandomNumberGenerator>(using generator: inout G) -> Self {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        let suffix = String((0..<8).map { _ in alphabet.randomElement(using: &generator)! })
        return Self(rawValue: "\(prefix)-\(suffix)")
    }

    /// Parses `string`, returning nil unless it is the prefix, a dash and 1 to 64 letters, digits, `-` or `_`.
    public init?(validating string: String) {
        guard string.hasPrefix(Self.prefix + "-") else { return nil }
        let suffix = string.dropFirst(Self.prefix.count + 1)
        guard (1...64).contains(suffix.count),
            suffix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
        else { return nil }
        self.init(rawValue: string)
    }

    public init(stringLiteral value: String) { self.init(rawValue: value) }
    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A job's id: `job-xxxxxxxx`.
public struct JobID: PrefixedID {
    public static let prefix = "job"
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}

/// A compute environment's id: `env-xxxxxxxx`.
public struct EnvID: PrefixedID {
    public static let prefix = "env"
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}

/// A compute node's id: `node-xxxxxxxx`.
public struct NodeID: PrefixedID {
    public static let prefix = "node"
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}

/// A user's id: `user-xxxxxxxx`. Every job, environment and template belongs to one user.
public struct UserID: PrefixedID {
    public static let prefix = "user"
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}

/// A task template's id: `tmpl-xxxxxxxx`.
public struct TaskTemplateID: PrefixedID {
    public static let prefix = "tmpl"
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}
