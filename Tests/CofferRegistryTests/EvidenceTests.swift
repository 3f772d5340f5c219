import CofferCrypto
import CofferTraining
import Foundation
import Testing

@testable import CofferRegistry

/// A version's evidence in the registry (docs/FORMAT.md, "Evidence", "In the registry"): signed in the statement,
/// filterable, shown, judged by policies, and refused when its columns were changed behind the registry's back.
struct EvidenceTests {
    /// The evidence object `coffer train --evidence` writes, with the audit's bound and the attack's AUC given.
    private func evidence(audit: Double?, auc: Double?, version: Int = 1) throws -> JSONValue {
        let audit = audit.map {
            #""audit": {"method": "steinke-nasr-jagielski-2023", "canaries": 1000, "confidence": 0.95, "epsilon_lower_bound": \#($0)}"#
        }
        let membership = auc.map { #""membership": {"max_auc": \#($0), "max_tpr_at_1pct_fpr": 0.0178, "tasks": {}}"# }
        let utility =
            #""utility": {"baseline": "non-private", "tasks": {"health": {"metric": "accuracy", "private": 0.57, "non_private": 0.58, "cost": 0.01}}}"#
        let text = "{" + ([#""version": \#(version)"#, audit, membership, utility].compactMap { $0 }.joined(separator: ", ")) + "}"
        return try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    private func request(_ f: RegistryFixture, _ name: String, evidence: JSONValue?) throws -> PushRequest {
        var request = PushRequest(model: "m", paths: [try f.makeModel(name, ["w.bin": bytes(2000)])])
        request.privacy.mechanism = "dp-sgd"
        request.privacy.epsilon = 2.6
        request.privacy.delta = 1e-5
        request.privacy.evidence = try evidence.map { try Evidence($0, source: "test") }
        return request
    }

    @Test(arguments: MetadataBackend.available) func evidenceIsSignedFilteredShownAndRequiredByPolicies(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let f = try await RegistryFixture(backend)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let sound = try evidence(audit: 0.1749, auc: 0.4979)
        _ = try await f.registry.push(try request(f, "a", evidence: sound), publisher: alice)
        _ = try await f.registry.push(try request(f, "b", evidence: try evidence(audit: 3.5, auc: 0.71)), publisher: alice)
        _ = try await f.registry.push(try request(f, "c", evidence: nil), publisher: alice)

        // Signed as given, and read back through the stores' columns: verify finds statement and rows agreeing.
        let shown = try await f.registry.show(try ModelReference(parsing: "m:1")).json
        #expect(shown["evidence"] == sound)
        #expect(try await f.registry.show(try ModelReference(parsing: "m:3")).json["evidence"] == nil)
        for version in 1...3 { _ = try await f.registry.verify(try ModelReference(parsing: "m:\(version)")) }

        #expect(try await f.registry.list(model: "m", where: "audit_epsilon<=1").map(\.version) == ["1"])
        #expect(try await f.registry.list(model: "m", where: "membership_auc<0.6 and epsilon<=3").map(\.version) == ["1"])
        #expect(
            try await f.registry.list(model: "m", where: "audit_epsilon>0").map(\.version) == ["2", "1"],
            "a version without evidence matches no bound"
        )

        // A prod alias needs an audit below the proven epsilon and a weak membership attack.
        try await f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(requireAudit: true, maxMembershipAUC: 0.6), by: admin)
        try await f.registry.setAlias("prod", model: "m", version: "1", by: admin)
        await expectRefusal("the audit found 3.5 above 2.6") { try await f.registry.setAlias("prod", model: "m", version: "2", by: admin) }
        await expectRefusal("requires a privacy audit in the version's evidence; it has none") {
            try await f.registry.setAlias("prod", model: "m", version: "3", by: admin)
        }
        try await f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(maxMembershipAUC: 0.6), by: admin)
        await expectRefusal("requires membership AUC <= 0.6; the version has 0.71") {
            try await f.registry.setAlias("prod", model: "m", version: "2", by: admin)
        }
        await expectRefusal("max_membership_auc must be in [0, 1]") {
            _ = try await f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(maxMembershipAUC: 1.5), by: admin)
        }

        // A filter column changed behind the registry's back no longer agrees with the signed statement.
        try await f.tamper("UPDATE versions SET audit_epsilon = 0.01 WHERE version = '2'")
        await expectRefusal("the privacy columns disagree with the signed statement") {
            _ = try await f.registry.verify(try ModelReference(parsing: "m:2"))
        }
        #expect(try await f.registry.fsck().problems.contains { $0.contains("m:2") })
    }

    @Test func malformedEvidenceIsRefusedNamingTheField() throws {
        func message(_ text: String) -> String {
            do {
                _ = try Evidence(try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), source: "privacy.json")
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(message(#"{"version": 2}"#).contains("evidence version 2 is not one this Coffer reads (1)"))
        #expect(message(#"{"audit": {}}"#).contains("evidence version (missing)"))
        #expect(message(#"{"version": 1, "membership": {"max_auc": 1.5}}"#).contains("evidence.membership.max_auc must be a number in [0, 1]"))
        #expect(
            message(#"{"version": 1, "audit": {"epsilon_lower_bound": -1}}"#).contains("evidence.audit.epsilon_lower_bound must be a number >= 0")
        )
        #expect(message(#"{"version": 1, "audit": "high"}"#).contains("evidence.audit must be an object or null"))
        #expect(message(#"[1]"#).contains("evidence must be a JSON object"))
        let big = #"{"version": 1, "utility": {"notes": ""# + String(repeating: "x", count: 300_000) + #""}}"#
        #expect(message(big).contains("larger than 256 KiB"))
        #expect(message(#"{"version": 1, "audit": null, "membership": {"max_auc": null}}"#) == "accepted")
    }
}
