import BatchCore
import Crypto
import Foundation

/// Seals sensitive values (secret keys, commands, environment variable values, storage credentials) with
/// AES-256-GCM before they reach the database, and opens them again.
///
/// A sealed value is text: `<key id>:<base64 of nonce | ciphertext | tag>`. The key id travels beside the
/// ciphertext so keys can rotate: values are sealed with the current key and opened with whichever configured key
/// sealed them. A `context` (say `jobs.spec:job-ab12cd34`) is authenticated with the value, so a sealed value copied
/// into another row or column does not open.
public struct Sealer: Sendable {
    public struct Key: Sendable {
        public let id: String
        let key: SymmetricKey

        public init(id: String, bytes: some Collection<UInt8>) throws {
            guard bytes.count == 32 else {
                throw SealingError("key \(id) must be 32 bytes (AES-256), got \(bytes.count)")
            }
            guard !id.isEmpty, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
            else { throw SealingError("a key id must be letters, digits, - or _") }
            self.id = id
            self.key = SymmetricKey(data: Array(bytes))
        }

        /// A new random key.
        public static func generate(id: String) -> Key {
            try! Key(id: id, bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })
        }

        /// `<id>:<base64 of the 32 key bytes>`, the form ``Sealer/init(configuration:)`` reads.
        public var configurationString: String {
            "\(id):\(key.withUnsafeBytes { Data($0).base64EncodedString() })"
        }
    }

    public let current: Key
    private let keys: [String: Key]

    public init(current: Key, retired: [Key] = []) {
        self.current = current
        var keys: [String: Key] = [:]
        for key in retired { keys[key.id] = key }
        keys[current.id] = current
        self.keys = keys
    }

    /// Reads keys from configuration: comma-separated `<id>:<base64 32 bytes>`, the first being the key new values
    /// are sealed with, the others retired keys still able to open old values.
    public init(configuration: String?) throws {
        guard let configuration, !configuration.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw SealingError(
                "BATCH_MASTER_KEY is not set: give a key id and 32 random bytes in base64, "
                    + "e.g. k1:$(head -c 32 /dev/urandom | base64)")
        }
        var parsed: [Key] = []
        for entry in configuration.split(separator: ",") {
            let parts = entry.trimmingCharacters(in: .whitespaces).split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let bytes = Data(base64Encoded: String(parts[1])) else {
                throw SealingError("BATCH_MASTER_KEY is malformed: expected <key id>:<base64 of 32 bytes>[,…]")
            }
            do {
                parsed.append(try Key(id: String(parts[0]), bytes: bytes))
            } catch let error as SealingError {
                throw SealingError("BATCH_MASTER_KEY is malformed: \(error.message)")
            }
        }
        self.init(current: parsed[0], retired: Array(parsed.dropFirst()))
    }

    public var keyIDs: [String] { keys.keys.sorted() }

    /// The key `env`'s nodes hold, derived from the current master key (nodes started before a rotation are
    /// replaced: their proofs and seals no longer match).
    public func nodeKey(env: EnvID) -> NodeKey { NodeKey.derive(master: current.key, env: env) }

    public func seal(_ plaintext: String, context: String) throws -> String {
        try seal(Array(plaintext.utf8), context: context)
    }

    public func seal(_ plaintext: [UInt8], context: String) throws -> String {
        let box = try AES.GCM.seal(plaintext, using: current.key, authenticating: Array(context.utf8))
        guard let combined = box.combined else { throw SealingError("AES-GCM produced no output") }
        return "\(current.id):\(combined.base64EncodedString())"
    }

    public func open(_ sealed: String, context: String) throws -> String {
        String(decoding: try openBytes(sealed, context: context), as: UTF8.self)
    }

    public func openBytes(_ sealed: String, context: String) throws -> [UInt8] {
        let parts = sealed.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let combined = Data(base64Encoded: String(parts[1])) else {
            throw SealingError("not a sealed value (\(context))")
        }
        guard let key = keys[String(parts[0])] else {
            throw SealingError("value sealed with key \(parts[0]), which is not configured (\(context))")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: combined)
            return Array(try AES.GCM.open(box, using: key.key, authenticating: Array(context.utf8)))
        } catch {
            throw SealingError("value does not open with key \(key.id): wrong key or tampered data (\(context))")
        }
    }
}

/// Sealing or opening failed. The message never holds the plaintext or a key.
public struct SealingError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
