import Foundation

/// Where a broker is and how to log in, parsed from `amqp://user:password@host:port/vhost`, or
/// `amqps://…:port/vhost?cacertfile=ca.pem` for TLS (RabbitMQ's URI form).
///
/// The vhost is the URL's path without its leading slash, percent-decoded; an empty path means the default vhost `/`
/// (write `%2F` for it explicitly). User and password default to `guest`, the port to 5672 (`amqps`: 5671). Over TLS
/// the broker's certificate must chain to `cacertfile` (else to the system's CAs) and name the URL's host; nothing
/// turns that off. Any other query parameter is refused.
public struct AMQPURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var vhost: String
    /// TLS (`amqps`).
    public var tls: Bool
    /// The CA file the broker's certificate must chain to (`cacertfile`); nil: the system's CAs.
    public var caCertificateFile: String?

    public init(
        host: String = "127.0.0.1", port: Int = 5672, user: String = "guest", password: String = "guest",
        vhost: String = "/", tls: Bool = false, caCertificateFile: String? = nil
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.vhost = vhost
        self.tls = tls
        self.caCertificateFile = caCertificateFile
    }

    /// Parses an `amqp://` or `amqps://` URL; throws ``MessagingError`` naming what is wrong with it.
    public init(_ string: String) throws {
        guard let components = URLComponents(string: string),
            components.scheme == "amqp" || components.scheme == "amqps",
            let host = components.host, !host.isEmpty
        else {
            throw MessagingError(.invalidURL, "expected amqp://user:password@host:port/vhost (or amqps://)")
        }
        self.tls = components.scheme == "amqps"
        self.host = host
        self.port = components.port ?? (tls ? 5671 : 5672)
        self.user = components.percentEncodedUser?.removingPercentEncoding ?? "guest"
        self.password = components.percentEncodedPassword?.removingPercentEncoding ?? "guest"
        let path = components.percentEncodedPath
        if path.isEmpty || path == "/" {
            self.vhost = "/"
        } else {
            self.vhost = String(path.dropFirst()).removingPercentEncoding ?? "/"
        }
        self.caCertificateFile = nil
        for item in components.queryItems ?? [] {
            switch item.name {
            case "cacertfile" where tls && item.value?.isEmpty == false:
                caCertificateFile = item.value
            case "cacertfile":
                throw MessagingError(.invalidURL, "cacertfile names a CA file, for amqps:// URLs only")
            default:
                throw MessagingError(.invalidURL, "unknown parameter \(item.name) in the broker URL (only cacertfile)")
            }
        }
    }

    /// The URL in full, its password included, as ``init(_:)`` reads it.
    public var string: String { format(withPassword: true) }

    /// The URL without its password or query, fit for logs.
    public var description: String { format(withPassword: false) }

    private func format(withPassword: Bool) -> String {
        var components = URLComponents()
        components.scheme = tls ? "amqps" : "amqp"
        components.host = host
        components.port = port
        // RFC 3986's unreserved characters as they are; everything else percent-encoded.
        let unreserved = CharacterSet(charactersIn: "-._~").union(.alphanumerics)
        components.percentEncodedUser = user.addingPercentEncoding(withAllowedCharacters: unreserved)
        components.percentEncodedPath =
            "/" + (vhost == "/" ? "" : vhost.addingPercentEncoding(withAllowedCharacters: unreserved) ?? "")
        if withPassword {
            components.percentEncodedPassword = password.addingPercentEncoding(withAllowedCharacters: unreserved)
            if let caCertificateFile {
                components.queryItems = [URLQueryItem(name: "cacertfile", value: caCertificateFile)]
            }
        }
        return components.string ?? "\(components.scheme ?? "amqp")://\(host):\(port)/"
    }
}
