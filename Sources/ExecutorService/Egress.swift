import BatchCore
import BatchRuntime
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Connections out of the node for its sandboxed instances, when their environment chose it (`Egress: true`; the
/// node's `--instance-network egress`). The instances' network namespace (``ChildProcess/isolateNetwork()``) gets a
/// user-mode network stack, slirp4netns (Debian's `slirp4netns`), which makes each connection with a socket of the
/// node's own: no route, bridge or address of the node's is shared. It never reaches the node's loopback
/// (`--disable-host-loopback`), and a filter in the namespace (nftables) refuses private, loopback, link-local (cloud
/// metadata), shared and multicast addresses: the broker, the database, the node's services and its private network
/// stay out of reach, unless the operator allows a range (`--egress-allow`). Names resolve through slirp4netns's
/// forwarder (10.0.2.3), which instances see as their `/etc/resolv.conf`.
struct Egress: Sendable {
    /// The file instances see as `/etc/resolv.conf`.
    let resolvConf: URL

    struct Unusable: Error, CustomStringConvertible {
        var description: String
    }

    /// What instances never reach, whatever the operator allows beside: IPv4 ranges that are not the internet's.
    static let deniedRanges = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    ]
    /// slirp4netns's name server inside the namespace.
    static let nameServer = "10.0.2.3"

    static func find(_ name: String) -> String? {
        ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map { "\($0)/\(name)" }.first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    /// The filter for the instances' namespace: its own loopback, the name server, the ranges `allowed`, then
    /// nothing private; everything else goes out.
    static func ruleset(allowed: [String]) -> String {
        var rules = [
            "table inet batch_egress {", "  chain output {", "    type filter hook output priority 0; policy accept;",
            "    oifname \"lo\" accept", "    ip daddr \(nameServer) udp dport 53 accept",
            "    ip daddr \(nameServer) tcp dport 53 accept",
        ]
        if !allowed.isEmpty { rules.append("    ip daddr { \(allowed.joined(separator: ", ")) } accept") }
        rules += [
            "    ip daddr { \(deniedRanges.joined(separator: ", ")) } reject", "    meta nfproto ipv6 reject", "  }",
            "}",
        ]
        return rules.joined(separator: "\n") + "\n"
    }

    /// Filters and connects the instances' namespace, once ``ChildProcess/isolateNetwork()`` has made it. slirp4netns
    /// runs until the executor ends (it exits when the descriptor it watches closes with the executor). Throws when
    /// the node cannot give its instances egress: the node then refuses to start.
    static func start(directory: URL, allowed: [String], logger: Logger) async throws -> Egress {
        if let bad = allowed.first(where: { !Isolation.isIPv4Range($0) }) {
            throw Unusable(description: "--egress-allow: \(bad) is not an IPv4 address or range (a.b.c.d/n)")
        }
        guard let slirp = find("slirp4netns") else {
            throw Unusable(description: "egress needs slirp4netns (Debian's slirp4netns), not found")
        }
        guard let nft = find("nft") else {
            throw Unusable(description: "egress needs nft (Debian's nftables) to keep instances off private addresses")
        }
        let rules = directory.appendingPathComponent(".egress.nft")
        try Data(ruleset(allowed: allowed).utf8).write(to: rules)
        let log = directory.appendingPathComponent("egress.log").path
        // In the instances' namespace (children start there).
        let filter = try await ChildProcess.start(
            executable: nft, arguments: ["-f", rules.path], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
            stdout: log, stderr: log)
        guard await filter.wait() == .exited(0) else {
            let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw Unusable(description: "the egress filter was refused (\(said.split(separator: "\n").first ?? ""))")
        }
        let resolvConf = directory.appendingPathComponent(".resolv.conf")
        try Data("nameserver \(nameServer)\n".utf8).write(to: resolvConf)
        chmod(resolvConf.path, 0o644)

        // Descriptor 3: slirp4netns exits when it reads its end (the executor's end closes with the executor).
        // Descriptor 4: it writes "1" there once the namespace is connected.
        var exit: [Int32] = [0, 0]
        var ready: [Int32] = [0, 0]
        guard pipe(&exit) == 0, pipe(&ready) == 0 else {
            throw Unusable(description: "cannot make a pipe: \(String(cString: strerror(errno)))")
        }
        _ = fcntl(exit[1], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ready[0], F_SETFD, FD_CLOEXEC)
        defer {
            close(exit[0])
            close(ready[0])
        }
        let stack: ChildProcess
        do {
            stack = try ChildProcess.startInProcessNetwork(
                executable: slirp,
                arguments: [
                    "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                    "--exit-fd=3", "--ready-fd=4", "--netns-type=path", ChildProcess.childrenNetworkNamespace, "tap0",
                ],
                environment: ["PATH": "/usr/bin:/bin"], stdout: log, stderr: log, descriptors: [exit[0], ready[1]])
        } catch {
            close(ready[1])
            throw Unusable(description: "slirp4netns cannot be started: \(error)")
        }
        close(ready[1])
        // The executor's end of the exit pipe stays open for its life, on purpose.
        let connected = await Task.detached { [readable = ready[0]] () -> Bool in
            var poll = pollfd(fd: readable, events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&poll, 1, 10_000) == 1 else { return false }
            var byte: UInt8 = 0
            return read(readable, &byte, 1) == 1 && byte == UInt8(ascii: "1")
        }.value
        guard connected else {
            stack.signalGroup(SIGKILL)
            let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw Unusable(description: "slirp4netns did not connect the instances' network (\(said.suffix(300)))")
        }
        Task {
            let termination = await stack.wait()
            logger.error("slirp4netns ended: instances have no egress", metadata: ["how": "\(termination)"])
        }
        logger.info("instances have egress", metadata: ["allowed": "\(allowed)"])
        return Egress(resolvConf: resolvConf)
    }
}
