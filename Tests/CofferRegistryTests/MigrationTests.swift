import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// A registry made before signed records (its tables full, its ledger empty) is refused until `coffer migrate` gives
/// it a ledger restating its tables; afterwards every check passes and nothing it held is lost.
struct MigrationTests {
    @Test func aRegistryWithoutALedgerIsAdoptedWithEverythingItHeld() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: try f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        try await f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m", alias: "prod"), by: admin)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("a", ["w.bin": bytes(3000)])]), publisher: alice)
        try await f.registry.setBudget(dataset: "d", epsilon: 5, delta: 1e-5, by: admin)
        var charged = PushRequest(model: "m", paths: [try f.makeModel("b", ["w.bin": bytes(3000, seed: 2)])])
        charged.datasetID = "d"
        charged.privacy.mechanism = "dp-sgd"
        charged.privacy.delta = 1e-5
        charged.privacy.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.2, steps: 300)]
        charged.privacy.standardisation = "public"
        charged.privacy.batchSampling = "secret"
        charged.recipients = [bob.publicIdentity]
        charged.alias = "prod"
        _ = try await f.registry.push(charged, publisher: alice)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("c", ["w.bin": bytes(3000, seed: 3)])]), publisher: alice)
        try await f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(requireBudget: true), by: admin)
        try await f.registry.erase(model: "m", version: "3", by: admin)
        _ = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: admin)
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let budget = try await f.registry.budget(dataset: "d")

        // What an earlier Coffer left: the same tables, no ledger, no memory of one.
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try await db.write { db in
            try db.execute(sql: "DROP TRIGGER ledger_is_never_deleted; DELETE FROM ledger; DELETE FROM registry_meta WHERE key = 'state_head'")
        }
        let memory = ClientMemory(directory: f.path("other-client"))
        let old = try await Registry(at: f.home, memory: memory)
        await #expect(throws: CofferRegistryError.self) { _ = try await old.ledgerState() }

        #expect(try await old.adoptLedger(registryKey: try f.registryKey) > 10)
        let fsck = try await old.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        let restated = try await old.versionRecord(model: "m", version: "2", state: try await old.ledgerState())
        #expect(restated.standardisation == "public" && restated.batchSampling == "secret", "adoption restates the statement's source")
        #expect(try await old.budget(dataset: "d") == budget)
        #expect(try await old.pull(try ModelReference(parsing: "m@prod"), identity: bob, into: f.path("out")).version == "2")
        await #expect(throws: CofferRegistryError.self) {
            _ = try await old.pull(try ModelReference(parsing: "m:3"), identity: alice, into: f.path("x"))
        }
        #expect(try await old.verifyAudit().entries > 0)
        // From then on it is an owned registry like any other: alice's own key governs it, not the registry's alone.
        await #expect(throws: CofferRegistryError.self) { try await old.trust(bob.publicIdentity, by: try f.registrySigner) }
        try await old.grant(Grant(principal: "bob", role: .publisher, scope: "m"), by: admin)
        await #expect(throws: CofferRegistryError.refused("this registry already has a ledger: there is nothing to migrate")) {
            _ = try await old.adoptLedger(registryKey: try f.registryKey)
        }
    }
}
