import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus

/// Process-wide logging and metrics, set up once at start by each executable.
public enum Observability {
    /// The registry `/metrics` renders.
    public static let registry = PrometheusCollectorRegistry()

    /// Logs to stderr at `BATCH_LOG_LEVEL` (default `info`); metrics into ``registry``.
    public static func bootstrap(service: String) -> Logger {
        let level = Environment.value("BATCH_LOG_LEVEL").flatMap(Logger.Level.init(rawValue:)) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: service)
        logger.logLevel = level
        return logger
    }

    /// The Prometheus text exposition of every metric.
    public static func renderMetrics() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }

    /// Adds `GET /healthz` (the process is up), `GET /readyz` (`ready()` says it can serve) and `GET /metrics`.
    public static func addOperationalRoutes<Context: RequestContext>(
        to router: Router<Context>, ready: @escaping @Sendable () async -> Bool
    ) {
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/readyz") { _, _ -> Response in
            let isReady = await ready()
            return Response(
                status: isReady ? .ok : .serviceUnavailable,
                body: ResponseBody(byteBuffer: ByteBuffer(string: isReady ? "ready\n" : "not ready\n")))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: renderMetrics())))
        }
    }

    /// An HTTP server with only the operational routes, for services without an API of their own.
    public static func operationalServer(
        host: String = "127.0.0.1", port: Int, logger: Logger, ready: @escaping @Sendable () async -> Bool
    ) -> some ApplicationProtocol {
        let router = Router()
        addOperationalRoutes(to: router, ready: ready)
        return Application(
            router: router, configuration: .init(address: .hostname(host, port: port)), logger: logger)
    }
}
