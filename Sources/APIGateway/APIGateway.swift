import ArgumentParser
import BatchCore
import BatchRuntime
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import Messaging
import NIOSSL
import Persistence
import ServiceLifecycle
import ServiceRuntime

/// The HTTP API: Tencent Cloud Batch API 3.0 (`POST /`, `X-TC-Action`, TC3-HMAC-SHA256) on top of PostgreSQL,
/// with an outbox relay that publishes the events its writes cause.
@main
struct APIGateway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "APIGateway",
        abstract: "Serve the Batch API over HTTPS (or plain HTTP for local development).",
        discussion: """
            Example: APIGateway --tls-certificate cert.pem --tls-key key.pem --port 8443
                     APIGateway --insecure-http --port 8080
            """,
        version: BatchRelease.serviceVersion)

    @Option(help: "Address to listen on (BATCH_GATEWAY_HOST, default 127.0.0.1).")
    var host: String = Environment.value("BATCH_GATEWAY_HOST", default: "127.0.0.1")

    @Option(help: "Port to listen on (BATCH_GATEWAY_PORT, default 8080).")
    var port: Int = Environment.int("BATCH_GATEWAY_PORT", default: 8080)

    @Option(name: .customLong("tls-certificate"), help: "PEM certificate chain for HTTPS (BATCH_TLS_CERTIFICATE).")
    var tlsCertificateOption: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key for HTTPS (BATCH_TLS_KEY).")
    var tlsKeyOption: String?

    var tlsCertificate: String? { tlsCertificateOption ?? Environment.value("BATCH_TLS_CERTIFICATE") }
    var tlsKey: String? { tlsKeyOption ?? Environment.value("BATCH_TLS_KEY") }

    @Flag(name: .customLong("insecure-http"), help: "Serve plain HTTP, for local development (BATCH_INSECURE_HTTP=1).")
    var insecureHTTPFlag = false

    var insecureHTTP: Bool { insecureHTTPFlag || Environment.value("BATCH_INSECURE_HTTP") == "1" }

    @Option(
        help: """
            Without --tls-certificate: where the gateway keeps the CA and certificate it makes on first start             (BATCH_TLS_DIRECTORY, default .batch/tls); clients trust its ca.pem.
            """)
    var tlsDirectory: String = Environment.value("BATCH_TLS_DIRECTORY", default: ".batch/tls")

    @Option(
        help: """
            Names the made certificate is for besides localhost, 127.0.0.1, ::1, this host's name and --host,             comma-separated (BATCH_TLS_NAMES).
            """)
    var tlsNames: String = Environment.value("BATCH_TLS_NAMES", default: "")

    @Option(help: "Write the port listened on to this file once listening; with --port 0 (BATCH_GATEWAY_PORT_FILE).")
    var portFile: String?

    @Option(help: "Largest request body in bytes (BATCH_MAX_BODY_SIZE, default 1 MiB).")
    var maxBodySize: Int = Environment.int("BATCH_MAX_BODY_SIZE", default: 1 << 20)

    @Option(help: "Zone reported for jobs and environments that name none (BATCH_ZONE, default local).")
    var zone: String = Environment.value("BATCH_ZONE", default: "local")

    @Option(help: "Jobs a user may keep (BATCH_QUOTA_JOBS, default 1000).")
    var quotaJobs: Int = Environment.int("BATCH_QUOTA_JOBS", default: 1000)

    @Option(help: "Task templates a user may keep (BATCH_QUOTA_TEMPLATES, default 50).")
    var quotaTemplates: Int = Environment.int("BATCH_QUOTA_TEMPLATES", default: 50)

    @Option(help: "Compute environments a user may keep (BATCH_QUOTA_ENVS, default 10).")
    var quotaEnvs: Int = Environment.int("BATCH_QUOTA_ENVS", default: 10)

    /// Requests a second one user may make on average, 0 for no limit; over it the answer is `RequestLimitExceeded`.
    /// Per gateway process. Default 500.
    @Option(help: "Requests a second per user, 0 for no limit (BATCH_RATE_LIMIT, default 500).")
    var rateLimit: Int = Environment.int("BATCH_RATE_LIMIT", default: 500)

    @Option(help: "Requests one user may make at once above the rate (BATCH_RATE_BURST, default twice the rate).")
    var rateBurst: Int?

    /// Users (by name) who may create environments with `"Sandbox": false`: their instances run without isolation.
    @Option(help: "Comma-separated user names allowed unsandboxed environments (BATCH_UNSANDBOXED_USERS).")
    var unsandboxedUsers: String = Environment.value("BATCH_UNSANDBOXED_USERS", default: "")

    /// Where an operator's key pair is written on first start: the credential `batchctl admin` signs with.
    @Option(
        name: .customLong("operator-credentials"),
        help: """
            Write a new key pair of the operator user (`operator`) to this file (mode 0600) when the file does not \
            exist, before serving; `batchctl admin` signs with it (BATCH_OPERATOR_CREDENTIALS).
            """)
    var operatorCredentialsOption: String?

    var operatorCredentials: String? {
        operatorCredentialsOption ?? Environment.value("BATCH_OPERATOR_CREDENTIALS")
    }

    @OptionGroup var connections: ConnectionOptions

    func validate() throws {
        guard rateLimit >= 0 else { throw ValidationError("--rate-limit must be 0 (no limit) or a number of requests") }
        if let rateBurst, rateBurst < 1 { throw ValidationError("--rate-burst must be at least 1") }
    }

    func run() async throws {
        let logger = Observability.bootstrap(service: "gateway")
        let server: HTTPServerBuilder
        do {
            server = try makeServer(logger: logger)
        } catch {
            exitWithError("APIGateway", error)
        }
        var quotas = Quotas()
        quotas.jobsPerUser = quotaJobs
        quotas.taskTemplatesPerUser = quotaTemplates
        quotas.computeEnvsPerUser = quotaEnvs
        let replyID = "gateway-\(UUID().uuidString.prefix(8).lowercased())"
        let bootstrap = ServiceBootstrap(
            service: "APIGateway", databaseURL: connections.databaseURL, amqpURL: connections.amqpURL(role: "GATEWAY"),
            role: "GATEWAY",
            topology: LogFetcher.topology(id: replyID), logger: logger)
        let (database, amqp) = (bootstrap.database, bootstrap.amqp)
        try await bootstrap.withPreparedDatabase {
            if let operatorCredentials {
                do {
                    try await Self.writeOperatorCredentials(
                        to: operatorCredentials, users: UserStore(database: database), logger: logger)
                } catch {
                    exitWithError("APIGateway", error)
                }
            }
            let logFetcher = LogFetcher(amqp: amqp, id: replyID, logger: logger)
            let burst = rateBurst ?? Environment.int("BATCH_RATE_BURST", default: 2 * rateLimit)
            let api = BatchAPI(
                database: database, quotas: quotas, zone: zone, maxBodySize: maxBodySize,
                limiter: rateLimit > 0 ? RequestLimiter(rate: rateLimit, burst: max(1, burst)) : nil,
                logFetcher: logFetcher,
                unsandboxedUsers: Set(
                    unsandboxedUsers.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }),
                logger: logger)
            let router = Router(context: BatchRequestContext.self)
            api.addRoutes(to: router)
            Observability.addOperationalRoutes(to: router) {
                guard amqp.isConnected else { return false }
                return (try? await database.client.query("SELECT 1")) != nil
            }
            let app = Application(
                router: router, server: server,
                configuration: .init(address: .hostname(host, port: port), serverName: "batch-gateway"),
                onServerRunning: { [portFile = portFile ?? Environment.value("BATCH_GATEWAY_PORT_FILE")] channel in
                    if let portFile, let port = channel.localAddress?.port {
                        do {
                            try "\(port)\n".write(toFile: portFile, atomically: true, encoding: .utf8)
                        } catch {
                            logger.error("cannot write the port file", metadata: ["path": "\(portFile)"])
                        }
                    }
                    logger.info(
                        "gateway listening",
                        metadata: [
                            "address": "\(channel.localAddress.map { "\($0)" } ?? "?")",
                            "tls": "\(tlsCertificate != nil || !insecureHTTP)",
                        ])
                },
                logger: logger)
            let services = ServiceGroup(
                configuration: .init(
                    services: [amqp, OutboxRelay(database: database, amqp: amqp, logger: logger), logFetcher, app],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await services.run()
        }
    }

    /// Writes a new operator key pair to `path` unless the file exists: JSON with `secretId` and `secretKey`, the
    /// format of `batchctl`'s credentials file, made with mode 0600 and moved into place whole.
    static func writeOperatorCredentials(to path: String, users: UserStore, logger: Logger) async throws {
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let created: UserStore.NewCredentials
        do {
            created = try await users.operatorKeyPair(name: "operator")
        } catch StoreRefusal.userNameTaken(let name) {
            throw StartupError("--operator-credentials: a user named \(name) exists already and is not an operator")
        }
        let object = ["secretId": created.secretID, "secretKey": created.secretKey]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        let temporary = path + ".\(UUID().uuidString.prefix(8))"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600])
        else {
            throw StartupError("--operator-credentials: cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw StartupError("--operator-credentials: cannot write \(path): \(String(cString: strerror(errno)))")
        }
        logger.notice(
            "operator key pair written", metadata: ["path": "\(path)", "user.id": "\(created.userID)"])
    }

    /// HTTPS with the operator's certificate and key, or with those the gateway made in `--tls-directory` (on
    /// first start); plain HTTP only with `--insecure-http`.
    func makeServer(logger: Logger) throws -> HTTPServerBuilder {
        func https(certificate: String, key: String) throws -> HTTPServerBuilder {
            let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
            let configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            return try .tls(.http1(), tlsConfiguration: configuration)
        }
        switch (tlsCertificate, tlsKey) {
        case (let certificate?, let key?):
            return try https(certificate: certificate, key: key)
        case (nil, nil) where insecureHTTP:
            return .http1()
        case (nil, nil):
            let generated = GeneratedTLS(directory: tlsDirectory)
            // This host's name costs a lookup: taken only when the certificate is made.
            func names() -> [String] {
                var names = ["localhost", "127.0.0.1", "::1", ProcessInfo.processInfo.hostName]
                if !["0.0.0.0", "::", ""].contains(host) { names.append(host) }
                names += tlsNames.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                var seen: Set<String> = []
                return names.filter { !$0.isEmpty && seen.insert($0).inserted }
            }
            if try generated.ensure(names: names()) {
                logger.notice(
                    "made a CA and the gateway's certificate; clients trust the CA",
                    metadata: ["ca": "\(generated.caPath)", "certificate": "\(generated.certificatePath)"])
            }
            return try https(certificate: generated.certificatePath, key: generated.keyPath)
        default:
            throw StartupError("give both --tls-certificate and --tls-key")
        }
    }
}
