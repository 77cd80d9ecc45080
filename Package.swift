// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "nfqlb",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "nfqlb", targets: ["nfqlb"]),
        .library(name: "QueueBalancer", targets: ["QueueBalancer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // libnetfilter_queue, libmnl and libnfnetlink, found through pkg-config.
        .systemLibrary(
            name: "CNFQueue",
            pkgConfig: "libnetfilter_queue",
            providers: [.apt(["libnetfilter-queue-dev", "libmnl-dev", "libnfnetlink-dev"])]
        ),
        // OpenSSL's libssl and libcrypto: TLS for `https` health checks, SHA-256 for `body-sha256`.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(
            name: "QueueBalancer",
            dependencies: [
                "CNFQueue",
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "nfqlb",
            dependencies: [
                "QueueBalancer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                // The /metrics listener (metrics-listen).
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // Drives the packet handler over synthetic traffic: cost and allocations per packet.
        .executableTarget(
            name: "nfqlb-bench",
            dependencies: ["QueueBalancer"]
        ),
        // Fuzz targets (packets, kernel messages, the config file): libFuzzer's entry point when built with
        // -sanitize=fuzzer -DFUZZING, else a replayer of saved inputs (scripts/fuzz.sh).
        .executableTarget(
            name: "nfqlb-fuzz",
            dependencies: ["QueueBalancer", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "QueueBalancerTests",
            dependencies: ["QueueBalancer", "CNFQueue"]
        ),
    ]
)
