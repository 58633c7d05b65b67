import AsyncHTTPClient
import BatchCore
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOSSL

/// A client of the gateway's API (Tencent Cloud Batch's wire format): each call a `POST /` signed with a user's key
/// pair (TC3-HMAC-SHA256), over HTTP or HTTPS. `batchctl`, the end-to-end tests and `api-bench` call through it.
public struct BatchClient: Sendable {
    /// A user's API key pair.
    public struct KeyPair: Sendable, Hashable {
        public var secretID: String
        public var secretKey: String

        public init(secretID: String, secretKey: String) {
            self.secretID = secretID
            self.secretKey = secretKey
        }
    }

    /// Why a call did not give a response.
    public enum Failure: Error, CustomStringConvertible, Sendable {
        /// The API answered with an error: its code (`InvalidParameter`, `ResourceNotFound.Job`, …) and message.
        case api(action: String, code: String, message: String, status: Int)
        /// The gateway could not be reached, or did not answer in time.
        case unreachable(endpoint: String, reason: String)
        /// An answer that is not a Batch response.
        case malformed(action: String, status: Int, body: String)
        /// A call that needs a key pair was made without one.
        case noKeyPair

        public var description: String {
            switch self {
            case .api(_, let code, let message, _): "\(code): \(message)"
            case .unreachable(let endpoint, let reason): "cannot reach the gateway at \(endpoint): \(reason)"
            case .malformed(let action, let status, _):
                "\(action): the gateway answered HTTP \(status) without a Batch response"
            case .noKeyPair: "no key pair: give a secret id and key"
            }
        }
    }

    /// The gateway's `host:port`.
    public let endpoint: String
    public let https: Bool
    /// The key pair calls are signed with unless a call names another.
    public let keyPair: KeyPair?
    /// The largest response read, in bytes.
    public var responseLimit = 64 << 20
    public var timeout: TimeAmount = .seconds(30)
    let http: HTTPClient

    /// A client of the gateway at `endpoint` (`host:port`), through `http` (`HTTPClient.shared` by default; see
    /// ``httpClient(caCertificate:)`` for a gateway whose certificate a private CA signed).
    public init(endpoint: String, https: Bool = false, keyPair: KeyPair?, http: HTTPClient = .shared) {
        self.endpoint = endpoint
        self.https = https
        self.keyPair = keyPair
        self.http = http
    }

    /// The URL calls go to.
    public var baseURL: String { "\(https ? "https" : "http")://\(endpoint)/" }

    /// An HTTP client that trusts only the certificates in the PEM file at `caCertificate` (the operator's CA, or the
    /// gateway's own certificate); the system's roots when nil. The caller shuts it down.
    public static func httpClient(caCertificate: String?) throws -> HTTPClient {
        guard let caCertificate else { return .shared }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificate))
        var configuration = HTTPClient.Configuration()
        configuration.tlsConfiguration = tls
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Calls `action` with `body` (a JSON object) and returns the `Response` object; throws ``Failure``.
    public func call(_ action: String, _ body: [String: Any], as user: KeyPair? = nil) async throws -> [String: Any] {
        try await call(action, payload: Array(try JSONSerialization.data(withJSONObject: body)), as: user)
    }

    /// Calls `action` with a typed request and decodes the `Response` object as `Response`, both in the API's
    /// field names (``BatchJSON``: `jobName` is `JobName`).
    public func call<Request: Encodable, Response: Decodable>(
        _ action: String, _ request: Request, as user: KeyPair? = nil, returning: Response.Type = Response.self
    ) async throws -> Response {
        let answer = try await call(action, payload: try BatchJSON.encode(request), as: user)
        return try BatchJSON.decode(Response.self, from: try JSONSerialization.data(withJSONObject: answer))
    }

    /// Calls `action` with a raw body and returns the `Response` object; throws ``Failure``.
    public func call(_ action: String, payload: [UInt8], as user: KeyPair? = nil) async throws -> [String: Any] {
        guard let signer = user ?? keyPair else { throw Failure.noKeyPair }
        let headers = TC3Signature.signedRequestHeaders(
            secretID: signer.secretID, secretKey: signer.secretKey, host: endpoint, action: action, body: payload,
            timestamp: Int(Date().timeIntervalSince1970))
        let (status, data) = try await post(headers: headers, body: payload)
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let inner = object["Response"] as? [String: Any]
        else {
            throw Failure.malformed(
                action: action, status: status, body: String(decoding: data.prefix(512), as: UTF8.self))
        }
        if let error = inner["Error"] as? [String: Any] {
            throw Failure.api(
                action: action, code: error["Code"] as? String ?? "?", message: error["Message"] as? String ?? "",
                status: status)
        }
        return inner
    }

    /// Sends `body` with exactly `headers` (nothing signed or added): the HTTP status and the `Response` object
    /// (empty when there is none). For probing the gateway with requests a client would never make.
    public func send(headers: [(String, String)], body: [UInt8]) async throws -> (status: Int, response: [String: Any])
    {
        let (status, data) = try await post(headers: headers, body: body)
        let object = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        return (status, object["Response"] as? [String: Any] ?? [:])
    }

    private func post(headers: [(String, String)], body: [UInt8]) async throws -> (status: Int, data: Data) {
        var request = HTTPClientRequest(url: baseURL)
        request.method = .POST
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(body)
        do {
            let response = try await http.execute(request, timeout: timeout)
            let data = Data(buffer: try await response.body.collect(upTo: responseLimit))
            return (Int(response.status.code), data)
        } catch  where !(error is CancellationError) {
            throw Failure.unreachable(endpoint: endpoint, reason: "\(error)")
        }
    }
}
