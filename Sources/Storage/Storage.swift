import AsyncHTTPClient
import BatchCore
import Foundation

/// Why a transfer failed, in words a user can act on. Never holds a credential.
public enum StorageError: Error, Sendable, CustomStringConvertible {
    /// Nothing exists at an input's or a package's path.
    case notFound(String)
    /// The store answered with an error (wrong credentials, no such bucket, access denied, …).
    case remote(target: String, operation: String, status: Int, code: String, message: String)
    /// The store could not be reached.
    case unreachable(target: String, endpoint: String, String)
    /// A local file or directory could not be read or written.
    case local(path: String, String)
    /// `s3://` without an endpoint to send it to.
    case noEndpoint(String)
    /// The node does not allow the path (outside its storage roots, a link out of the instance's files).
    case refused(String)

    public var description: String {
        switch self {
        case .notFound(let target): "\(target) does not exist"
        case .remote(let target, let operation, let status, let code, let message):
            "\(target): \(operation) failed with \(status) \(code)" + (message.isEmpty ? "" : ": \(message)")
        case .unreachable(let target, let endpoint, let error): "\(target): \(endpoint) cannot be reached: \(error)"
        case .local(let path, let problem): "\(path) \(problem)"
        case .refused(let reason): reason
        case .noEndpoint(let target):
            "\(target): no S3 endpoint is configured (give the node BATCH_S3_ENDPOINT, or the Authentication an "
                + "Endpoint)"
        }
    }
}

/// Copies between the node's disk and remote storage: `file://` paths of a shared file system and `s3://` objects
/// of an S3-compatible store. A location is a file or a directory (a key prefix); directories are copied whole.
public struct Storage: Sendable {
    /// Where `s3://` requests go; nil when the node has no object store.
    public var endpoint: URL?
    public var region: String
    public var credentials: AWSSignatureV4.Credentials?
    /// Size of each part of a multipart upload, and how many go at once (`OutputMappingConfigs`).
    public var partSize: Int
    public var workers: Int
    let http: HTTPClient

    public static let defaultPartSize = 8 << 20
    /// S3's smallest part (but the last).
    public static let minimumPartSize = 5 << 20

    public init(
        endpoint: URL?, region: String = "us-east-1", credentials: AWSSignatureV4.Credentials?,
        partSize: Int = Storage.defaultPartSize, workers: Int = 4, http: HTTPClient = .shared
    ) {
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.partSize = max(Storage.minimumPartSize, partSize)
        self.workers = max(1, workers)
        self.http = http
    }

    func s3(_ target: String) throws -> S3Client {
        guard let endpoint else { throw StorageError.noEndpoint(target) }
        return S3Client(endpoint: endpoint, region: region, credentials: credentials, http: http)
    }

    /// Fetches `location` to `destination`. A file goes to `destination`, or into it when `destination` is a
    /// directory (or `intoDirectory`); a directory's files go under `destination`. Returns the bytes fetched.
    @discardableResult
    public func fetch(_ location: StorageLocation, to destination: URL, intoDirectory: Bool = false) async throws
        -> Int64
    {
        let files = FileManager.default
        switch location {
        case .file(let path):
            var isDirectory: ObjCBool = false
            guard files.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw StorageError.notFound(location.description)
            }
            if isDirectory.boolValue {
                return try copyTree(from: URL(fileURLWithPath: path), to: destination)
            }
            let target = Self.fileTarget(destination, name: (path as NSString).lastPathComponent, intoDirectory)
            return try copyFile(from: URL(fileURLWithPath: path), to: target)
        case .s3(let bucket, let key):
            let client = try s3(location.description)
            if !key.isEmpty, !key.hasSuffix("/"), let size = try await client.size(bucket: bucket, key: key) {
                let target = Self.fileTarget(destination, name: (key as NSString).lastPathComponent, intoDirectory)
                try await client.download(bucket: bucket, key: key, to: target)
                return size
            }
            let prefix = key.isEmpty || key.hasSuffix("/") ? key : key + "/"
            let objects = try await client.list(bucket: bucket, prefix: prefix).filter { !$0.key.hasSuffix("/") }
            guard !objects.isEmpty else { throw StorageError.notFound(location.description) }
            try files.createDirectory(at: destination, withIntermediateDirectories: true)
            for object in objects {
                let relative = String(object.key.dropFirst(prefix.count))
                guard !relative.split(separator: "/").contains("..") else { continue }
                try await client.download(
                    bucket: bucket, key: object.key, to: destination.appendingPathComponent(relative))
            }
            return objects.reduce(0) { $0 + $1.size }
        }
    }

    /// Uploads `source` (a file or a directory) to `location`. A file goes to the location, or under it when the
    /// location ends with `/`; a directory's files go under the location with their relative paths. Returns the
    /// bytes stored. With `within`, a file that is (or is reached through) a symbolic link to something outside
    /// that directory is refused: an instance's link must not make its node upload the node's own files.
    @discardableResult
    public func store(_ source: URL, to location: StorageLocation, within: URL? = nil) async throws -> Int64 {
        let files = FileManager.default
        var isDirectory: ObjCBool = false
        guard files.fileExists(atPath: source.path, isDirectory: &isDirectory) else {
            throw StorageError.local(path: source.path, "does not exist")
        }
        let sources: [(URL, String)]
        if isDirectory.boolValue {
            sources = try Self.filesUnder(source).map { ($0, Self.relativePath(of: $0, under: source)) }
        } else {
            sources = [(source, "")]
        }
        if let within { try Self.refuseLinksOut(of: sources.map(\.0), within: within) }
        var total: Int64 = 0
        switch location {
        case .file(let path):
            for (file, relative) in sources {
                let target =
                    relative.isEmpty
                    ? Self.fileTarget(
                        URL(fileURLWithPath: path), name: file.lastPathComponent, path.hasSuffix("/"))
                    : URL(fileURLWithPath: path).appendingPathComponent(relative)
                total += try copyFile(from: file, to: target)
            }
        case .s3(let bucket, let key):
            let client = try s3(location.description)
            for (file, relative) in sources {
                let objectKey: String
                if relative.isEmpty {
                    objectKey = key.isEmpty || key.hasSuffix("/") ? key + file.lastPathComponent : key
                } else {
                    objectKey = (key.isEmpty || key.hasSuffix("/") ? key : key + "/") + relative
                }
                try await client.upload(
                    file: file, bucket: bucket, key: objectKey, partSize: partSize, workers: workers)
                total += Int64((try? files.attributesOfItem(atPath: file.path)[.size] as? Int) ?? 0)
            }
        }
        return total
    }

    /// Throws when `source` (a file, or a directory's files) is, or is reached through, a symbolic link to something
    /// outside `within`.
    public static func refuseLinksOut(of source: URL, within: URL) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source.path, isDirectory: &isDirectory) else {
            throw StorageError.local(path: source.path, "does not exist")
        }
        try refuseLinksOut(of: isDirectory.boolValue ? try filesUnder(source) : [source], within: within)
    }

    static func refuseLinksOut(of files: [URL], within: URL) throws {
        let root = within.resolvingSymlinksInPath().standardizedFileURL.path
        for file in files {
            let real = file.resolvingSymlinksInPath().standardizedFileURL.path
            guard real == root || real.hasPrefix(root.hasSuffix("/") ? root : root + "/") else {
                throw StorageError.local(path: file.path, "is a link to a file outside the instance's own files")
            }
        }
    }

    public static func fileTarget(_ destination: URL, name: String, _ intoDirectory: Bool) -> URL {
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: destination.path, isDirectory: &isDirectory)
        return intoDirectory || (exists && isDirectory.boolValue)
            ? destination.appendingPathComponent(name) : destination
    }

    static func filesUnder(_ directory: URL) throws -> [URL] {
        guard let enumerator = FileManager.default.enumerator(atPath: directory.path) else {
            throw StorageError.local(path: directory.path, "cannot be read")
        }
        var result: [URL] = []
        while let relative = enumerator.nextObject() as? String {
            let url = directory.appendingPathComponent(relative)
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue {
                result.append(url)
            }
        }
        return result.sorted { $0.path < $1.path }
    }

    static func relativePath(of file: URL, under directory: URL) -> String {
        let base = directory.standardizedFileURL.path
        let path = file.standardizedFileURL.path
        return String(path.dropFirst(base.hasSuffix("/") ? base.count : base.count + 1))
    }

    private func copyTree(from source: URL, to destination: URL) throws -> Int64 {
        try FileManager.default.createDirectory(at: destination, withIntermediateDirectories: true)
        var total: Int64 = 0
        for file in try Self.filesUnder(source) {
            total += try copyFile(
                from: file, to: destination.appendingPathComponent(Self.relativePath(of: file, under: source)))
        }
        return total
    }

    private func copyFile(from source: URL, to target: URL) throws -> Int64 {
        let files = FileManager.default
        do {
            try files.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            if files.fileExists(atPath: target.path) { try files.removeItem(at: target) }
            try files.copyItem(at: source, to: target)
        } catch {
            throw StorageError.local(path: target.path, "cannot be written: \(error.localizedDescription)")
        }
        return Int64((try? files.attributesOfItem(atPath: target.path)[.size] as? Int) ?? 0)
    }
}
