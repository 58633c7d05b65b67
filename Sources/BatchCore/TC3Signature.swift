import Crypto
import Foundation

/// Tencent Cloud API signature v3 (`TC3-HMAC-SHA256`), as the SDKs compute it and as the gateway verifies it.
///
/// canonical request = `METHOD\n/\n<query>\n<signed headers, name:value\n each>\n<signed header names>\n<hex sha256 body>`;
/// string to sign = `TC3-HMAC-SHA256\n<timestamp>\n<date>/<service>/tc3_request\n<hex sha256 canonical request>`;
/// key = HMAC chain `"TC3"+SecretKey` → date → service → `tc3_request`; signature = hex HMAC(key, string to sign).
public enum TC3Signature {
    public static let algorithm = "TC3-HMAC-SHA256"

    /// The parts of an `Authorization` header.
    public struct Authorization: Sendable, Hashable {
        public var secretID: String
        public var date: String
        public var service: String
        public var signedHeaders: [String]
        public var signature: String

        /// Parses `TC3-HMAC-SHA256 Credential=<id>/<date>/<service>/tc3_request, SignedHeaders=a;b, Signature=<hex>`.
        public init?(header: String) {
            guard header.hasPrefix(TC3Signature.algorithm + " ") else { return nil }
            var fields: [String: String] = [:]
            for part in header.dropFirst(TC3Signature.algorithm.count + 1).split(separator: ",") {
                let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                guard pair.count == 2 else { return nil }
                fields[String(pair[0])] = String(pair[1])
            }
            guard let credential = fields["Credential"], let signedHeaders = fields["SignedHeaders"],
                let signature = fields["Signature"]
            else { return nil }
            let scope = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard scope.count == 4, scope[3] == "tc3_request", !scope[0].isEmpty else { return nil }
            self.secretID = scope[0]
            self.date = scope[1]
            self.service = scope[2]
            self.signedHeaders = signedHeaders.split(separator: ";").map { $0.lowercased() }
            self.signature = signature.lowercased()
            guard !self.signedHeaders.isEmpty, self.signature.count == 64 else { return nil }
        }

        public init(secretID: String, date: String, service: String, signedHeaders: [String], signature: String) {
            self.secretID = secretID
            self.date = date
            self.service = service
            self.signedHeaders = signedHeaders
            self.signature = signature
        }

        public var header: String {
            "\(TC3Signature.algorithm) Credential=\(secretID)/\(date)/\(service)/tc3_request, "
                + "SignedHeaders=\(signedHeaders.joined(separator: ";")), Signature=\(signature)"
        }
    }

    /// The UTC date (`yyyy-MM-dd`) of a Unix timestamp, as the credential scope uses it.
    public static func date(of timestamp: Int) -> String {
        let days = timestamp >= 0 ? timestamp / 86_400 : (timestamp - 86_399) / 86_400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return String(format: "%04d-%02d-%02d", year, month, day)
    }

    /// The signature of a request. `headers` maps lowercase names to values and must hold every signed header.
    public static func signature(
        secretKey: String, method: String = "POST", query: String = "", headers: [String: String],
        signedHeaders: [String], body: some Collection<UInt8>, timestamp: Int, date: String, service: String
    ) -> String {
        // Names and values are lowercased and trimmed, as Tencent Cloud's signature v3 specifies.
        let canonicalHeaders = signedHeaders.map {
            "\($0):\(headers[$0, default: ""].lowercased().trimmingCharacters(in: .whitespaces))\n"
        }
        .joined()
        let canonicalRequest = [
            method, "/", query, canonicalHeaders, signedHeaders.joined(separator: ";"),
            hex(SHA256.hash(data: Array(body))),
        ].joined(separator: "\n")
        let stringToSign = [
            algorithm, String(timestamp), "\(date)/\(service)/tc3_request",
            hex(SHA256.hash(data: Array(canonicalRequest.utf8))),
        ].joined(separator: "\n")
        var key = SymmetricKey(data: Array(("TC3" + secretKey).utf8))
        for part in [date, service, "tc3_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        return hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
    }

    /// The headers a client sends for an API call: `Authorization`, `Content-Type`, `Host`, `X-TC-Action`,
    /// `X-TC-Version`, `X-TC-Timestamp` (and `X-TC-Region` when given). Signs `content-type;host;x-tc-action`.
    public static func signedRequestHeaders(
        secretID: String, secretKey: String, host: String, action: String, version: String = "2017-03-12",
        region: String? = nil, body: some Collection<UInt8>, timestamp: Int, service: String = "batch"
    ) -> [(String, String)] {
        let contentType = "application/json; charset=utf-8"
        let headers = ["content-type": contentType, "host": host, "x-tc-action": action.lowercased()]
        let signedHeaders = ["content-type", "host", "x-tc-action"]
        let date = date(of: timestamp)
        let signature = signature(
            secretKey: secretKey, headers: headers, signedHeaders: signedHeaders, body: body, timestamp: timestamp,
            date: date, service: service)
        let authorization = Authorization(
            secretID: secretID, date: date, service: service, signedHeaders: signedHeaders, signature: signature)
        var result = [
            ("Authorization", authorization.header), ("Content-Type", contentType), ("Host", host),
            ("X-TC-Action", action), ("X-TC-Version", version), ("X-TC-Timestamp", String(timestamp)),
        ]
        if let region { result.append(("X-TC-Region", region)) }
        return result
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(64)
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// Compares two strings in time that does not depend on where they differ.
    public static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
