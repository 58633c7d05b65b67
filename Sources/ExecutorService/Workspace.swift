import BatchCore
import BatchRuntime
import Foundation
import Messaging
import Storage

#if canImport(Glibc)
    import Glibc
#endif

/// One attempt's directory on the node, and the transfers around its run.
///
/// Layout: `work/` is the command's working directory (a package is unpacked there), `root/` holds the storage
/// mappings' paths (the instance's `/data/in` is `root/data/in`, bind-mounted at `/data/in` in the sandbox), and
/// `stdout.log`/`stderr.log` the command's output while it runs. Without a sandbox the mappings' paths are used as
/// they are on the node.
///
/// `file://` paths (mappings, packages, redirects) must lie inside the operator's storage roots, as they resolve
/// on the node, and outside the node's work dirs; in the sandbox they are copied by a process running as the
/// instance's user (`setpriv`), so the executor's rights never read or write a file for an instance.
struct Workspace {
    let attempt: URL
    let run: InstanceRun
    let sandboxed: Bool
    let storage: Storage
    let roots: StorageRoots
    /// The instance's user, who does its `file://` transfers (nil: the executor does them).
    let user: InstanceUser?
    // Made once: a `URL` appended to is parsed again (a node's samples showed 7% in `URL.appendingPathComponent`).
    let work: URL
    let root: URL
    let stdout: URL
    let stderr: URL
    var io: InstanceIO { run.io ?? InstanceIO() }

    /// Why an attempt could not run or finish, as the instance's reason says it.
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    init(
        attempt: URL, run: InstanceRun, sandboxed: Bool, nodeStorage: NodeStorage, roots: StorageRoots,
        user: InstanceUser? = nil
    ) {
        self.roots = roots
        self.user = user
        self.attempt = attempt
        work = attempt.appendingPathComponent("work", isDirectory: true)
        root = attempt.appendingPathComponent("root", isDirectory: true)
        stdout = attempt.appendingPathComponent("stdout.log")
        stderr = attempt.appendingPathComponent("stderr.log")
        self.run = run
        self.sandboxed = sandboxed
        self.storage = nodeStorage.storage(for: run.io ?? InstanceIO())
    }

    /// The node's own path for a path inside the instance.
    func host(_ inside: String) -> URL {
        sandboxed
            ? root.appendingPathComponent(String(inside.drop(while: { $0 == "/" }))) : URL(fileURLWithPath: inside)
    }

    /// `${BATCH_JOB_ID}`, `${BATCH_TASK_NAME}` and `${BATCH_TASK_INSTANCE_INDEX}` filled in.
    func expand(_ text: String) -> String {
        text.replacingOccurrences(of: "${BATCH_JOB_ID}", with: run.jobID.rawValue)
            .replacingOccurrences(of: "${BATCH_TASK_NAME}", with: run.taskName)
            .replacingOccurrences(of: "${BATCH_TASK_INSTANCE_INDEX}", with: String(run.instanceIndex))
    }

    func location(_ path: String, _ what: String) throws -> StorageLocation {
        switch StorageLocation.parse(expand(path)) {
        case .success(let location): return location
        case .failure(let error): throw Failure(description: "\(what) \(path) is not a storage path: \(error)")
        }
    }

    /// The directories the mappings put in the instance (outermost only): an input's destination, or its parent
    /// when it is a file; an output's source when it ends with `/`, otherwise its parent.
    var mountPoints: [String] {
        var points: [String] = []
        for mapping in io.inputMappings {
            let path = mapping.destinationPath
            var isDirectory: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: host(path).path, isDirectory: &isDirectory)
            points.append(path.hasSuffix("/") || (exists && isDirectory.boolValue) ? path : parent(path))
        }
        for mapping in io.outputMappings {
            points.append(mapping.sourcePath.hasSuffix("/") ? mapping.sourcePath : parent(mapping.sourcePath))
        }
        let normalized = Set(points.map { "/" + $0.split(separator: "/").joined(separator: "/") })
        return normalized.filter { point in
            !normalized.contains { $0 != point && point.hasPrefix($0 == "/" ? "/" : $0 + "/") }
        }.sorted()
    }

    private func parent(_ path: String) -> String { (path as NSString).deletingLastPathComponent }

    /// Makes `directory` and any missing parents, none writable but by their owner (an attempt's directory holds its
    /// logs: an instance must not swap them for links). One `mkdir` when its parent is there, as an attempt's
    /// directories' parents are: `FileManager`'s way (a `stat` of each component first) cost a node a tenth of its CPU.
    static func makeDirectory(_ directory: URL) throws {
        if mkdir(directory.path, 0o755) == 0 { return }
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    }

    /// Makes the directories, fetches and unpacks the package, and fetches the inputs.
    func prepare() async throws {
        let files = FileManager.default
        try Self.makeDirectory(work)
        if let user {
            // The instance's user fetches `file://` inputs into its own directories.
            try Self.makeDirectory(root)
            for directory in [work, root] { lchown(directory.path, user.uid, user.gid) }
        }
        if let packagePath = io.packagePath {
            var package = attempt.appendingPathComponent("package.tar.gz")
            if let user {
                let fetched = attempt.appendingPathComponent("package", isDirectory: true)
                try Self.makeDirectory(fetched)
                lchown(fetched.path, user.uid, user.gid)
                package = fetched.appendingPathComponent("package.tar.gz")
            }
            try await fetch(try location(packagePath, "the package"), to: package, what: "the package was not fetched")
            try await unpack(package, from: packagePath)
        }
        for mapping in io.inputMappings {
            try await fetch(
                try location(mapping.sourcePath, "the input"), to: host(mapping.destinationPath),
                intoDirectory: mapping.destinationPath.hasSuffix("/"), what: "input not fetched")
        }
        for point in mountPoints {
            guard point != "/" else {
                throw Failure(description: "a mapping's local path must be inside a directory, not directly in /")
            }
            if sandboxed { try files.createDirectory(at: host(point), withIntermediateDirectories: true) }
        }
        for mapping in io.outputMappings where mapping.sourcePath.hasSuffix("/") {
            try files.createDirectory(at: host(mapping.sourcePath), withIntermediateDirectories: true)
        }
    }

    /// Unpacks the package into `work/`: refused when a member's name is absolute or climbs out with `..`, or when
    /// it holds a symbolic link to something outside the work dir (the node, not only the sandboxed instance, reads
    /// the work dir). Owners and set-id bits are not restored.
    private func unpack(_ package: URL, from packagePath: String) async throws {
        let output = attempt.appendingPathComponent("unpack.out")
        let log = attempt.appendingPathComponent("unpack.log")
        /// Runs tar; returns what it printed on stdout.
        func tar(_ arguments: [String]) async throws -> String {
            defer {
                try? FileManager.default.removeItem(at: output)
                try? FileManager.default.removeItem(at: log)
            }
            let child = try ChildProcess(
                executable: "/bin/tar", arguments: arguments, environment: ["PATH": "/usr/bin:/bin"],
                stdout: output.path, stderr: log.path)
            let result = await child.wait()
            guard result == .exited(0) else {
                let said = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").trimmingCharacters(
                    in: .whitespacesAndNewlines)
                throw Failure(
                    description: "the package \(packagePath) is not a .tar.gz: "
                        + (said.isEmpty ? result.description : said))
            }
            return (try? String(contentsOf: output, encoding: .utf8)) ?? ""
        }
        for name in try await tar(["-tzf", package.path]).split(separator: "\n") {
            if let refusal = PackageEntry.refusal(name: String(name)) {
                throw Failure(description: "the package \(packagePath) is refused: \(refusal)")
            }
        }
        _ = try await tar(["-xzf", package.path, "-C", work.path, "--no-same-owner", "--no-same-permissions"])
        let root = work.resolvingSymlinksInPath().path
        let files = FileManager.default
        for relative in files.enumerator(atPath: work.path)?.compactMap({ $0 as? String }) ?? [] {
            let path = work.appendingPathComponent(relative).path
            guard let target = try? files.destinationOfSymbolicLink(atPath: path) else { continue }
            let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            let inside =
                files.fileExists(atPath: path)
                ? real == root || real.hasPrefix(root + "/")
                : PackageEntry.linkStaysInside(path: relative, target: target)
            guard inside, !target.hasPrefix("/") else {
                try? files.removeItem(at: work)
                throw Failure(
                    description:
                        "the package \(packagePath) is refused: \(relative.prefix(200)) links to \(target.prefix(200)), "
                        + "outside the work dir")
            }
        }
    }

    /// Uploads the outputs (after a successful run).
    func uploadOutputs() async throws {
        for mapping in io.outputMappings {
            let destination = try location(mapping.destinationPath, "the output destination")
            try await store(
                host(mapping.sourcePath), to: destination, what: "output \(mapping.sourcePath) not uploaded")
        }
    }

    /// Fetches `location` to `destination` (``Storage/fetch(_:to:intoDirectory:)``): a `file://` one only inside the
    /// storage roots, and as the instance's user when it has one.
    func fetch(_ location: StorageLocation, to destination: URL, intoDirectory: Bool = false, what: String)
        async throws
    {
        try await transfer(location, what: what) {
            try await storage.fetch(location, to: destination, intoDirectory: intoDirectory)
        } asUser: { user, path in
            let fileTarget = Storage.fileTarget(
                destination, name: (path as NSString).lastPathComponent, intoDirectory)
            try await copy(as: user, ["fetch", path, destination.path, fileTarget.path], source: location)
        }
    }

    /// Stores `source` (a file or directory of the attempt's) at `location` (``Storage/store(_:to:within:)``): never
    /// a file that is, or is reached through, a link out of the attempt's directory; a `file://` one only inside the
    /// storage roots, and as the instance's user when it has one.
    func store(_ source: URL, to location: StorageLocation, what: String) async throws {
        try await transfer(location, what: what) {
            try await storage.store(source, to: location, within: attempt)
        } asUser: { user, path in
            try Storage.refuseLinksOut(of: source, within: attempt)
            let fileTarget = Storage.fileTarget(
                URL(fileURLWithPath: path), name: source.lastPathComponent, path.hasSuffix("/"))
            try await copy(as: user, ["store", source.path, path, fileTarget.path], source: .file(path: source.path))
        }
    }

    /// Runs `byNode` (the executor's own transfer), unless `location` is a `file://` path: that one must be inside
    /// the storage roots, and goes through `asUser` when the instance has a user. A storage error fails the attempt
    /// with `what`.
    private func transfer(
        _ location: StorageLocation, what: String, byNode: () async throws -> Void,
        asUser: (InstanceUser, String) async throws -> Void
    ) async throws {
        do {
            guard case .file(let path) = location else { return try await byNode() }
            try checkStoragePath(path)
            if let user { try await asUser(user, path) } else { try await byNode() }
        } catch let error as StorageError {
            throw Failure(description: "\(what): \(error)")
        }
    }

    /// Refuses a `file://` path outside the storage roots or inside the node's work dirs, as written and as it
    /// resolves now (a link inside a root to elsewhere is followed to where it leads).
    func checkStoragePath(_ path: String) throws {
        for candidate in [path, Self.resolved(path)] {
            if let refusal = roots.refusal(candidate) { throw StorageError.refused(refusal) }
        }
    }

    /// `path` with its longest existing prefix's links resolved.
    static func resolved(_ path: String) -> String {
        var existing = URL(fileURLWithPath: path).standardizedFileURL
        var rest: [String] = []
        while !FileManager.default.fileExists(atPath: existing.path), existing.path != "/" {
            rest.insert(existing.lastPathComponent, at: 0)
            existing.deleteLastPathComponent()
        }
        var result = existing.resolvingSymlinksInPath()
        for component in rest { result.appendPathComponent(component) }
        return result.path
    }

    /// Copies a file or directory as `user` (`fetch SOURCE DIRECTORY FILE` or `store SOURCE DIRECTORY FILE`: a
    /// directory's contents go into DIRECTORY, a file to FILE), so that only what that user may read is read and only
    /// where it may write is written. Links in a fetched directory are copied as links; a stored one's are followed
    /// (``Storage/refuseLinksOut(of:within:)`` has checked them).
    private func copy(as user: InstanceUser, _ arguments: [String], source: StorageLocation) async throws {
        let script = """
            mode=$1 source=$2 directory=$3 file=$4
            if [ "$mode" = fetch ]; then follow=-P; else follow=-L; fi
            if [ -d "$source" ]; then
                mkdir -p -- "$directory" && cp -R $follow --no-preserve=all -- "$source"/. "$directory"/
            elif [ -e "$source" ]; then
                mkdir -p -- "$(dirname -- "$file")" && cp -L --no-preserve=all -- "$source" "$file"
            else
                exit 3
            fi
            """
        let log = attempt.appendingPathComponent("transfer.log")
        defer { try? FileManager.default.removeItem(at: log) }
        let command = user.command(["/bin/sh", "-c", script, "sh"] + arguments)
        let child = try await ChildProcess.start(
            executable: command[0], arguments: Array(command.dropFirst()),
            environment: ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"], stdout: log.path, stderr: log.path)
        let termination = await child.wait()
        if termination == .exited(3) { throw StorageError.notFound(source.description) }
        guard termination == .exited(0) else {
            let said = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").trimmingCharacters(
                in: .whitespacesAndNewlines)
            throw StorageError.local(
                path: source.description, "cannot be copied as \(user.name): \(said.prefix(500))")
        }
    }

    /// Uploads stdout and stderr where `RedirectInfo` says; returns what went wrong, if anything.
    func uploadLogs() async -> String? {
        guard let redirect = io.redirectInfo else { return nil }
        let streams = [
            (stdout, redirect.stdoutRedirectPath, redirect.stdoutRedirectFileName, "stdout"),
            (stderr, redirect.stderrRedirectPath, redirect.stderrRedirectFileName, "stderr"),
        ]
        var problems: [String] = []
        for (file, path, name, stream) in streams {
            guard let path, !path.isEmpty else { continue }
            let fileName = expand(name ?? "${BATCH_JOB_ID}_${BATCH_TASK_NAME}_${BATCH_TASK_INSTANCE_INDEX}.\(stream)")
            do {
                let directory = try location(path.hasSuffix("/") ? path : path + "/", "the \(stream) redirect path")
                let target: StorageLocation
                switch directory {
                case .file(let base): target = .file(path: base + fileName)
                case .s3(let bucket, let key): target = .s3(bucket: bucket, key: key + fileName)
                }
                if !FileManager.default.fileExists(atPath: file.path) {
                    FileManager.default.createFile(atPath: file.path, contents: nil)
                }
                try await store(file, to: target, what: "\(stream) log not uploaded")
            } catch let failure as Failure {
                problems.append(failure.description)
            } catch {
                problems.append("\(stream) log not uploaded: \(error)")
            }
        }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }
}

/// The node's storage settings: where `s3://` goes and with what region; tasks bring their own credentials
/// (`Authentications`), else the node's own are used.
struct NodeStorage: Sendable {
    var endpoint: URL?
    var region: String
    var credentials: AWSSignatureV4.Credentials?

    static func fromEnvironment() -> NodeStorage {
        let environment = ProcessInfo.processInfo.environment
        let endpoint = (environment["BATCH_S3_ENDPOINT"] ?? environment["AWS_ENDPOINT_URL_S3"]).flatMap {
            URL(string: $0)
        }
        let region = environment["BATCH_S3_REGION"] ?? environment["AWS_REGION"] ?? "us-east-1"
        var credentials: AWSSignatureV4.Credentials?
        if let key = environment["AWS_ACCESS_KEY_ID"], let secret = environment["AWS_SECRET_ACCESS_KEY"] {
            credentials = .init(
                accessKeyID: key, secretAccessKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"])
        }
        return NodeStorage(endpoint: endpoint, region: region, credentials: credentials)
    }

    func storage(for io: InstanceIO) -> Storage {
        let authentication = io.authentications.first { ["S3", "COS"].contains($0.scene.uppercased()) }
        let config = io.outputMappingConfigs.first
        return Storage(
            endpoint: endpoint, region: region,
            credentials: authentication.map {
                .init(accessKeyID: $0.secretId, secretAccessKey: $0.secretKey)
            } ?? credentials,
            partSize: (config?.workerPartSize).map { $0 << 20 } ?? Storage.defaultPartSize,
            workers: config?.workerNum ?? 4)
    }
}
