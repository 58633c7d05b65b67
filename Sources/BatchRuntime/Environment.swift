import ArgumentParser
import Foundation

/// Reads `BATCH_*` environment variables, the fallback for every command-line option of the services.
public enum Environment {
    public static func value(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { return nil }
        return value
    }

    public static func value(_ name: String, default fallback: String) -> String {
        value(name) ?? fallback
    }

    public static func int(_ name: String, default fallback: Int) -> Int {
        value(name).flatMap(Int.init) ?? fallback
    }

    /// The broker URL of a service: `BATCH_<ROLE>_AMQP_URL` (its own broker user: `GATEWAY`, `SCHEDULER`,
    /// `PROVISIONER`, `EXECUTOR`), else `BATCH_AMQP_URL`, default `amqp://127.0.0.1:5672/`.
    public static func amqpURL(role: String) -> String {
        value("BATCH_\(role)_AMQP_URL") ?? value("BATCH_AMQP_URL", default: "amqp://127.0.0.1:5672/")
    }
    /// The database URL: `BATCH_DATABASE_URL`, default `postgres://batch:batch@127.0.0.1:55432/batch`.
    public static var databaseURL: String {
        value("BATCH_DATABASE_URL", default: "postgres://batch:batch@127.0.0.1:55432/batch")
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
