/// What a tenant may ask of a node, decided without I/O: the `docker run` options a task may add, the file names
/// its logs may be stored under, and the `file://` paths an executor may touch on its behalf.
public enum Isolation {
    /// `docker run` options a task's `Docker.DockerRunOption` may hold, and whether each takes a value. Everything
    /// else is refused by name: privileges, host mounts, host namespaces, devices, capabilities, the user, the
    /// network, security options and anything unknown.
    public static let allowedDockerRunOptions: [String: Bool] = [
        "--cpus": true, "--cpu-shares": true, "-c": true, "--memory": true, "-m": true, "--memory-swap": true,
        "--memory-reservation": true, "--shm-size": true, "--ulimit": true, "--env": true, "-e": true,
        "--workdir": true, "-w": true, "--entrypoint": true, "--init": false, "--read-only": false, "--tmpfs": true,
        "--label": true, "-l": true, "--hostname": true, "--pids-limit": true, "--stop-timeout": true,
        "--stop-signal": true, "--tty": false, "-t": false, "--interactive": false, "-i": false, "--rm": false,
    ]

    /// Why `option` (a task's `DockerRunOption`, split on spaces as the executor splits it) is refused; nil when
    /// every option in it is allowed.
    public static func dockerRunOptionRefusal(_ option: String) -> String? {
        let words = option.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        var index = 0
        while index < words.count {
            let word = words[index]
            let name = word.hasPrefix("--") ? String(word.prefix { $0 != "=" }) : word
            guard name.hasPrefix("-") else { return "\(name.prefix(40)) is not an option" }
            guard let takesValue = allowedDockerRunOptions[name] else {
                let allowed = allowedDockerRunOptions.keys.sorted().joined(separator: " ")
                return "\(name.prefix(40)) is not allowed (allowed: \(allowed))"
            }
            if takesValue && !word.contains("=") {
                guard index + 1 < words.count else { return "\(name) needs a value" }
                let value = words[index + 1]
                if name == "--tmpfs", !value.hasPrefix("/") { return "--tmpfs needs an absolute path" }
                index += 1
            }
            index += 1
        }
        return nil
    }

    /// Why `name` cannot be a log's file name in storage (`RedirectInfo.StdoutRedirectFileName`); nil when it can: one
    /// plain name, not `.` or `..`, no `/`, no control characters, at most 255 bytes.
    public static func redirectFileNameRefusal(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name == "." || name == ".." { return "must be a file name, not \(name)" }
        if name.contains("/") { return "must be a file name without /" }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            return "must not contain control characters"
        }
        if name.utf8.count > 255 { return "longer than 255 bytes" }
        return nil
    }

    /// Whether `range` is an IPv4 address or CIDR range in plain decimal (`10.1.0.0/16`), as the operator may open
    /// to egress (`--egress-allow`): nothing else reaches the node's packet filter.
    public static func isIPv4Range(_ range: String) -> Bool {
        let parts = range.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return false }
        func decimal(_ text: Substring, upTo limit: Int) -> Bool {
            !text.isEmpty && text.count <= 3 && text.allSatisfy { $0 >= "0" && $0 <= "9" }
                && Int(text).map { $0 <= limit && String($0) == text } == true
        }
        if parts.count == 2, !decimal(parts[1], upTo: 32) { return false }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { decimal($0, upTo: 255) }
    }
}

/// The directories of the node's shared file systems that `file://` mappings, packages and redirects may use,
/// as the operator declared them (`BATCH_STORAGE_ROOTS`). A path outside every root is refused; so is one inside
/// a directory the node keeps for itself (its work dirs).
public struct StorageRoots: Sendable, Hashable {
    public let roots: [String]
    public let excluded: [String]

    public init(_ roots: [String], excluding excluded: [String] = []) {
        self.roots = roots.compactMap(Self.normalize)
        self.excluded = excluded.compactMap(Self.normalize)
    }

    /// `/a//b/` as `/a/b`; nil for a relative path or one with `.` or `..`.
    static func normalize(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return nil }
        let components = path.split(separator: "/")
        guard !components.contains("."), !components.contains("..") else { return nil }
        return "/" + components.joined(separator: "/")
    }

    static func isInside(_ path: String, _ directory: String) -> Bool {
        directory == "/" || path == directory || path.hasPrefix(directory + "/")
    }

    /// Why `path` (absolute, as it resolves on the node) is refused; nil when it is inside a root and outside every
    /// excluded directory.
    public func refusal(_ path: String) -> String? {
        guard let normalized = Self.normalize(path) else { return "\(path.prefix(200)) is not an absolute path" }
        if roots.isEmpty {
            return
                "file://\(normalized.prefix(200)) is refused: this node declares no storage roots (BATCH_STORAGE_ROOTS)"
        }
        if excluded.contains(where: { Self.isInside(normalized, $0) || Self.isInside($0, normalized) }) {
            return "file://\(normalized.prefix(200)) is refused: it holds the node's own work dirs"
        }
        guard roots.contains(where: { Self.isInside(normalized, $0) }) else {
            return "file://\(normalized.prefix(200)) is refused: outside the node's storage roots "
                + "(\(roots.joined(separator: ", ").prefix(300)))"
        }
        return nil
    }
}

/// What one instance may use of its node, enforced with cgroups: memory (no swap beyond it), processes and threads,
/// and a CPU weight.
public struct InstanceLimits: Sendable, Hashable, Codable {
    public var memoryBytes: Int64
    public var pids: Int
    /// A CPU weight relative to other instances and the node's own processes (cgroup v1 `cpu.shares`, 1024 = one
    /// default process's; v2's `cpu.weight` is derived).
    public var cpuShares: Int
    /// The largest file an instance may write, its logs included (`RLIMIT_FSIZE`).
    public var fileBytes: Int64
    /// What an instance's attempt directory (its work dir, downloaded inputs and logs) may hold on disk, measured
    /// every few seconds while it runs (as Kubernetes measures ephemeral storage).
    public var diskBytes: Int64

    public init(
        memoryBytes: Int64, pids: Int, cpuShares: Int, fileBytes: Int64 = defaultFileBytes,
        diskBytes: Int64 = defaultDiskBytes
    ) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuShares = cpuShares
        self.fileBytes = fileBytes
        self.diskBytes = diskBytes
    }

    /// The default pids limit: enough for a parallel build, far below the node's.
    public static let defaultPids = 1024
    /// The default largest file: 10 GiB.
    public static let defaultFileBytes: Int64 = 10 << 30
    /// The default disk an attempt directory may use: 20 GiB.
    public static let defaultDiskBytes: Int64 = 20 << 30

    /// The default for a node: its memory divided by its slots, at least 64 MiB.
    public static func defaults(nodeMemoryBytes: Int64, slots: Int) -> InstanceLimits {
        InstanceLimits(
            memoryBytes: max(64 << 20, nodeMemoryBytes / Int64(max(1, slots))), pids: defaultPids, cpuShares: 1024)
    }

    /// cgroup v2's `cpu.weight` (1–10000, default 100) for these shares.
    public var cpuWeight: Int { min(10_000, max(1, cpuShares * 100 / 1024)) }

    /// The instance's `StateReason` when the kernel killed it for memory.
    public var memoryReason: String {
        "killed: the instance used more than its memory limit of \(Self.mebibytes(memoryBytes)) MiB"
    }

    /// The instance's `StateReason` when the node stopped it for the disk its attempt directory used.
    public var diskReason: String {
        "killed: the instance's work directory grew past its disk limit of \(Self.mebibytes(diskBytes)) MiB"
    }

    static func mebibytes(_ bytes: Int64) -> Int64 { bytes >> 20 }
}
