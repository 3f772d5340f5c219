// swift-tools-version: 6.2
import PackageDescription

// Hummingbird's upcoming features, applied to every target (shared/STYLE.md).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// The executables' release link. What a release binary (static Swift runtime) costs before main, measured with perf:
// the loader applied 156,000 relative relocations from a 3.7 MB table, and the runtime's startup `dladdr` scanned
// 57,000 exported symbols. lld packs the relocations (DT_RELR, glibc 2.36 or later) and nothing needs an executable's
// own symbols exported (nothing loads a plugin into it; a backtrace reads the file). `coffer --version` 14.7 -> 12.6
// ms, a 1 MiB push 80 -> 75 ms, pull unchanged (medians of 21 alternated runs).
let releaseLinkerFlags = ["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"]

// The launcher's release link: a static PIE (its code at a random address, as any PIE's) when built without SwiftPM's
// $ORIGIN run path, which glibc's start of a static PIE refuses (an assertion, then a crash); tools/lib/common.sh builds
// so, with the static Swift libraries the link needs, and sets COFFER_LAUNCHER_PIE. Otherwise (a plain
// `swift build -c release`) a static executable at a fixed address.
let launcherLink = Context.environment["COFFER_LAUNCHER_PIE"] == "1" ? ["-Xclang-linker", "-static-pie"] : ["-static-executable"]

let package = Package(
    name: "Coffer",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "coffer", targets: ["coffer"]),
        .executable(name: "coffer-fuzz", targets: ["CofferFuzz"]),
        .executable(name: "coffer-run", targets: ["CofferRun"]),
        .library(name: "CofferCrypto", targets: ["CofferCrypto"]),
        .library(name: "CofferRegistry", targets: ["CofferRegistry"]),
        .library(name: "CofferTraining", targets: ["CofferTraining"]),
        .library(name: "CofferServer", targets: ["CofferServer"]),
        .library(name: "CofferClient", targets: ["CofferClient"]),
        .library(name: "CofferFederated", targets: ["CofferFederated"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .systemLibrary(name: "CLinux"),
        .target(name: "CFiles", path: "Sources/CFiles"),
        .target(name: "CRunner", path: "Sources/CRunner"),
        // The command runner's protocol and process (docs/FORMAT.md), without Foundation.
        .target(name: "CofferRunner", dependencies: ["CRunner"], path: "Sources/Runner", swiftSettings: swiftSettings),
        // The launcher, in C: it starts before every command it runs (Sources/Run/main.c). Released static, without
        // Swift's startup object: it starts as /bin/true does (0.34 ms of CPU, 13 page faults).
        .executableTarget(
            name: "CofferRun",
            dependencies: ["CRunner"],
            path: "Sources/Run",
            linkerSettings: [.unsafeFlags(releaseLinkerFlags + launcherLink + ["-nostartfiles"], .when(configuration: .release))]
        ),
        .systemLibrary(name: "CSQLiteShim", providers: [.apt(["libsqlite3-dev"])]),
        .target(
            name: "CofferCrypto",
            dependencies: [
                "CSodium",
                "CLibcrypto",
                "CLinux",
                "CFiles",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Crypto",
            swiftSettings: swiftSettings
        ),
        // OpenBLAS is loaded with dlopen (libopenblas0), not linked; its cblas.h comes from libopenblas-dev.
        .target(name: "CBLAS", path: "Sources/CBLAS"),
        // OpenSSL's libcrypto is loaded with dlopen (libssl3), not linked.
        .target(name: "CLibcrypto", dependencies: ["CSodium"], path: "Sources/CLibcrypto"),
        .target(
            name: "CofferTraining",
            dependencies: ["CSodium", "CBLAS", "CLibcrypto"],
            path: "Sources/Training",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CofferRegistry",
            dependencies: [
                "CofferCrypto",
                "CofferTraining",
                "CSQLiteShim",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/Registry",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CofferServer",
            dependencies: [
                "CLinux",
                "CofferCrypto",
                "CofferRegistry",
                "CofferTraining",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Mustache", package: "swift-mustache"),
            ],
            path: "Sources/Server",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CofferClient",
            dependencies: [
                "CofferCrypto",
                "CofferRegistry",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Sources/Client",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CofferFederated",
            dependencies: [
                "CSodium",
                "CBLAS",
                "CLibcrypto",
                "CofferCrypto",
                "CofferTraining",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Federated",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "CofferFuzz",
            dependencies: ["CofferCrypto", "CofferRegistry", "CofferTraining", "CofferFederated", "CofferRunner"],
            path: "Sources/Fuzz",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "coffer",
            dependencies: [
                "CofferCrypto",
                "CofferRegistry",
                "CofferTraining",
                "CofferServer",
                "CofferClient",
                "CofferFederated",
                "CofferRunner",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Sources/coffer",
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(releaseLinkerFlags, .when(configuration: .release))]
        ),
        // What the test suites share: the backends a test run puts its registries on, and running a program to its end.
        .target(
            name: "CofferTestSupport",
            dependencies: ["CofferCrypto", "CofferTraining", "CTestState"],
            path: "Tests/Support",
            swiftSettings: swiftSettings
        ),
        // A client state folder of the test process's own, made as it starts (Tests/TestState/test_state.c).
        .target(name: "CTestState", path: "Tests/TestState"),
        .testTarget(
            name: "CofferCryptoTests",
            dependencies: ["CofferCrypto"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferRegistryTests",
            dependencies: [
                "CofferRegistry", "CofferCrypto", "CofferTraining", "CofferTestSupport", "CFiles",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferTrainingTests",
            dependencies: ["CofferTraining", "CofferTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferServerTests",
            dependencies: [
                "CofferServer", "CofferRegistry", "CofferCrypto", "CofferTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                // The web tests change the registry's database behind its back, as an attacker holding the file would.
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferClientTests",
            dependencies: [
                "CofferClient", "CofferServer", "CofferRegistry", "CofferCrypto", "CofferTraining", "CofferTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferFederatedTests",
            dependencies: [
                "CofferFederated", "CofferCrypto", "CofferTraining", "CofferTestSupport", "CLibcrypto", "CSodium",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferCLITests",
            dependencies: ["CofferCrypto", "CofferRunner", "CofferTestSupport", "CLinux", "coffer", "CofferRun"],
            swiftSettings: swiftSettings
        ),
    ]
)
