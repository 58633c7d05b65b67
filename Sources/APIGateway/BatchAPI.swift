import BatchCore
import BatchRuntime
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import Persistence
import Synchronization

/// Tencent Cloud Batch API 3.0 over HTTP: authenticates a request, runs its action and wraps the answer in
/// `{"Response": {…, "RequestId": …}}`.
///
/// Errors are `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` with HTTP status 200, as Tencent Cloud
/// answers them: its SDKs treat any other status as a network failure and would lose the code. Only failures
/// before the API layer (a body over the size limit) get a 4xx.
struct BatchAPI: Sendable {
    static let version = "2017-03-12"
    /// How far `X-TC-Timestamp` may be from the server's clock.
    static let clockSkew = 300

    let database: Database
    let logger: Logger
    let credentials: CredentialCache
    let jobs: JobStore
    let envs: ComputeEnvStore
    let templates: TemplateStore
    /// The zone jobs and environments are placed in when a request names none.
    let zone: String
    let catalog: NodeCatalog
    let maxBodySize: Int
    /// Reads running and finished instances' output from their nodes.
    let logFetcher: LogFetcher?
    /// Each user's request rate (nil: no limit).
    let limiter: RequestLimiter?
    /// The users (by name) who may create environments whose instances run without a sandbox.
    let unsandboxedUsers: Set<String>

    init(
        database: Database, quotas: Quotas, zone: String, maxBodySize: Int, limiter: RequestLimiter? = nil,
        logFetcher: LogFetcher? = nil, unsandboxedUsers: Set<String> = [], logger: Logger
    ) {
        self.unsandboxedUsers = unsandboxedUsers
        self.limiter = limiter
        self.logFetcher = logFetcher
        self.database = database
        self.logger = logger
        self.credentials = CredentialCache(users: UserStore(database: database))
        self.jobs = JobStore(database: database, quotas: quotas)
        self.envs = ComputeEnvStore(database: database, quotas: quotas)
        self.templates = TemplateStore(database: database, quotas: quotas)
        self.zone = zone
        self.catalog = NodeCatalog(zone: zone)
        self.maxBodySize = maxBodySize
    }

    /// The Batch API on `router`: `POST /` through the middleware that answers every error in the API's shape and
    /// counts it (``APIResponseMiddleware``), reads and authenticates the signed body (``AuthenticationMiddleware``)
    /// and holds each user to the rate limit (``RateLimitMiddleware``), then the action.
    func addRoutes(to router: Router<BatchRequestContext>) {
        router.group()
            .add(middleware: APIResponseMiddleware(maxBodySize: maxBodySize, logger: logger))
            .add(middleware: AuthenticationMiddleware(api: self))
            .add(middleware: RateLimitMiddleware(limiter: limiter))
            .post("/") { request, context in try await respond(to: request, context: context) }
    }

    /// Runs an authenticated request's action and wraps its answer.
    func respond(to request: Request, context: BatchRequestContext) async throws -> Response {
        guard request.headers[.tcVersion] == Self.version else {
            throw APIError(.invalidParameterValue, "X-TC-Version must be \(Self.version)")
        }
        guard let caller = context.caller else {
            throw APIError(.missingAuthorization, "the Authorization header is missing")
        }
        let payload = try await perform(
            action: context.action,
            context: ActionContext(
                user: caller.userID, secretID: caller.secretID, isOperator: caller.isOperator, body: context.body,
                logger: context.logger))
        return Self.jsonResponse(payload, requestID: context.requestID)
    }

    // MARK: Authentication

    /// Checks the TC3-HMAC-SHA256 signature and returns the caller's credential.
    func authenticate(_ request: Request, body: [UInt8]) async throws -> UserStore.Credential {
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
        guard let credential = try await credentials.credential(secretID: authorization.secretID), !credential.disabled
        else {
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
        return credential
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

/// Key pairs looked up by SecretId, kept for a few seconds so that a burst of requests costs one query; a
/// disabled user is refused within ``ttl``.
final class CredentialCache: Sendable {
    let users: UserStore
    let ttl: Duration
    private let entries = Mutex<[String: (UserStore.Credential?, ContinuousClock.Instant)]>([:])

    init(users: UserStore, ttl: Duration = .seconds(5)) {
        self.users = users
        self.ttl = ttl
    }

    func credential(secretID: String) async throws -> UserStore.Credential? {
        let now = ContinuousClock.now
        if let (credential, expiry) = entries.withLock({ $0[secretID] }), now < expiry { return credential }
        let credential = try await users.credential(secretID: secretID)
        entries.withLock { entries in
            if entries.count > 10_000 { entries.removeAll() }
            entries[secretID] = (credential, now + ttl)
        }
        return credential
    }
}
