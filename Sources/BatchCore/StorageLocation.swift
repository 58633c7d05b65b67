/// A place in remote storage, parsed from a mapping or redirect path.
///
/// - `file:///shared/data` is a directory of a shared file system mounted at the same path on every node.
/// - `s3://bucket/prefix` is an S3-compatible object store.
/// - `cos://bucket-appid.cos.region.myqcloud.com/prefix` (Tencent Cloud's form) is read as S3 with that bucket.
public enum StorageLocation: Sendable, Hashable, CustomStringConvertible {
    case file(path: String)
    case s3(bucket: String, key: String)

    public static let supportedSchemes = ["file", "s3", "cos"]

    public enum ParseError: Error, Sendable, Hashable {
        /// The scheme is missing or not one of ``supportedSchemes``.
        case unsupportedScheme(String)
        /// The scheme is known but the rest is not a usable location.
        case malformed(String)
    }

    public static func parse(_ string: String) -> Result<StorageLocation, ParseError> {
        guard let separator = string.range(of: "://") else { return .failure(.unsupportedScheme("")) }
        let scheme = string[..<separator.lowerBound].lowercased()
        let rest = String(string[separator.upperBound...])
        switch scheme {
        case "file":
            guard rest.hasPrefix("/"), case .valid = LocalPath.check(rest) else {
                return .failure(.malformed("file:// needs an absolute path without `..`, e.g. file:///shared/data"))
            }
            return .success(.file(path: rest))
        case "s3", "cos":
            let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let host = parts.first, !host.isEmpty else {
                return .failure(.malformed("\(scheme):// needs a bucket, e.g. \(scheme)://bucket/prefix"))
            }
            let bucket = scheme == "cos" ? String(host.split(separator: ".").first ?? host) : String(host)
            let key = parts.count > 1 ? String(parts[1]) : ""
            guard !key.split(separator: "/").contains("..") else {
                return .failure(.malformed("the key must not contain `..`"))
            }
            return .success(.s3(bucket: bucket, key: key))
        default:
            return .failure(.unsupportedScheme(scheme))
        }
    }

    public var description: String {
        switch self {
        case .file(let path): "file://\(path)"
        case .s3(let bucket, let key): "s3://\(bucket)/\(key)"
        }
    }
}

/// Checks on a path inside an instance (a mapping's local side, a local redirect).
public enum LocalPath {
    public enum Verdict: Sendable, Hashable {
        case valid
        case relative
        case traversal
        case systemDirectory(String)
    }

    /// Directories an instance may not map over.
    public static let systemDirectories: Set<String> = [
        "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys", "/usr",
        "/var",
    ]

    public static func check(_ path: String) -> Verdict {
        guard path.hasPrefix("/") else { return .relative }
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        if components.contains("..") || components.contains(".") { return .traversal }
        let normalized = "/" + components.joined(separator: "/")
        if systemDirectories.contains(normalized) { return .systemDirectory(normalized) }
        return .valid
    }
}

/// What a package (`Application.PackagePath`, a `.tar.gz` unpacked into the instance's work dir) may hold: names
/// inside the work dir, and links that stay inside it.
public enum PackageEntry {
    /// Why a member name is refused (an absolute name, or one with a `..` component), or nil.
    public static func refusal(name: String) -> String? {
        if name.hasPrefix("/") { return "\(name.prefix(200)) is an absolute name" }
        if name.split(separator: "/").contains("..") { return "\(name.prefix(200)) leaves the work dir (..)" }
        return nil
    }

    /// Whether a symbolic link at `path` (relative to the work dir) to `target` stays inside the work dir.
    public static func linkStaysInside(path: String, target: String) -> Bool {
        guard !target.hasPrefix("/") else { return false }
        var depth = path.split(separator: "/").count - 1  // the link's directory
        guard depth >= 0 else { return false }
        for component in target.split(separator: "/") {
            switch component {
            case ".": continue
            case "..":
                depth -= 1
                if depth < 0 { return false }
            default: depth += 1
            }
        }
        return true
    }
}
