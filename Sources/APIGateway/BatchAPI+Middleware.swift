import BatchCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Persistence

/// What a Batch API request carries through the gateway's middleware: its id and action, and once authenticated,
/// its body and caller.
struct BatchRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    var requestID = UUID().uuidString.lowercased()
    /// `X-TC-Action`, as sent.
    var action = ""
    /// The signed body, read whole (at most the gateway's `--max-body-size`).
    var body: [UInt8] = []
    var caller: UserStore.Credential?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }
}

/// Outermost: names the request (id and action, in every log line), answers any error in Tencent Cloud's shape
/// (`{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` with HTTP 200: its SDKs treat any other status as a
/// network failure and would lose the code; only a body over the limit gets its 413), and counts every request by
/// action and outcome (`batch_api_requests_total`, `batch_api_request_duration`).
struct APIResponseMiddleware: RouterMiddleware {
    let maxBodySize: Int
    let logger: Logger

    func handle(
        _ request: Request, context: BatchRequestContext,
        next: (Request, BatchRequestContext) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        var context = context
        context.action = request.headers[.tcAction] ?? ""
        context.logger = logger
        context.logger[metadataKey: "request.id"] = "\(context.requestID)"
        context.logger[metadataKey: "api.action"] = "\(context.action.prefix(64))"
        let response: Response
        var outcome = "ok"
        do {
            response = try await next(request, context)
        } catch {
            let (apiError, status) = answer(to: error, context: context)
            outcome = apiError.code.rawValue
            response = BatchAPI.errorResponse(apiError, requestID: context.requestID, status: status)
        }
        let metricAction = BatchAPI.actions[context.action] == nil ? "unknown" : context.action
        let metrics = RequestMetrics.shared
        metrics.counter(action: metricAction, outcome: outcome == "ok" ? "ok" : String(outcome.prefix { $0 != "." }))
            .increment()
        metrics.timer(action: metricAction).recordNanoseconds((ContinuousClock.now - start).nanoseconds)
        return response
    }

    /// The API's error for `error`, and the HTTP status to send it with.
    func answer(to error: any Error, context: BatchRequestContext) -> (APIError, HTTPResponse.Status) {
        switch error {
        case is BodyTooLarge:
            return (bodyTooLarge, .contentTooLarge)
        case let error as HTTPError where error.status == .contentTooLarge:
            return (bodyTooLarge, .contentTooLarge)
        case let error as APIError:
            context.logger.info("request refused", metadata: ["error.code": "\(error.code.rawValue)"])
            return (error, .ok)
        case let refusal as StoreRefusal:
            let error = BatchAPI.apiError(refusal)
            context.logger.info("request refused", metadata: ["error.code": "\(error.code.rawValue)"])
            return (error, .ok)
        case let violation as Quotas.Violation:
            return (violation.apiError, .ok)
        default:
            context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
            return (APIError(.internalError, "internal error; quote request id \(context.requestID)"), .ok)
        }
    }

    var bodyTooLarge: APIError {
        APIError(.requestSizeLimitExceeded, "the request body is larger than \(maxBodySize) bytes")
    }
}

/// A body larger than the gateway takes, known by its declared length before it is read.
struct BodyTooLarge: Error {}

/// Reads the body (refusing one over the limit by its declared length before reading it, and while reading it
/// otherwise) and checks its TC3-HMAC-SHA256 signature: the caller is known from here on.
struct AuthenticationMiddleware: RouterMiddleware {
    let api: BatchAPI

    func handle(
        _ request: Request, context: BatchRequestContext,
        next: (Request, BatchRequestContext) async throws -> Response
    ) async throws -> Response {
        if let length = request.headers[.contentLength].flatMap(Int.init), length > api.maxBodySize {
            throw BodyTooLarge()
        }
        var context = context
        var request = request
        context.body = Array(try await request.collectBody(upTo: api.maxBodySize).readableBytesView)
        let caller = try await api.authenticate(request, body: context.body)
        context.caller = caller
        context.logger[metadataKey: "user.id"] = "\(caller.userID)"
        return try await next(request, context)
    }
}

/// Holds each user to `--rate-limit` requests a second (`--rate-burst` at once) in this gateway.
struct RateLimitMiddleware: RouterMiddleware {
    let limiter: RequestLimiter?

    func handle(
        _ request: Request, context: BatchRequestContext,
        next: (Request, BatchRequestContext) async throws -> Response
    ) async throws -> Response {
        if let limiter, let caller = context.caller, !limiter.admit(caller.userID) {
            throw APIError(
                .requestLimitExceeded,
                "more than \(limiter.rate) requests a second from this user (\(limiter.burst) at once); retry later")
        }
        return try await next(request, context)
    }
}
