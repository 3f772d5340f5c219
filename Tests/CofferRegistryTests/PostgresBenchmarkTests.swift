import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// Per-operation latency of a registry on PostgreSQL beside one on SQLite, in the same run (alternating, medians),
/// on demand: these are figures to read, not checks.
@Suite(
    "PostgreSQL benchmark",
    .serialized,
    .enabled(if: ProcessInfo.processInfo.environment["COFFER_PG_BENCH"] != nil, "set COFFER_PG_BENCH=1 to run")
)
struct PostgresBenchmarkTests {
    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    @Test func pushPullAndSessionUseLatencySQLiteAgainstPostgreSQL() async throws {
        let rounds = Int(ProcessInfo.processInfo.environment["COFFER_PG_BENCH_ROUNDS"] ?? "") ?? 15
        let alice = try person("alice")
        let bob = try person("bob")
        var fixtures: [MetadataBackend: RegistryFixture] = [:]
        for backend in MetadataBackend.allCases {
            let f = try await RegistryFixture(backend)
            try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
            try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.inference], by: Signer(alice))
            try await f.registry.trust(alice.publicIdentity, by: Signer(alice))
            fixtures[backend] = f
        }
        var push: [MetadataBackend: [Double]] = [:]
        var pull: [MetadataBackend: [Double]] = [:]
        var use: [MetadataBackend: [Double]] = [:]
        for round in 0..<rounds {
            // Alternating which goes first, so a slow moment of the machine is shared.
            let order = round.isMultiple(of: 2) ? MetadataBackend.allCases : MetadataBackend.allCases.reversed()
            for backend in order {
                let f = try #require(fixtures[backend])
                let dir = try f.makeModel("model\(round)", ["w.bin": bytes(64 * 1024, seed: UInt8(round))])
                var request = PushRequest(model: "m", paths: [dir])
                request.recipients = [bob.publicIdentity]
                var began = ContinuousClock.now
                let pushed = try await f.registry.push(request, publisher: alice)
                push[backend, default: []].append(Self.seconds(ContinuousClock.now - began))
                began = ContinuousClock.now
                _ = try await f.registry.pull(try ModelReference(parsing: "m:\(pushed.version)"), identity: alice, into: f.path("out\(round)"))
                pull[backend, default: []].append(Self.seconds(ContinuousClock.now - began))
                let session = try await f.registry.openSession(try ModelReference(parsing: "m:\(pushed.version)"), identity: bob, ttl: 600)
                began = ContinuousClock.now
                try await f.registry.useSession(id: session.info.id, principal: "bob")
                use[backend, default: []].append(Self.seconds(ContinuousClock.now - began))
            }
        }
        for (name, figures) in [("push 64 KiB", push), ("pull 64 KiB", pull), ("session use", use)] {
            let sqlite = Self.median(figures[.sqlite] ?? [0])
            let postgres = Self.median(figures[.postgres] ?? [0])
            print(
                "PostgreSQL benchmark, \(name), median of \(rounds): SQLite \(String(format: "%.1f", sqlite * 1000)) ms, "
                    + "PostgreSQL \(String(format: "%.1f", postgres * 1000)) ms, ratio \(String(format: "%.2f", postgres / sqlite))"
            )
        }
    }

    /// What one destroyed key copy costs on PostgreSQL: a rotation re-seals every sealed value (here 5,000 wrapped
    /// keys) in one transaction.
    @Test func rotationTimeOverFiveThousandWrappedKeys() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            _ = try await fixture.insertWrappedKeys(5000, keys: keys, database: database)
            var times: [Double] = []
            for _ in 0..<5 {
                let began = ContinuousClock.now
                try await keys.rotate(database)
                times.append(Self.seconds(ContinuousClock.now - began))
            }
            print("PostgreSQL benchmark, rotation over 5,000 wrapped keys, median of 5: \(String(format: "%.0f", Self.median(times) * 1000)) ms")
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
