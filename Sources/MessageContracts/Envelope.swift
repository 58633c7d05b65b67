import Foundation

/// A message payload with a stable type name, carried in an ``Envelope``.
public protocol MessageContract: Codable, Sendable {
    /// The envelope's `type`, e.g. `job.submitted`; also the AMQP `type` property.
    static var type: String { get }
}

/// The JSON body of every Batch message: what it is, its id, when it was made, what it belongs to, and the payload.
///
/// ```json
/// {"type": "job.submitted", "messageId": "…", "time": "2026-11-29T07:00:00Z", "correlationId": "job-ab12cd34",
///  "payload": {…}}
/// ```
public struct Envelope<Payload: MessageContract>: Codable, Sendable {
    public var type: String
    public var messageID: UUID
    public var time: Date
    /// What the message belongs to, usually a job id; used to follow one job through the logs.
    public var correlationID: String?
    public var payload: Payload

    enum CodingKeys: String, CodingKey {
        case type
        case messageID = "messageId"
        case time
        case correlationID = "correlationId"
        case payload
    }

    public init(_ payload: Payload, messageID: UUID = UUID(), time: Date = Date(), correlationID: String? = nil) {
        self.type = Payload.type
        self.messageID = messageID
        self.time = time
        self.correlationID = correlationID
        self.payload = payload
    }

    public func encoded() throws -> [UInt8] {
        Array(try EnvelopeCoding.encoder.encode(self))
    }

    /// Decodes an envelope, checking that its `type` is `Payload.type`.
    public static func decode(_ body: [UInt8]) throws -> Envelope {
        let envelope: Envelope
        do {
            envelope = try EnvelopeCoding.decoder.decode(Envelope.self, from: Data(body))
        } catch {
            throw MessagingError(.malformedMessage, "not a \(Payload.type) envelope: \(error)")
        }
        guard envelope.type == Payload.type else {
            throw MessagingError(.malformedMessage, "expected \(Payload.type), got \(envelope.type)")
        }
        return envelope
    }
}

/// The `type` of an envelope, read without decoding its payload.
public struct EnvelopeHeader: Decodable, Sendable {
    public var type: String
    public var messageID: UUID?
    public var correlationID: String?

    enum CodingKeys: String, CodingKey {
        case type
        case messageID = "messageId"
        case correlationID = "correlationId"
    }

    public static func decode(_ body: [UInt8]) throws -> EnvelopeHeader {
        do {
            return try EnvelopeCoding.decoder.decode(EnvelopeHeader.self, from: Data(body))
        } catch {
            throw MessagingError(.malformedMessage, "not a Batch envelope")
        }
    }
}

enum EnvelopeCoding {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()
    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}

extension OutgoingMessage {
    /// A message carrying `payload` in an ``Envelope``; persistent unless told otherwise.
    public init<Payload: MessageContract>(
        exchange: String, routingKey: String, payload: Payload, correlationID: String? = nil,
        messageID: UUID = UUID(), mandatory: Bool = false, persistent: Bool = true
    ) throws {
        let envelope = Envelope(payload, messageID: messageID, correlationID: correlationID)
        self.init(
            exchange: exchange, routingKey: routingKey, body: try envelope.encoded(),
            messageID: messageID.uuidString.lowercased(), type: Payload.type, correlationID: correlationID,
            mandatory: mandatory, persistent: persistent
        )
    }
}
