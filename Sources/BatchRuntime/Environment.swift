import ArgumentParser
import Foundation
import Messaging

/// Reads `BATCH_*` environment variables, the fallback for every command-line option of the services.
///
/// A variable may instead name a file that holds its value, as `NAME_FILE` (as the official database images
/// take their passwords): a compose secret, say, so that a secret never sits in a container's environment. The
/// file's content is the value, without its last line break; a `NAME_FILE` that cannot be read stops the service
/// with one line naming it.
public enum Environment {
    public static func value(_ name: String) -> String? {
        do {
            return try value(name, in: ProcessInfo.processInfo.environment)
        } catch {
            exitWithError(ProcessInfo.processInfo.processName, error)
        }
    }

    /// `name`'s value in `environment`, from `NAME_FILE`'s file when `name` is unset or empty.
    static func value(_ name: String, in environment: [String: String]) throws -> String? {
        if let value = environment[name], !value.isEmpty { return value }
        guard let path = environment[name + "_FILE"], !path.isEmpty else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StartupError("\(name)_FILE: cannot read \(path)")
        }
        var value = String(decoding: data, as: UTF8.self)
        if value.hasSuffix("\n") { value.removeLast() }
        return value.isEmpty ? nil : value
    }

    public static func value(_ name: String, default fallback: String) -> String {
        value(name) ?? fallback
    }

    public static func int(_ name: String, default fallback: Int) -> Int {
        value(name).flatMap(Int.init) ?? fallback
    }

    /// The broker URL of a service: `BATCH_<ROLE>_AMQP_URL` (its own broker user: `GATEWAY`, `SCHEDULER`,
    /// `PROVISIONER`, `EXECUTOR`), else `BATCH_AMQP_URL`; "" when neither is set (there is no default: the AMQP
    /// default user is `guest`, a known password).
    public static func amqpURL(role: String) -> String {
        value("BATCH_\(role)_AMQP_URL") ?? value("BATCH_AMQP_URL", default: "")
    }

    /// The database URL: `BATCH_DATABASE_URL`; "" when it is not set (there is no default).
    public static var databaseURL: String { value("BATCH_DATABASE_URL", default: "") }

    /// `url` as the broker URL of the service whose broker user is `role`, refused with one line when it is missing
    /// or names no user and password (AMQP's default, `guest`, is a known password).
    public static func brokerURL(_ url: String, role: String) throws -> AMQPURL {
        guard !url.isEmpty else {
            throw StartupError(
                "no broker URL: set BATCH_\(role)_AMQP_URL or BATCH_AMQP_URL, or --amqp-url "
                    + "(`scripts/servers env` prints them for the local servers)")
        }
        guard let components = URLComponents(string: url), components.user?.isEmpty == false,
            components.password?.isEmpty == false
        else {
            throw StartupError(
                "the broker URL must name a user and a password (amqp://user:password@host:port/vhost): "
                    + "the AMQP default, guest, is refused")
        }
        return try AMQPURL(url)
    }

    /// `url` as the database URL, refused with one line when it is missing.
    public static func checkedDatabaseURL(_ url: String) throws -> String {
        guard !url.isEmpty else {
            throw StartupError(
                "no database URL: set BATCH_DATABASE_URL or --database-url "
                    + "(`scripts/servers env` prints it for the local servers)")
        }
        return url
    }
}

/// Stops a service before it starts, with one line on stderr and exit status 1.
public struct StartupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Prints `error` as one line on stderr and exits with status 1.
public func exitWithError(_ service: String, _ error: any Error) -> Never {
    let line = "\(error)".split(separator: "\n").first.map(String.init) ?? "unknown error"
    FileHandle.standardError.write(Data("\(service): \(line)\n".utf8))
    exit(1)
}

/// Where the broker and the database are: options every stateful service takes.
public struct ConnectionOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("amqp-url"), help: "RabbitMQ URL (BATCH_<SERVICE>_AMQP_URL, else BATCH_AMQP_URL).")
    public var givenAMQPURL: String?

    @Option(help: "PostgreSQL URL (BATCH_DATABASE_URL).")
    public var databaseURL: String = Environment.databaseURL

    public init() {}

    /// The broker URL of the service whose broker user is `role` (``Environment/amqpURL(role:)``).
    public func amqpURL(role: String) -> String { givenAMQPURL ?? Environment.amqpURL(role: role) }
}
