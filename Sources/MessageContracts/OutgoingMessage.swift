import Foundation

/// A message to publish.
public struct OutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    /// The AMQP `message-id`; also how a returned (unroutable) message is matched to its publish.
    public var messageID: String
    public var type: String?
    public var correlationID: String?
    /// When true, a message that matches no queue fails its publish with ``MessagingError/Code/unroutable``
    /// instead of being dropped by the broker.
    public var mandatory: Bool
    /// Persistent messages (delivery mode 2) survive a broker restart in a durable queue.
    public var persistent: Bool

    public init(
        exchange: String, routingKey: String, body: [UInt8], messageID: String, type: String? = nil,
        correlationID: String? = nil, mandatory: Bool = false, persistent: Bool = true
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.messageID = messageID
        self.type = type
        self.correlationID = correlationID
        self.mandatory = mandatory
        self.persistent = persistent
    }
}
