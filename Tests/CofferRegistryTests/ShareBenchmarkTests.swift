import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// The closing figures of issue 20, on demand (tools/bench/share): `share` and `unshare` of a principal on a model
/// with 1,000 versions, and a push's latency with 0 and with 50 principals holding decrypt on the model. Figures to
/// read, not checks.
@Suite(
    "Share benchmark",
    .serialized,
    .enabled(if: ProcessInfo.processInfo.environment["COFFER_SHARE_BENCH"] != nil, "set COFFER_SHARE_BENCH=1 to run")
)
struct ShareBenchmarkTests {
    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
    static func ms(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }
    static func format(_ value: Double) -> String { String(format: "%.1f", value) }

    @Test(arguments: MetadataBackend.available) func shareUnshareOnAThousandVersionsAndPushWithFiftyHolders(on backend: MetadataBackend) async throws
    {
        let environment = ProcessInfo.processInfo.environment
        let versions = Int(environment["COFFER_SHARE_BENCH_VERSIONS"] ?? "") ?? 1000
        let rounds = Int(environment["COFFER_SHARE_BENCH_ROUNDS"] ?? "") ?? 5
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        let admin = Signer(alice)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: admin)
        let registryKey = try f.registryKey
        let dir = try f.makeModel("model", ["w.bin": bytes(4096)])
        let filled = ContinuousClock.now
        for _ in 0..<versions { _ = try await f.registry.push(PushRequest(model: "big", paths: [dir]), publisher: alice) }
        print("Share benchmark (\(backend)): \(versions) versions pushed in \(Self.format(Self.ms(ContinuousClock.now - filled) / 1000)) s")

        var share: [Double] = []
        var unshare: [Double] = []
        for _ in 0..<rounds {
            var began = ContinuousClock.now
            let shared = try await f.registry.share("big", with: "bob", mode: .pull, registryIdentity: registryKey, by: admin)
            share.append(Self.ms(ContinuousClock.now - began))
            #expect(shared.wrapped.count == versions)
            began = ContinuousClock.now
            let ended = try await f.registry.unshare("bob", model: "big", by: admin)
            unshare.append(Self.ms(ContinuousClock.now - began))
            #expect(ended.removedKeys.count == versions)
        }
        print(
            "Share benchmark (\(backend)): share --pull on \(versions) versions median \(Self.format(Self.median(share))) ms, "
                + "unshare median \(Self.format(Self.median(unshare))) ms (\(rounds) rounds)"
        )

        // Push latency on a fresh model, with no decrypt holder and then with 50, alternating.
        for n in 0..<50 {
            let holder = try person("h\(n)")
            try await f.registry.addPrincipal(name: "h\(n)", identity: holder.publicIdentity, roles: [], by: admin)
        }
        var without: [Double] = []
        var with50: [Double] = []
        for round in 0..<(rounds * 2) {
            let model = round.isMultiple(of: 2) ? "alone" : "shared"
            if round == 1 {
                for n in 0..<50 { try await f.registry.grant(Grant(principal: "h\(n)", role: .decrypt, scope: "shared"), by: admin) }
            }
            let began = ContinuousClock.now
            _ = try await f.registry.push(PushRequest(model: model, paths: [dir]), publisher: alice)
            (round.isMultiple(of: 2)
                ? { without.append(Self.ms(ContinuousClock.now - began)) } : { with50.append(Self.ms(ContinuousClock.now - began)) })()
        }
        print(
            "Share benchmark (\(backend)): push 4 KiB median \(Self.format(Self.median(without))) ms with no decrypt holder, "
                + "\(Self.format(Self.median(with50))) ms with 50 (\(rounds) rounds each)"
        )
    }
}
