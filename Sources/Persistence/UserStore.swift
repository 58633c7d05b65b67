import BatchCore
import Foundation
import PostgresNIO

/// Users (tenants) and their API key pairs. Secret keys are sealed; only ``createUser(name:operator:)``,
/// ``createKeyPair(name:)`` and ``operatorKeyPair(name:)`` ever return one in plain text, once.
public struct UserStore: Sendable {
    public struct NewCredentials: Sendable {
        public var userID: UserID
        public var name: String
        public var secretID: String
        public var secretKey: String
        public var isOperator: Bool
    }

    public struct Credential: Sendable {
        public var secretID: String
        public var userID: UserID
        public var secretKey: String
        /// The key pair or its user is disabled.
        public var disabled: Bool
        /// The user may call the admin actions (``createUser(name:operator:)``, disabling users, node keys).
        public var isOperator: Bool
    }

    let database: Database

    public init(database: Database) { self.database = database }

    /// Creates a user and a first key pair; an operator may call the admin actions. Throws ``StoreRefusal``.
    public func createUser(name: String, operator isOperator: Bool = false) async throws -> NewCredentials {
        guard Self.isValidName(name) else { throw StoreRefusal.userNameInvalid }
        let userID = UserID.generate()
        let (secretID, secretKey) = Self.generateKeyPair()
        let sealed = try database.sealer.seal(secretKey, context: "credentials:\(secretID)")
        do {
            try await database.transaction { connection in
                try await connection.query(
                    """
                    INSERT INTO users (user_id, name, operator) VALUES (\(userID.rawValue), \(name), \(isOperator))
                    """, logger: database.logger)
                try await connection.query(
                    """
                    INSERT INTO credentials (secret_id, user_id, secret_key_sealed)
                    VALUES (\(secretID), \(userID.rawValue), \(sealed))
                    """, logger: database.logger)
            }
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw StoreRefusal.userNameTaken(name)
        }
        return NewCredentials(
            userID: userID, name: name, secretID: secretID, secretKey: secretKey, isOperator: isOperator)
    }

    /// A new key pair for the operator `name`, made with the user if there is none: how a gateway hands its
    /// operator a credential on first start. Throws ``StoreRefusal/userNameTaken(_:)`` if `name` is a user who is not
    /// an operator.
    public func operatorKeyPair(name: String) async throws -> NewCredentials {
        let rows = try await database.client.query(
            "SELECT user_id, operator FROM users WHERE name = \(name)", logger: database.logger)
        guard let (userID, isOperator) = try await rows.decode((String, Bool).self).first(where: { _ in true }) else {
            do {
                return try await createUser(name: name, operator: true)
            } catch StoreRefusal.userNameTaken {
                // Another gateway made it at the same moment: add a key pair of this gateway's own.
                return try await operatorKeyPair(name: name)
            }
        }
        guard isOperator else { throw StoreRefusal.userNameTaken(name) }
        let (secretID, secretKey) = Self.generateKeyPair()
        let sealed = try database.sealer.seal(secretKey, context: "credentials:\(secretID)")
        try await database.client.query(
            """
            INSERT INTO credentials (secret_id, user_id, secret_key_sealed) VALUES (\(secretID), \(userID), \(sealed))
            """, logger: database.logger)
        return NewCredentials(
            userID: UserID(rawValue: userID), name: name, secretID: secretID, secretKey: secretKey, isOperator: true)
    }

    /// A user name: 1 to 64 letters, digits, `-`, `_`, `.` or `@`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }
    }

    /// Looks up a key pair by its SecretId.
    public func credential(secretID: String) async throws -> Credential? {
        let rows = try await database.client.query(
            """
            SELECT c.user_id, c.secret_key_sealed, c.disabled OR u.disabled, u.operator
            FROM credentials c JOIN users u USING (user_id) WHERE c.secret_id = \(secretID)
            """, logger: database.logger)
        for try await (userID, sealed, disabled, isOperator) in rows.decode((String, String, Bool, Bool).self) {
            let secretKey = try database.sealer.open(sealed, context: "credentials:\(secretID)")
            return Credential(
                secretID: secretID, userID: UserID(rawValue: userID), secretKey: secretKey, disabled: disabled,
                isOperator: isOperator)
        }
        return nil
    }

    /// One of a user's key pairs, without its secret.
    public struct KeyPair: Sendable {
        public var secretID: String
        public var createdAt: Date
        /// Revoked key pairs are refused for good; they stay listed.
        public var revoked: Bool
    }

    /// A user's key pairs, oldest first; nil when there is no such user.
    public func keyPairs(name: String) async throws -> [KeyPair]? {
        let rows = try await database.client.query(
            """
            SELECT c.secret_id, c.created_at, c.disabled FROM users u LEFT JOIN credentials c USING (user_id)
            WHERE u.name = \(name) ORDER BY c.created_at, c.secret_id
            """, logger: database.logger)
        var found = false
        var pairs: [KeyPair] = []
        for try await (secretID, createdAt, revoked) in rows.decode((String?, Date?, Bool?).self) {
            found = true
            if let secretID, let createdAt {
                pairs.append(KeyPair(secretID: secretID, createdAt: createdAt, revoked: revoked ?? false))
            }
        }
        return found ? pairs : nil
    }

    /// A new key pair for the user `name` (to rotate keys: add one, move to it, revoke the old); nil when there is
    /// no such user.
    public func createKeyPair(name: String) async throws -> NewCredentials? {
        let (secretID, secretKey) = Self.generateKeyPair()
        let sealed = try database.sealer.seal(secretKey, context: "credentials:\(secretID)")
        let rows = try await database.client.query(
            """
            INSERT INTO credentials (secret_id, user_id, secret_key_sealed)
            SELECT \(secretID), user_id, \(sealed) FROM users WHERE name = \(name)
            RETURNING user_id, (SELECT operator FROM users WHERE name = \(name))
            """, logger: database.logger)
        guard let (userID, isOperator) = try await rows.decode((String, Bool).self).first(where: { _ in true }) else {
            return nil
        }
        return NewCredentials(
            userID: UserID(rawValue: userID), name: name, secretID: secretID, secretKey: secretKey,
            isOperator: isOperator)
    }

    /// Revokes one of the user's key pairs: it is refused from then on, for good. Returns false when the user has
    /// no key pair of that SecretId.
    public func revokeKeyPair(name: String, secretID: String) async throws -> Bool {
        let rows = try await database.client.query(
            """
            UPDATE credentials c SET disabled = true FROM users u
            WHERE u.user_id = c.user_id AND u.name = \(name) AND c.secret_id = \(secretID) RETURNING c.secret_id
            """, logger: database.logger)
        return try await rows.decode(String.self).first { _ in true } != nil
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

    /// Sets a user's quotas; nil leaves one as it is, 0 or less returns it to the gateway's default. Returns false
    /// if there is no such user.
    public func setQuotas(name: String, jobs: Int?, taskTemplates: Int?, computeEnvs: Int?) async throws -> Bool {
        func value(_ quota: Int?) -> Int? { quota.flatMap { $0 > 0 ? $0 : nil } }
        let rows = try await database.client.query(
            """
            UPDATE users SET
                job_quota = CASE WHEN \(jobs != nil) THEN \(value(jobs)) ELSE job_quota END,
                task_template_quota = CASE WHEN \(taskTemplates != nil) THEN \(value(taskTemplates))
                    ELSE task_template_quota END,
                compute_env_quota = CASE WHEN \(computeEnvs != nil) THEN \(value(computeEnvs)) ELSE compute_env_quota END
            WHERE name = \(name) RETURNING user_id
            """, logger: database.logger)
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
