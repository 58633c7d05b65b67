import Crypto
import Foundation

/// The secret a compute environment's nodes share with the control plane, derived from the master key and the
/// environment's id: the provisioner hands it to the nodes it starts (`BATCH_NODE_KEY`), an operator to the hosts
/// they attach (`batchctl admin node-key`). A node never holds the master key, nor another environment's key.
///
/// With it a node proves which environment it serves (every heartbeat, report and stop carries a ``proof(node:)``),
/// and the scheduler seals what a run message must keep secret (command, variables, storage credentials) so that
/// only the environment's nodes open it: the broker's disk never holds them in plain text.
public struct NodeKey: Sendable {
    let key: SymmetricKey

    init(key: SymmetricKey) {
        self.key = key
    }

    /// The key of `env`'s nodes under the master key `master`.
    public static func derive(master: SymmetricKey, env: EnvID) -> NodeKey {
        let code = HMAC<SHA256>.authenticationCode(
            for: Data("batch node key 1\u{0}\(env.rawValue)".utf8), using: master)
        return NodeKey(key: SymmetricKey(data: Data(code)))
    }

    /// Reads the base64 form ``base64`` writes.
    public init(base64: String) throws {
        guard let bytes = Data(base64Encoded: base64.trimmingCharacters(in: .whitespacesAndNewlines)),
            bytes.count == 32
        else { throw NodeKeyError("a node key is 32 bytes in base64 (batchctl admin node-key prints one)") }
        self.key = SymmetricKey(data: bytes)
    }

    public var base64: String { key.withUnsafeBytes { Data($0).base64EncodedString() } }

    /// What a node sends beside its id: only a holder of the environment's key can make it.
    public func proof(node: NodeID) -> String {
        Data(HMAC<SHA256>.authenticationCode(for: Data("node\u{0}\(node.rawValue)".utf8), using: key))
            .base64EncodedString()
    }

    /// The password of the environment's nodes' broker user (`batch-node-<env id>`): the provisioner sets it when it
    /// makes the user, and a node (or `batchctl admin node-key`) derives it from the key it holds.
    public var brokerPassword: String {
        Data(HMAC<SHA256>.authenticationCode(for: Data("broker password".utf8), using: key)).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Whether `proof` is this key's proof for `node` (compared in constant time).
    public func verifies(_ proof: String?, node: NodeID) -> Bool {
        guard let proof, let code = Data(base64Encoded: proof) else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(
            code, authenticating: Data("node\u{0}\(node.rawValue)".utf8), using: key)
    }

    /// `value` as JSON sealed with AES-256-GCM, `context` authenticated with it (a sealed value copied into another
    /// message does not open), in base64.
    public func seal(_ value: some Encodable, context: String) throws -> String {
        let plain = try BatchJSON.encoder().encode(value)
        let box = try AES.GCM.seal(plain, using: key, authenticating: Data(context.utf8))
        guard let combined = box.combined else { throw NodeKeyError("sealing failed") }
        return combined.base64EncodedString()
    }

    /// Opens what ``seal(_:context:)`` made with the same key and context.
    public func open<T: Decodable>(_ type: T.Type, from sealed: String, context: String) throws -> T {
        guard let combined = Data(base64Encoded: sealed) else { throw NodeKeyError("a sealed value is not base64") }
        let plain: Data
        do {
            plain = try AES.GCM.open(
                AES.GCM.SealedBox(combined: combined), using: key, authenticating: Data(context.utf8))
        } catch {
            throw NodeKeyError(
                "a sealed value does not open with this node's key (another environment's, or an old one)")
        }
        return try BatchJSON.decoder().decode(type, from: plain)
    }
}

public struct NodeKeyError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
