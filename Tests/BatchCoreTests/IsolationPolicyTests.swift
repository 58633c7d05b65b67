import Testing

@testable import BatchCore

@Suite("Isolation: what a tenant may ask of a node")
struct IsolationPolicyTests {
    @Test(
        "DockerRunOption: resources and the like pass; privileges, host mounts, namespaces and unknowns are refused by name",
        arguments: [
            ("--cpus 2 --memory 1g --env A=b --init", nil),
            ("--memory=512m -e X=1 --tmpfs /scratch --read-only", nil),
            ("", nil),
            ("--privileged", "--privileged is not allowed"),
            ("--cpus 1 -v /:/host", "-v is not allowed"),
            ("--network=host", "--network is not allowed"),
            ("--cap-add SYS_ADMIN", "--cap-add is not allowed"),
            ("--device /dev/kvm", "--device is not allowed"),
            ("--user 0", "--user is not allowed"),
            ("--pid host", "--pid is not allowed"),
            ("--security-opt seccomp=unconfined", "--security-opt is not allowed"),
            ("--memory", "--memory needs a value"),
            ("--tmpfs scratch", "--tmpfs needs an absolute path"),
            ("ubuntu", "ubuntu is not an option"),
        ] as [(String, String?)])
    func dockerRunOption(option: String, refusal: String?) {
        let said = Isolation.dockerRunOptionRefusal(option)
        if let refusal {
            #expect(said?.hasPrefix(refusal) == true, "\(said ?? "allowed")")
        } else {
            #expect(said == nil)
        }
    }

    @Test(
        "a log's file name is one plain name",
        arguments: [
            ("job_task_0.stdout", true), ("${BATCH_JOB_ID}.log", true), ("", false), (".", false), ("..", false),
            ("../x", false), ("a/b", false), ("a\nb", false), (String(repeating: "x", count: 256), false),
        ])
    func redirectFileName(name: String, allowed: Bool) {
        #expect((Isolation.redirectFileNameRefusal(name) == nil) == allowed)
    }

    @Test(
        "egress ranges the operator opens are plain IPv4 addresses or CIDR ranges, nothing that reaches the filter else",
        arguments: [
            ("10.1.0.0/16", true), ("192.0.2.2", true), ("0.0.0.0/0", true), ("255.255.255.255/32", true),
            ("10.1.0.0/33", false), ("256.1.1.1", false), ("10.1.1", false), ("10.01.1.1", false), ("", false),
            ("10.1.1.1/", false), ("10.1.1.1/8/8", false), ("10.1.1.1 } accept", false), ("::1", false),
            ("+1.1.1.1", false),
        ])
    func egressRange(range: String, allowed: Bool) {
        #expect(Isolation.isIPv4Range(range) == allowed)
    }

    @Test("file:// paths: inside a root and outside the node's work dirs, nothing else")
    func storageRoots() {
        let roots = StorageRoots(["/srv/data/", "/mnt/shared"], excluding: ["/srv/data/nodes"])
        #expect(roots.refusal("/srv/data/in/reads.txt") == nil)
        #expect(roots.refusal("/mnt/shared") == nil)
        #expect(roots.refusal("/mnt/shared//x") == nil)
        #expect(roots.refusal("/srv/database")?.contains("outside the node's storage roots") == true)
        #expect(roots.refusal("/root/.ssh")?.contains("outside the node's storage roots") == true)
        #expect(roots.refusal("/srv/data/nodes/node-1/job")?.contains("the node's own work dirs") == true)
        #expect(roots.refusal("/srv/data/../../etc")?.contains("not an absolute path") == true)
        #expect(StorageRoots([]).refusal("/srv/data/x")?.contains("declares no storage roots") == true)
        // A directory that holds the work dirs is refused as a whole (a directory copy would take them along).
        #expect(roots.refusal("/srv/data")?.contains("the node's own work dirs") == true)
        #expect(StorageRoots(["/"], excluding: ["/work/nodes"]).refusal("/work")?.contains("work dirs") == true)
    }

    @Test("instance limits: the node's memory over its slots, at least 64 MiB; the CPU weight on v2's scale")
    func limits() {
        let limits = InstanceLimits.defaults(nodeMemoryBytes: 24 << 30, slots: 4)
        #expect(limits.memoryBytes == 6 << 30)
        #expect(limits.pids == 1024)
        #expect(limits.cpuWeight == 100)
        #expect(InstanceLimits.defaults(nodeMemoryBytes: 1 << 30, slots: 64).memoryBytes == 64 << 20)
        #expect(limits.memoryReason == "killed: the instance used more than its memory limit of 6144 MiB")
    }
}
