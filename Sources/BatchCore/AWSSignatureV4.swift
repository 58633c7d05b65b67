import Crypto
import Foundation

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for S3-compatible object stores, as AWS documents it.
///
/// canonical request = `METHOD\n<encoded path>\n<sorted encoded query>\n<name:value\n per signed header>\n`
/// `<signed header names>\n<payload hash>`; string to sign = `AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex sha256 of
/// the canonical request>`; key = HMAC chain `"AWS4"+secret` → date → region → service → `aws4_request`.
public enum AWSSignatureV4 {
    public static let algorithm = "AWS4-HMAC-SHA256"
    /// The payload hash of a body that is not signed (S3 accepts it for uploads streamed from disk).
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    public static let emptyPayloadHash = hexSHA256([])

    public struct Credentials: Sendable, Hashable {
        public var accessKeyID: String
        public var secretAccessKey: String
        public var sessionToken: String?

        public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
            self.accessKeyID = accessKeyID
            self.secretAccessKey = secretAccessKey
            self.sessionToken = sessionToken
        }
    }

    /// The headers to add to a request: `Authorization`, `x-amz-date`, `x-amz-content-sha256` (and
    /// `x-amz-security-token` with a session token). `headers` must hold `host` and any other header to sign.
    public static func sign(
        method: String, path: String, query: [(String, String)], headers: [String: String], payloadHash: String,
        credentials: Credentials, region: String, service: String = "s3", date: Date
    ) -> [(String, String)] {
        let amzDate = amzDate(date)
        let day = String(amzDate.prefix(8))
        var signed = Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value) })
        signed["x-amz-date"] = amzDate
        signed["x-amz-content-sha256"] = payloadHash
        if let token = credentials.sessionToken { signed["x-amz-security-token"] = token }
        let names = signed.keys.sorted()
        let canonicalHeaders = names.map { name in
            let value = signed[name, default: ""].split(separator: " ", omittingEmptySubsequences: true)
                .joined(separator: " ")
            return "\(name):\(value)\n"
        }.joined()
        let encodedQuery: [(name: String, value: String)] = query.map { (encode($0.0), encode($0.1)) }
        let sortedQuery = encodedQuery.sorted { $0.name == $1.name ? $0.value < $1.value : $0.name < $1.name }
        let canonicalQuery = sortedQuery.map { "\($0.name)=\($0.value)" }.joined(separator: "&")
        let canonicalRequest = [
            method, encode(path, keepSlash: true), canonicalQuery, canonicalHeaders, names.joined(separator: ";"),
            payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [algorithm, amzDate, scope, hexSHA256(Array(canonicalRequest.utf8))].joined(
            separator: "\n")
        var key = SymmetricKey(data: Array(("AWS4" + credentials.secretAccessKey).utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = TC3Signature.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        var result = [
            (
                "Authorization",
                "\(algorithm) Credential=\(credentials.accessKeyID)/\(scope), "
                    + "SignedHeaders=\(names.joined(separator: ";")), Signature=\(signature)"
            ),
            ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash),
        ]
        if let token = credentials.sessionToken { result.append(("x-amz-security-token", token)) }
        return result
    }

    /// `yyyyMMdd'T'HHmmss'Z'` in UTC.
    public static func amzDate(_ date: Date) -> String {
        let seconds = Int(date.timeIntervalSince1970.rounded(.down))
        let day = TC3Signature.date(of: seconds).replacingOccurrences(of: "-", with: "")
        let inDay = ((seconds % 86_400) + 86_400) % 86_400
        return day + String(format: "T%02d%02d%02dZ", inDay / 3600, inDay % 3600 / 60, inDay % 60)
    }

    /// Percent-encodes everything but the unreserved characters (and `/` in a path), as SigV4 requires.
    public static func encode(_ string: String, keepSlash: Bool = false) -> String {
        var result = ""
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                UInt8(ascii: "~"):
                result.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                result.append("/")
            default:
                result += String(format: "%%%02X", byte)
            }
        }
        return result
    }

    public static func hexSHA256(_ bytes: [UInt8]) -> String { TC3Signature.hex(SHA256.hash(data: bytes)) }
}
