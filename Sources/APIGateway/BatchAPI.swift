import BatchCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Persistence

/// Tencent Cloud Batch API 3.0 over HTTP: authenticates a request, runs its action and wraps the answer in
/// `{"Response": {…, "RequestId": …}}`.
///
/// Errors are `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` with HTTP status 200, as Tencent Cloud
/// answers them: its SDKs treat any other status as a network failure and would lose the code. Only failures
/// before the API layer (a body over the size limit) get a 4xx.
struct BatchAPI: Sendable {
    static let version = "2017-03-12"
    static let maxBodySize = 1 << 20
    /// How far `X-TC-Timestamp` may be from the server's clock.
    static let clockSkew = 300

    let database: Database
    let logger: Logger
    let users: UserStore
    let jobs: JobStore
    let envs: ComputeEnvStore

    init(database: Database, logger: Logger) {
        self.database = database
        self.logger = logger
        self.users = UserStore(database: database)
        self.jobs = JobStore(database: database)
        self.envs = ComputeEnvStore(database: database)
    }

    func respond(to request: Request, context: some RequestContext) async throws -> Response {
        let requestID = UUID().uuidString.lowercased()
        let action = request.headers[.tcAction] ?? ""
        var logger = self.logger
        logger[metadataKey: "request.id"] = "\(requestID)"
        logger[metadataKey: "api.action"] = "\(action)"
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: Self.maxBodySize)
        } catch {
            return Self.errorResponse(
                APIError(.requestSizeLimitExceeded, "the request body is larger than \(Self.maxBodySize) bytes"),
                requestID: requestID, status: .contentTooLarge)
        }
        do {
            let bytes = Array(body.readableBytesView)
            let user = try await authenticate(request, body: bytes)
            logger[metadataKey: "user.id"] = "\(user)"
            guard request.headers[.tcVersion] == Self.version else {
                throw APIError(.invalidParameterValue, "X-TC-Version must be \(Self.version)")
            }
            let payload = try await perform(action: action, body: bytes, user: user, logger: logger)
            return Self.jsonResponse(payload, requestID: requestID)
        } catch let error as APIError {
            logger.info("request refused", metadata: ["error.code": "\(error.code.rawValue)"])
            return Self.errorResponse(error, requestID: requestID)
        } catch {
            logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
            return Self.errorResponse(
                APIError(.internalError, "internal error; quote request id \(requestID)"), requestID: requestID)
        }
    }

    // MARK: Authentication

    /// Checks the TC3-HMAC-SHA256 signature and returns the caller.
    func authenticate(_ request: Request, body: [UInt8]) async throws -> UserID {
        guard let header = request.headers[.authorization] else {
            throw APIError(.missingAuthorization, "the Authorization header is missing")
        }
        guard let authorization = TC3Signature.Authorization(header: header), authorization.service == "batch" else {
            throw APIError(
                .invalidAuthorization,
                "Authorization must be TC3-HMAC-SHA256 Credential=<SecretId>/<date>/batch/tc3_request, "
                    + "SignedHeaders=…, Signature=…")
        }
        guard let timestamp = request.headers[.tcTimestamp].flatMap(Int.init) else {
            throw APIError(.missingParameter, "X-TC-Timestamp is missing or not a Unix time")
        }
        let now = Int(Date().timeIntervalSince1970)
        guard abs(now - timestamp) <= Self.clockSkew else {
            throw APIError(.signatureExpire, "X-TC-Timestamp is more than \(Self.clockSkew) s from the server's time")
        }
        guard authorization.date == TC3Signature.date(of: timestamp) else {
            throw APIError(.signatureFailure, "the credential's date does not match X-TC-Timestamp")
        }
        guard authorization.signedHeaders.contains("content-type"), authorization.signedHeaders.contains("host") else {
            throw APIError(.signatureFailure, "SignedHeaders must include content-type and host")
        }
        guard let credential = try await users.credential(secretID: authorization.secretID), !credential.disabled else {
            throw APIError(.secretIdNotFound, "the SecretId is unknown or disabled")
        }
        var headers: [String: String] = [:]
        for name in authorization.signedHeaders {
            if name == "host" {
                headers[name] = request.head.authority ?? ""
            } else if let field = HTTPField.Name(name) {
                headers[name] = request.headers[field] ?? ""
            }
        }
        let expected = TC3Signature.signature(
            secretKey: credential.secretKey, method: request.method.rawValue, query: request.uri.query ?? "",
            headers: headers, signedHeaders: authorization.signedHeaders, body: body, timestamp: timestamp,
            date: authorization.date, service: "batch")
        guard TC3Signature.constantTimeEquals(expected, authorization.signature) else {
            throw APIError(.signatureFailure, "the signature does not match; check the SecretKey and what was signed")
        }
        return credential.userID
    }

    // MARK: Responses

    static func jsonResponse(_ payload: any Encodable & Sendable, requestID: String) -> Response {
        let body: [UInt8]
        do {
            body = try BatchJSON.encode(ResponseEnvelope(payload: payload, requestId: requestID))
        } catch {
            return errorResponse(APIError(.internalError, "could not encode the response"), requestID: requestID)
        }
        return Response(
            status: .ok, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }

    static func errorResponse(_ error: APIError, requestID: String, status: HTTPResponse.Status = .ok) -> Response {
        struct ErrorPayload: Encodable, Sendable {
            struct Detail: Encodable, Sendable {
                var code: String
                var message: String
            }
            var error: Detail
        }
        let payload = ErrorPayload(error: .init(code: error.code.rawValue, message: error.message))
        let body = (try? BatchJSON.encode(ResponseEnvelope(payload: payload, requestId: requestID))) ?? []
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// `{"Response": {<payload's fields>, "RequestId": …}}`.
struct ResponseEnvelope: Encodable {
    var payload: any Encodable
    var requestId: String

    enum CodingKeys: String, CodingKey { case response }
    enum InnerKeys: String, CodingKey { case requestId }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        let inner = container.superEncoder(forKey: .response)
        try payload.encode(to: inner)
        var innerContainer = inner.container(keyedBy: InnerKeys.self)
        try innerContainer.encode(requestId, forKey: .requestId)
    }
}

extension HTTPField.Name {
    static let tcAction = Self("X-TC-Action")!
    static let tcVersion = Self("X-TC-Version")!
    static let tcTimestamp = Self("X-TC-Timestamp")!
    static let tcRegion = Self("X-TC-Region")!
}
