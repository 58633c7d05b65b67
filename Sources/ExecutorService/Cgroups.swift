import BatchCore
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Per-instance resource limits with Linux control groups: each running instance has a cgroup to itself (memory with
/// no swap beyond it, pids, CPU weight) under a directory of the node's, inside the executor's own cgroup. cgroup v1
/// (one hierarchy per controller: `memory`, `pids`, `cpu`) and v2 (one unified hierarchy) are both supported.
///
/// The node makes one cgroup per slot when it starts and hands them out again and again: making and removing one
/// costs more than the launch itself (16 ms for the three v1 hierarchies on the bench machine). One is given back
/// only once no process is left in it. An instance's first process joins its cgroup in the slot's sandbox before it
/// execs the command (``SlotSandbox``), so nothing it starts escapes; and the cgroup is how its processes are
/// signalled, since the sandbox gives them a session of their own in the slot's PID namespace.
final class Cgroups: Sendable {
    enum Layout: Sendable, Equatable {
        /// One node directory per controller.
        case v1(memory: String, pids: String, cpu: String)
        case v2(String)
    }

    let layout: Layout
    let limits: InstanceLimits
    private let sequence = Atomic<Int>(0)
    /// The cgroups no instance runs in.
    private let free = Mutex<[InstanceCgroup]>([])

    struct Unusable: Error, CustomStringConvertible {
        var description: String
    }

    /// Makes the node's directories (`batch-<node id>`) in the executor's own cgroups and one cgroup per slot with
    /// `limits` set. Throws when this node cannot limit its instances (no cgroup file system, or no right to write
    /// it).
    static func prepare(node: NodeID, slots: Int, limits: InstanceLimits, root: String = "/sys/fs/cgroup") throws
        -> Cgroups
    {
        let files = FileManager.default
        let own = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        /// The executor's cgroup in the hierarchy of `controller` ("" for v2's), as that hierarchy is mounted here.
        func ownPath(_ controller: String, mount: String) -> String {
            for line in own.split(separator: "\n") {
                let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard fields.count == 3 else { continue }
                let controllers = fields[1].split(separator: ",").map(String.init)
                guard controller.isEmpty ? fields[1].isEmpty : controllers.contains(controller) else { continue }
                let path = mount + String(fields[2])
                // A container sees its own cgroup as the root of the mount.
                return files.fileExists(atPath: path) ? path : mount
            }
            return mount
        }
        // Named with the executor's pid, so that a later node can tell (and remove) those of executors gone without
        // removing their own (killed).
        let directory = "batch-\(getpid())-\(node.rawValue)"
        let layout: Layout
        if files.fileExists(atPath: "\(root)/cgroup.controllers") {
            let parent = ownPath("", mount: root)
            let available = ((try? String(contentsOfFile: "\(parent)/cgroup.controllers", encoding: .utf8)) ?? "")
                .split(whereSeparator: \.isWhitespace)
            for controller in ["memory", "pids", "cpu"] where !available.contains(Substring(controller)) {
                throw Unusable(description: "the cgroup v2 controller \(controller) is not available in \(parent)")
            }
            let enabled = ((try? String(contentsOfFile: "\(parent)/cgroup.subtree_control", encoding: .utf8)) ?? "")
                .split(whereSeparator: \.isWhitespace)
            if !["memory", "pids", "cpu"].allSatisfy({ enabled.contains(Substring($0)) }) {
                do {
                    try write("+memory +pids +cpu", to: "\(parent)/cgroup.subtree_control")
                } catch {
                    throw Unusable(
                        description: "cannot delegate the memory, pids and cpu controllers below \(parent) (\(error)); "
                            + "run the executor in a cgroup of its own with them delegated (systemd: Delegate=yes)")
                }
            }
            let nodePath = "\(parent)/\(directory)"
            removeAbandoned(in: parent)
            try makeDirectory(nodePath)
            try write("+memory +pids +cpu", to: "\(nodePath)/cgroup.subtree_control")
            layout = .v2(nodePath)
        } else {
            var paths: [String] = []
            for controller in ["memory", "pids", "cpu"] {
                let mount = "\(root)/\(controller)"
                guard files.fileExists(atPath: "\(mount)/cgroup.procs") else {
                    throw Unusable(description: "no cgroup v1 \(controller) hierarchy at \(mount)")
                }
                let path = "\(ownPath(controller, mount: mount))/\(directory)"
                removeAbandoned(in: (path as NSString).deletingLastPathComponent)
                try makeDirectory(path)
                paths.append(path)
            }
            layout = .v1(memory: paths[0], pids: paths[1], cpu: paths[2])
        }
        let cgroups = Cgroups(layout: layout, limits: limits)
        let made = try (0..<slots).map { _ in try cgroups.make() }
        cgroups.free.withLock { $0 = made }
        return cgroups
    }

    /// Removes the empty cgroups of nodes whose executors are gone (`batch-<pid>-<node id>` with no such process).
    private static func removeAbandoned(in parent: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] where name.hasPrefix("batch-")
        {
            let fields = name.split(separator: "-", maxSplits: 2)
            guard fields.count == 3, let pid = pid_t(fields[1]), kill(pid, 0) != 0, errno == ESRCH else { continue }
            let directory = "\(parent)/\(name)"
            for child in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                rmdir("\(directory)/\(child)")
            }
            rmdir(directory)
        }
    }

    private init(layout: Layout, limits: InstanceLimits) {
        self.layout = layout
        self.limits = limits
    }

    /// A cgroup no process is in: a free one that has emptied (what is left in the others is killed), or a new one
    /// when none has yet.
    func take() throws -> InstanceCgroup {
        let found = free.withLock { free -> InstanceCgroup? in
            // Oldest given back first: the newest is the likeliest to hold its sandbox's last processes still.
            for index in free.indices {
                if free[index].members().isEmpty { return free.remove(at: index) }
                free[index].signal(SIGKILL)
            }
            return nil
        }
        return try found ?? make()
    }

    /// Keeps `cgroup` for the next instance once its instance has ended; what is left in it is killed (the sandbox's
    /// last processes are still leaving as its first ends, and take no time to wait for).
    func giveBack(_ cgroup: InstanceCgroup) {
        cgroup.signal(SIGKILL)
        free.withLock { $0.append(cgroup) }
    }

    /// The node's directories.
    var nodeDirectories: [String] {
        switch layout {
        case .v1(let memory, let pids, let cpu): [memory, pids, cpu]
        case .v2(let path): [path]
        }
    }

    /// A new cgroup with the limits set.
    private func make() throws -> InstanceCgroup {
        let name = "i\(sequence.add(1, ordering: .relaxed).newValue)"
        let directories = nodeDirectories.map { "\($0)/\(name)" }
        do {
            for directory in directories { try Self.makeDirectory(directory) }
            switch layout {
            case .v1:
                let (memory, pids, cpu) = (directories[0], directories[1], directories[2])
                try Self.write(String(limits.memoryBytes), to: "\(memory)/memory.limit_in_bytes")
                // Swap counts too where the kernel accounts for it (memsw must not be below the limit above).
                if FileManager.default.fileExists(atPath: "\(memory)/memory.memsw.limit_in_bytes") {
                    try Self.write(String(limits.memoryBytes), to: "\(memory)/memory.memsw.limit_in_bytes")
                }
                try Self.write(String(limits.pids), to: "\(pids)/pids.max")
                try Self.write(String(limits.cpuShares), to: "\(cpu)/cpu.shares")
            case .v2:
                let path = directories[0]
                try Self.write(String(limits.memoryBytes), to: "\(path)/memory.max")
                if FileManager.default.fileExists(atPath: "\(path)/memory.swap.max") {
                    try Self.write("0", to: "\(path)/memory.swap.max")
                }
                try Self.write(String(limits.pids), to: "\(path)/pids.max")
                try Self.write(String(limits.cpuWeight), to: "\(path)/cpu.weight")
            }
        } catch {
            for directory in directories { rmdir(directory) }
            throw error
        }
        return InstanceCgroup(directories: directories, version2: { if case .v2 = layout { true } else { false } }())
    }

    /// Removes the node's cgroups (once its instances are gone).
    func remove() {
        for cgroup in free.withLock({ $0 }) {
            for directory in cgroup.directories { rmdir(directory) }
        }
        for directory in nodeDirectories { rmdir(directory) }
    }

    static func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw Unusable(description: "cannot make the cgroup \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func write(_ value: String, to file: String) throws {
        let descriptor = open(file, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw Unusable(description: "cannot open \(file): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let written = value.withCString { Glibc.write(descriptor, $0, strlen($0)) }
        guard written >= 0 else {
            throw Unusable(description: "cannot write \(value) to \(file): \(String(cString: strerror(errno)))")
        }
    }
}

/// One attempt's cgroup: where its processes go, how they are signalled, whether the kernel killed one for memory.
struct InstanceCgroup: Sendable {
    let directories: [String]
    let version2: Bool

    /// The `cgroup.procs` files a process joins (one per hierarchy).
    var procsFiles: [String] { directories.map { "\($0)/cgroup.procs" } }

    /// The processes in the cgroup now.
    func members() -> [pid_t] {
        var pids: Set<pid_t> = []
        for file in procsFiles {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") { if let pid = pid_t(line) { pids.insert(pid) } }
        }
        // Oldest first, as a process group's are signalled: a shell hears of a stop before the child it waits for.
        return pids.sorted()
    }

    /// Sends `signal` to every process in the cgroup but `except`.
    func signal(_ signal: Int32, except: pid_t? = nil) {
        for member in members() where member != except { kill(member, signal) }
    }

    /// How many times the kernel has killed a process of this cgroup for going over its memory limit, ever: an
    /// instance was killed for memory when the count grew while it ran.
    func memoryKills() -> Int {
        let memory = directories[0]
        let file = version2 ? "\(memory)/memory.events" : "\(memory)/memory.oom_control"
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
            return Int(line.dropFirst("oom_kill ".count)) ?? 0
        }
        return 0
    }

}
