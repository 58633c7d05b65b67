import BatchCore
import Foundation
import PostgresNIO

/// Users (tenants) and their API key pairs. Secret keys are sealed; only ``createUser(name:)`` and
/// ``createKey(for:)`` ever return one in plain text, once.
public struct UserStore: Sendable {
    public struct NewCredentials: Sendable {
        public var userID: UserID
        public var name: String
        public var secretID: String
        public var secretKey: String
    }

    public struct Credential: Sendable {
        public var userID: UserID
        public var secretKey: String
        /// The key pair or its user is disabled.
        public var disabled: Bool
    }

    let database: Database

    public init(database: Database) { self.database = database }

    /// Creates a user and a first key pair. Throws ``DatabaseError`` if the name is taken.
    public func createUser(name: String) async throws -> NewCredentials {
        guard !name.isEmpty, name.count <= 64,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) })
        else {
            throw DatabaseError("a user name is 1 to 64 letters, digits, -, _, . or @")
        }
        let userID = UserID.generate()
        let (secretID, secretKey) = Self.generateKeyPair()
        let sealed = try database.sealer.seal(secretKey, context: "credentials:\(secretID)")
        do {
            try await database.transaction { connection in
                try await connection.query(
                    "INSERT INTO users (user_id, name) VALUES (\(userID.rawValue), \(name))", logger: database.logger)
                try await connection.query(
                    """
                    INSERT INTO credentials (secret_id, user_id, secret_key_sealed)
                    VALUES (\(secretID), \(userID.rawValue), \(sealed))
                    """, logger: database.logger)
            }
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw DatabaseError("a user named \(name) exists already")
        }
        return NewCredentials(userID: userID, name: name, secretID: secretID, secretKey: secretKey)
    }

    /// Looks up a key pair by its SecretId.
    public func credential(secretID: String) async throws -> Credential? {
        let rows = try await database.client.query(
            """
            SELECT c.user_id, c.secret_key_sealed, c.disabled OR u.disabled
            FROM credentials c JOIN users u USING (user_id) WHERE c.secret_id = \(secretID)
            """, logger: database.logger)
        for try await (userID, sealed, disabled) in rows.decode((String, String, Bool).self) {
            let secretKey = try database.sealer.open(sealed, context: "credentials:\(secretID)")
            return Credential(userID: UserID(rawValue: userID), secretKey: secretKey, disabled: disabled)
        }
        return nil
    }

    /// A user's name; nil when there is no such user.
    public func name(of user: UserID) async throws -> String? {
        let rows = try await database.client.query(
            "SELECT name FROM users WHERE user_id = \(user.rawValue)", logger: database.logger)
        return try await rows.decode(String.self).first { _ in true }
    }

    /// Disables (or enables again) a user and so every key pair of theirs. Returns false if there is no such user.
    public func setDisabled(name: String, _ disabled: Bool) async throws -> Bool {
        let rows = try await database.client.query(
            "UPDATE users SET disabled = \(disabled) WHERE name = \(name) RETURNING user_id", logger: database.logger)
        return try await rows.decode(String.self).first { _ in true } != nil
    }

    /// A SecretId in Tencent Cloud's style (`AKID` and 32 letters and digits) and a 32-character SecretKey.
    static func generateKeyPair() -> (String, String) {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        var generator = SystemRandomNumberGenerator()
        func random(_ count: Int) -> String {
            String((0..<count).map { _ in alphabet.randomElement(using: &generator)! })
        }
        return ("AKID" + random(32), random(32))
    }
}
