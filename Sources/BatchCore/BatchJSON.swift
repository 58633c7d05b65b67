import Foundation

/// JSON coding in the API's style: PascalCase keys on the wire (`JobName`), camelCase properties in Swift
/// (`jobName`), ISO 8601 UTC timestamps (`2026-11-29T07:00:00Z`).
public enum BatchJSON {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .custom { path in
            PascalKey(stringValue: path.last!.stringValue.prefix(1).uppercased() + path.last!.stringValue.dropFirst())
        }
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .custom { path in
            PascalKey(stringValue: path.last!.stringValue.prefix(1).lowercased() + path.last!.stringValue.dropFirst())
        }
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }

    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        Array(try encoder().encode(value))
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws -> T {
        try decoder().decode(type, from: Data(bytes))
    }

    struct PascalKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
