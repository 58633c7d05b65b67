/// An error of the messaging layer. `code` is extensible; `message` never carries a secret.
public struct MessagingError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// The broker URL could not be parsed.
        public static let invalidURL = Code(name: "invalidURL")
        /// The connection to the broker failed or was lost.
        public static let connectionFailed = Code(name: "connectionFailed")
        /// The broker refused the message (a negative publisher confirm).
        public static let nacked = Code(name: "nacked")
        /// A mandatory message matched no queue and came back.
        public static let unroutable = Code(name: "unroutable")
        /// A declaration was refused, for example a queue redeclared with other arguments.
        public static let declarationFailed = Code(name: "declarationFailed")
        /// The client was shut down before the operation completed.
        public static let shutdown = Code(name: "shutdown")
        /// A message body could not be decoded.
        public static let malformedMessage = Code(name: "malformedMessage")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
