import Foundation

/// Where a broker is and how to log in, parsed from `amqp://user:password@host:port/vhost`.
///
/// The vhost is the URL's path without its leading slash, percent-decoded; an empty path means the default vhost `/`
/// (write `%2F` for it explicitly). User and password default to `guest`, the port to 5672.
public struct AMQPURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var vhost: String

    public init(
        host: String = "127.0.0.1", port: Int = 5672, user: String = "guest", password: String = "guest",
        vhost: String = "/"
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.vhost = vhost
    }

    /// Parses an `amqp://` URL; throws ``MessagingError`` naming what is wrong with it.
    public init(_ string: String) throws {
        guard let components = URLComponents(string: string), components.scheme == "amqp",
            let host = components.host, !host.isEmpty
        else {
            throw MessagingError(.invalidURL, "expected amqp://user:password@host:port/vhost")
        }
        self.host = host
        self.port = components.port ?? 5672
        self.user = components.percentEncodedUser?.removingPercentEncoding ?? "guest"
        self.password = components.percentEncodedPassword?.removingPercentEncoding ?? "guest"
        let path = components.percentEncodedPath
        if path.isEmpty || path == "/" {
            self.vhost = "/"
        } else {
            self.vhost = String(path.dropFirst()).removingPercentEncoding ?? "/"
        }
    }

    /// The URL without its password, fit for logs.
    public var description: String {
        let vhostPath = vhost == "/" ? "" : vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        return "amqp://\(user)@\(host):\(port)/\(vhostPath)"
    }
}
