import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// Budgets, policies and imported histories on a real registry directory; key rotation, recipients and erasure are in
/// KeyRotationTests.swift.
struct GovernanceTests {
    static let passphraseText = "registry passphrase"

    /// A registry owned by alice (admin, and trusted signer) with a one-file model directory.
    func owned(_ alice: UnlockedIdentity, on backend: MetadataBackend = .sqlite) async throws -> (RegistryFixture, Signer, String) {
        let f = try await RegistryFixture(backend)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let dir = try f.makeModel("model", ["weights.bin": bytes(20_000)])
        return (f, admin, dir)
    }

    func request(_ dir: String, dataset: String?, segments: [PrivacySegment], model: String = "m") -> PushRequest {
        var request = PushRequest(model: model, paths: [dir])
        request.datasetID = dataset
        request.privacy.mechanism = "dp-sgd"
        request.privacy.delta = 1e-5
        request.privacy.segments = segments
        request.privacy.epsilon = Registry.composedEpsilon(segments, delta: 1e-5)
        request.privacy.standardisation = "public"
        request.privacy.batchSampling = "secret"
        return request
    }

    @Test(arguments: MetadataBackend.available) func budgetsComposeHistoriesAndRefuseWithoutChangingAnything(on backend: MetadataBackend) async throws
    {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, by: admin)
        for bad in ["", "my data", "-x", "a\nb", String(repeating: "d", count: 201)] {
            await #expect(throws: CofferRegistryError.invalidDataset(bad)) {
                try await f.registry.setBudget(dataset: bad, epsilon: 1, delta: 1e-5, by: admin)
            }
        }
        try await f.registry.setBudget(dataset: "hf:org/name@rev+1", epsilon: 1, delta: 1e-5, by: admin)
        // Found by schemathesis: an empty ledger counted at a tiny delta reported a spend (the RDP conversion's floor).
        try await f.registry.setBudget(dataset: "unused", epsilon: 1, delta: 1e-300, by: admin)
        await #expect(try f.registry.budget(dataset: "unused").spent == 0)
        let first = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]
        await #expect(throws: CofferRegistryError.invalidDataset("my data")) {
            _ = try await f.registry.push(request(dir, dataset: "my data", segments: first), publisher: alice)
        }
        let second = [
            PrivacySegment(sampleRate: 0.02, noiseMultiplier: 0.9, steps: 300), PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.2, steps: 100),
        ]
        _ = try await f.registry.push(request(dir, dataset: "census", segments: first), publisher: alice)
        _ = try await f.registry.push(request(dir, dataset: "census", segments: second), publisher: alice)
        let status = try await f.registry.budget(dataset: "census")
        // Composition, not a sum of epsilons: RDP summed order by order, exactly as one accountant fed every segment.
        var reference = RDPAccountant()
        for segment in first + second { reference.compose(segment) }
        #expect(abs(status.spent - reference.epsilon(delta: 1e-5).epsilon) < 1e-9)
        let alone = status.versions.map(\.epsilon)
        #expect(status.spent < alone.reduce(0, +), "composition is tighter than adding epsilons")

        let before = try await f.registry.list(model: nil, where: nil, limit: 100).count
        let blobsBefore = f.blobDigests().count
        let heavy = [PrivacySegment(sampleRate: 0.05, noiseMultiplier: 0.7, steps: 2000)]
        let refused = await refusal { _ = try await f.registry.push(request(dir, dataset: "census", segments: heavy), publisher: alice) }
        #expect(
            refused.contains("privacy budget exceeded: dataset census") && refused.contains("spent") && refused.contains("remaining"),
            "\(refused)"
        )
        await #expect(try f.registry.list(model: nil, where: nil, limit: 100).count == before)
        #expect(f.blobDigests().count == blobsBefore)
        await #expect(try f.registry.fsck().problems.isEmpty)

        // No history, no charge: even an override does not skip the accounting.
        var bare = request(dir, dataset: "census", segments: [])
        bare.overrideBudget = true
        await expectRefusal("needs the version's accountant history") { _ = try await f.registry.push(bare, publisher: alice) }
        // Nor does a DP-SGD history whose standardisation statistics were released exactly (helper-67).
        var exactStatistics = request(dir, dataset: "census", segments: first)
        exactStatistics.privacy.standardisation = "nonprivate"
        exactStatistics.overrideBudget = true
        await expectRefusal("standardisation statistics were released without differential privacy") {
            _ = try await f.registry.push(exactStatistics, publisher: alice)
        }
        // A claim that does not say how its statistics and batches were made could hide either: a new charge says both.
        for omitted in [\PrivacyMetadata.standardisation, \PrivacyMetadata.batchSampling] {
            var silent = request(dir, dataset: "census", segments: first)
            silent.privacy[keyPath: omitted] = nil
            silent.overrideBudget = true
            await expectRefusal("must say how its standardisation statistics and batches were made") {
                _ = try await f.registry.push(silent, publisher: alice)
            }
        }
        // Nor one whose batches came from a known seed (Coffer before 2026-12-06): its epsilon is not a guarantee.
        var seeded = request(dir, dataset: "census", segments: first)
        seeded.privacy.batchSampling = "seeded"
        seeded.overrideBudget = true
        await expectRefusal("batches were drawn from a known seed") { _ = try await f.registry.push(seeded, publisher: alice) }
        // A DP release of the statistics claimed without its segment first in the history is refused at push.
        var unaccounted = request(dir, dataset: "census", segments: first)
        unaccounted.privacy.standardisation = "dp"
        await expectRefusal("standardisation dp needs its release") { _ = try await f.registry.push(unaccounted, publisher: alice) }
        // An admin may exceed the budget; the charge records who did.
        var over = request(dir, dataset: "census", segments: heavy)
        over.overrideBudget = true
        _ = try await f.registry.push(over, publisher: alice)
        let after = try await f.registry.budget(dataset: "census")
        #expect(after.versions.last?.overrideBy == "alice" && after.spent > 5 && after.remaining == 0)
        await #expect(
            try f.registry.auditEntries().contains { $0.action == "push" && $0.outcome == .failed && $0.reason.contains("budget exceeded") }
        )
    }

    /// helper-46: a publisher on one namespace could spend another team's budget by naming its dataset in a push. A
    /// budget that names its models refuses every other model, override or not, and changes nothing on refusal.
    @Test(arguments: MetadataBackend.available) func aBudgetNamingItsModelsRefusesEveryOther(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        for bad in [["team a/"], [], Array(repeating: "m", count: 65), ["../x"]] {
            await #expect(throws: CofferRegistryError.self) {
                try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, models: bad, by: admin)
            }
        }
        try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, models: ["team-a/", "team-a/"], by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == ["team-a/"])
        let segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]
        _ = try await f.registry.push(request(dir, dataset: "census", segments: segments, model: "team-a/m"), publisher: alice)
        let blobs = f.blobDigests().count
        var other = request(dir, dataset: "census", segments: segments, model: "team-b/m")
        other.overrideBudget = true
        let refused = await refusal { _ = try await f.registry.push(other, publisher: alice) }
        #expect(refused == "refused: dataset census's budget is for team-a/ only: team-b/m may not be charged to it", "\(refused)")
        #expect(f.blobDigests().count == blobs)
        await #expect(try f.registry.budget(dataset: "census").versions.map(\.model) == ["team-a/m"])
        // Changing the total keeps the models; * opens the budget to every model again.
        try await f.registry.setBudget(dataset: "census", epsilon: 6, delta: 1e-5, by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == ["team-a/"])
        await expectRefusal("may not be charged") { _ = try await f.registry.push(other, publisher: alice) }
        try await f.registry.setBudget(dataset: "census", epsilon: 6, delta: 1e-5, models: ["*"], by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == nil)
        other.overrideBudget = false
        _ = try await f.registry.push(other, publisher: alice)
        await #expect(try f.registry.budget(dataset: "census").versions.map(\.model) == ["team-a/m", "team-b/m"])
        await #expect(try f.registry.fsck().problems.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func aPublisherWhoIsNotAdminCannotOverride(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let carol = try person("carol")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.publisher], by: admin)
        try await f.registry.trust(carol.publicIdentity, by: admin)
        try await f.registry.setBudget(dataset: "d", epsilon: 0.1, delta: 1e-5, by: admin)
        var over = request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.05, noiseMultiplier: 0.7, steps: 2000)])
        over.overrideBudget = true
        await expectRefusal("carol lacks the admin role") { _ = try await f.registry.push(over, publisher: carol) }
        await expectRefusal("lacks the admin role") { try await f.registry.setBudget(dataset: "d", epsilon: 9, delta: 1e-5, by: Signer(carol)) }
    }

    @Test(arguments: MetadataBackend.available) func eachPolicyRuleRefusesByName(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.setBudget(dataset: "d", epsilon: 50, delta: 1e-5, by: admin)
        var pushed = request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)])
        pushed.privacy.pruningRatio = 0.3
        _ = try await f.registry.push(pushed, publisher: alice)  // version 1: budgeted, pruned 30%
        _ = try await f.registry.push(
            request(dir, dataset: nil, segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]),
            publisher: alice
        )
        let epsilon = try await f.registry.show(try ModelReference(parsing: "m:1")).privacy.epsilon!
        let cases: [(PolicyRules, String, String)] = [
            (PolicyRules(maxEpsilon: epsilon / 2), "1", "requires epsilon <= \(epsilon / 2); the version has \(epsilon)"),
            (PolicyRules(maxDelta: 1e-6), "1", "requires delta <= 1e-06; the version has 1e-05"),
            (PolicyRules(signer: "bob"), "1", "requires a signature by bob; the version is signed by alice (\(alice.publicIdentity.keyID))"),
            (PolicyRules(minPruningRatio: 0.5), "1", "requires pruning ratio >= 0.5; the version has 0.3"),
            (PolicyRules(requireBudget: true), "2", "requires a version charged to a dataset with a privacy budget"),
        ]
        for (rules, version, expected) in cases {
            try await f.registry.setPolicy(model: "m", alias: "prod", rules: rules, by: admin)
            let refused = await refusal { try await f.registry.setAlias("prod", model: "m", version: version, by: admin) }
            #expect(refused == "policy refused: alias prod of m \(expected)", "\(refused)")
        }
        try await f.registry.setPolicy(
            model: "m",
            alias: "prod",
            rules: PolicyRules(maxEpsilon: epsilon, signer: "alice", requireBudget: true),
            by: admin
        )
        try await f.registry.setAlias("prod", model: "m", version: "1", by: admin)
        // Model-wide rules hold for every alias, on push --alias too, before anything is sealed.
        try await f.registry.setPolicy(model: "m", alias: nil, rules: PolicyRules(maxDelta: 1e-7), by: admin)
        var aliased = request(dir, dataset: nil, segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 1)])
        aliased.alias = "staging"
        await expectRefusal("alias staging of m requires delta <= 1e-07") { _ = try await f.registry.push(aliased, publisher: alice) }
        await #expect(try f.registry.list(model: "m", where: nil, limit: 10).count == 2)
    }

    @Test func importedHistoriesAreRecomputedAndUnderstatedClaimsRefused() async throws {
        func history(_ json: String) throws -> PrivacyHistory {
            try PrivacyHistory(json: try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)), source: "h.json")
        }
        let reference = PrivacySegment(sampleRate: 256.0 / 60_000, noiseMultiplier: 1.1, steps: 14_062)
        let shapes = [
            #"[{"sample_rate": 0.004266666666666667, "noise_multiplier": 1.1, "steps": 14062}]"#,
            #"[[1.1, 0.004266666666666667, 14062]]"#,
            #"{"history": [[1.1, 0.004266666666666667, 14062]], "epsilon": 2.6, "delta": 1e-5}"#,
        ]
        for shape in shapes {
            var base = PrivacyMetadata()
            base.delta = 1e-5
            let privacy = try history(shape).applied(to: base)
            #expect(privacy.segments == [reference])
            #expect(abs(privacy.epsilon! - 2.3819) < 1e-3 && privacy.accountant == "pld", "the tighter PLD bound")
        }
        #expect(try history(shapes[2]).applied(to: PrivacyMetadata()).claimedEpsilon == 2.6)
        let understated = await refusal {
            _ = try history(#"{"segments": [[1.1, 0.004266666666666667, 14062]], "epsilon": 2.0, "delta": 1e-5}"#).applied(to: PrivacyMetadata())
        }
        #expect(understated.contains("claims epsilon 2.0000, but its segments give 2.38"), "\(understated)")
        await expectRefusal("gives no delta") { _ = try history(#"[[1.1, 1.5, 10]]"#).applied(to: PrivacyMetadata()) }
        var withDelta = PrivacyMetadata()
        withDelta.delta = 1e-5
        await expectRefusal("sample_rate in (0, 1]") { _ = try history(#"[[1.1, 1.5, 10]]"#).applied(to: withDelta) }
        await expectRefusal("has no noise") { _ = try history(#"[[0, 0.01, 10]]"#).applied(to: withDelta) }
        await expectRefusal("entry 1 is neither") { _ = try history(#"[{"sample_rate": 0.01, "steps": -3, "noise_multiplier": 1}]"#) }
        await expectRefusal("the history is empty") { _ = try history(#"[]"#) }
        // The object form may say how the statistics and batches were made; the values are privacy.json's.
        let stated = try history(#"{"history": [[1.1, 0.01, 10]], "delta": 1e-5, "standardisation": "public", "batch_sampling": "secret"}"#)
        let applied = try stated.applied(to: PrivacyMetadata())
        #expect(applied.standardisation == "public" && applied.batchSampling == "secret")
        await expectRefusal("standardisation must be dp, public or nonprivate, got exact") {
            _ = try history(#"{"history": [[1.1, 0.01, 10]], "delta": 1e-5, "standardisation": "exact"}"#).applied(to: PrivacyMetadata())
        }
        await expectRefusal("h.json: batch_sampling must be a string") { _ = try history(#"{"history": [[1.1, 0.01, 10]], "batch_sampling": 1}"#) }
        #expect(try history(#"{"history": [[1.1, 0.01, 10]], "batch_sampling": null}"#).batchSampling == nil, "null is absent")
        // It adds what the claim left out; it does not overrule what the claim says.
        var exact = PrivacyMetadata()
        exact.standardisation = "nonprivate"
        await expectRefusal("the history says standardisation public, the version's privacy metadata nonprivate") {
            _ = try stated.applied(to: exact)
        }
    }
}
