import BatchCore
import Crypto
import Foundation
import Messaging
import Testing

@Suite("Node keys: a node proves its environment, and only its environment's nodes open its run messages")
struct NodeKeyTests {
    let master = SymmetricKey(size: .bits256)
    let envA = EnvID(rawValue: "env-aaaaaaaa")
    let envB = EnvID(rawValue: "env-bbbbbbbb")
    let node = NodeID(rawValue: "node-12345678")

    @Test("a proof verifies for its node under its environment's key only")
    func proofs() throws {
        let key = NodeKey.derive(master: master, env: envA)
        let proof = key.proof(node: node)
        #expect(key.verifies(proof, node: node))
        #expect(!key.verifies(proof, node: NodeID(rawValue: "node-87654321")))
        #expect(!NodeKey.derive(master: master, env: envB).verifies(proof, node: node))
        #expect(!NodeKey.derive(master: SymmetricKey(size: .bits256), env: envA).verifies(proof, node: node))
        #expect(!key.verifies(nil, node: node))
        #expect(!key.verifies("not base64!", node: node))
        // What the provisioner hands a node reads back as the same key.
        #expect(try NodeKey(base64: key.base64).verifies(proof, node: node))
        #expect(throws: NodeKeyError.self) { try NodeKey(base64: "c2hvcnQ=") }
    }

    @Test("a run message's command, variables and storage parts are sealed; it opens with its environment's key only")
    func sealedRuns() throws {
        let runs = InstanceRuns(
            jobID: JobID(rawValue: "job-12345678"), taskName: "t", instanceCount: 2, envID: envA,
            command: "echo secret-command", environment: [EnvVar(name: "TOKEN", value: "secret-value")],
            timeoutSeconds: 60,
            io: InstanceIO(
                inputMappings: [InputMapping(sourcePath: "cos://bucket/in", destinationPath: "/data/in")]),
            attempts: [.init(instanceIndex: 0, attempt: 1), .init(instanceIndex: 1, attempt: 1)])
        let key = NodeKey.derive(master: master, env: envA)
        let sealed = try runs.sealing(with: key)
        let wire = String(decoding: try Envelope(sealed).encoded(), as: UTF8.self)
        for secret in ["secret-command", "secret-value", "TOKEN", "cos://bucket/in"] {
            #expect(!wire.contains(secret), "\(secret) in \(wire)")
        }
        #expect(try sealed.opening(with: key) == runs)
        #expect(throws: NodeKeyError.self) { try sealed.opening(with: NodeKey.derive(master: master, env: envB)) }
        #expect(throws: NodeKeyError.self) { try runs.opening(with: key) }
        // Moved to another task's message, the sealed part does not open.
        var moved = sealed
        moved.taskName = "other"
        #expect(throws: NodeKeyError.self) { try moved.opening(with: key) }
    }
}
