// swift-tools-version:6.1
import PackageDescription

/// One set of compiler settings for every target: Swift 6 language mode with complete concurrency checking.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "batch",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "APIGateway", targets: ["APIGateway"]),
        .executable(name: "SchedulerService", targets: ["SchedulerService"]),
        .executable(name: "ProvisionerService", targets: ["ProvisionerService"]),
        .executable(name: "ExecutorService", targets: ["ExecutorService"]),
        .executable(name: "batchctl", targets: ["batchctl"]),
        .executable(name: "batch-sandbox", targets: ["batch-sandbox"]),
    ],
    dependencies: [
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // No default traits: their -D flags come out in a random order and force Hummingbird to rebuild.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Pure domain: specs, validation, DAG, state machines, request signing. No I/O.
        .target(
            name: "BatchCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // rabbitmq-c (Debian: librabbitmq-dev), wrapped by Messaging only.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // What services say to each other: message contracts, their envelope, the broker's topology and URL. No
        // broker client: the database's outbox and anything that only names messages depend on this alone.
        .target(
            name: "MessageContracts",
            dependencies: ["BatchCore"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Messaging",
            dependencies: [
                "CRabbitMQ",
                "BatchCore",
                "MessageContracts",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Persistence",
            dependencies: [
                "BatchCore",
                "MessageContracts",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Remote storage for executors: file:// and S3-compatible object stores (AWS Signature V4).
        .target(
            name: "Storage",
            dependencies: [
                "BatchCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // What every service executable shares, the executor included: configuration from the environment, logging,
        // /healthz and /metrics, consumers, child processes. No database.
        .target(
            name: "BatchRuntime",
            dependencies: [
                "Messaging",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // What the control plane's services share on top: their bootstrap (broker and database), the outbox relay,
        // state gauges.
        .target(
            name: "ServiceRuntime",
            dependencies: [
                "BatchRuntime", "Messaging", "Persistence",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "APIGateway",
            dependencies: [
                "BatchCore", "Messaging", "Persistence", "BatchRuntime", "ServiceRuntime",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "SchedulerService",
            dependencies: [
                "BatchCore", "Messaging", "Persistence", "BatchRuntime", "ServiceRuntime",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ProvisionerService",
            dependencies: [
                "BatchCore", "Messaging", "Persistence", "BatchRuntime", "ServiceRuntime",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ExecutorService",
            dependencies: [
                "BatchCore", "Messaging", "BatchRuntime", "Storage",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // A slot's sandbox, in C: the executor starts one per slot (Sources/ExecutorService/SlotSandbox.swift).
        .executableTarget(name: "batch-sandbox", cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]),
        // The gateway's API from Swift: signed calls over HTTP or HTTPS (batchctl, the end-to-end tests, api-bench).
        .target(
            name: "BatchClient",
            dependencies: [
                "BatchCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "batchctl",
            dependencies: [
                "BatchCore", "BatchClient", "Yams",
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: swiftSettings
        ),
        // Throughput of the messaging layer against the real broker (scripts/bench).
        .executableTarget(
            name: "batch-bench",
            dependencies: ["Messaging", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // Validates, orders and runs a 10,000-task DAG (Benchmarks/, results in docs/benchmarks.md).
        .executableTarget(
            name: "dag-bench",
            dependencies: ["BatchCore"],
            path: "Benchmarks/DagBenchmark",
            swiftSettings: swiftSettings
        ),
        // Heartbeats of 2,000 simulated nodes for the provisioner (scripts/bench, results in docs/benchmarks.md).
        .executableTarget(
            name: "node-bench",
            dependencies: ["BatchCore", "Messaging", .product(name: "Logging", package: "swift-log")],
            path: "Benchmarks/NodeBenchmark",
            swiftSettings: swiftSettings
        ),
        // SubmitJob and DescribeJob load on a running gateway (scripts/bench, results in docs/benchmarks.md).
        .executableTarget(
            name: "api-bench",
            dependencies: [
                "BatchCore", "BatchClient",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Benchmarks/ApiBenchmark",
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "BatchCoreTests", dependencies: ["BatchCore"], swiftSettings: swiftSettings),
        .testTarget(name: "BatchRuntimeTests", dependencies: ["BatchRuntime"], swiftSettings: swiftSettings),
        .testTarget(
            name: "MessagingTests",
            dependencies: ["Messaging", "TestSupport", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "PersistenceTests", dependencies: ["Persistence", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "BatchCore", "BatchClient", "Persistence", "Storage", "TestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            exclude: ["Python"],
            swiftSettings: swiftSettings
        ),
        // Helpers the integration tests share: server URLs, fresh databases, unique queue names.
        .target(
            name: "TestSupport",
            dependencies: [
                "Messaging", "Persistence",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
    ]
)
