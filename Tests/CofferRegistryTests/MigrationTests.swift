import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// A registry made before signed records (its tables full, its ledger empty) is refused until `coffer migrate` gives
/// it a ledger restating its tables; afterwards every check passes and nothing it held is lost.
struct MigrationTests {
    @Test func aRegistryWithoutALedgerIsAdoptedWithEverythingItHeld() throws {
        let f = try RegistryFixture()
        let alice = try person("alice")
        let bob = try person("bob")
        try f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: try f.registrySigner)
        let admin = Signer(alice)
        try f.registry.trust(alice.publicIdentity, by: admin)
        try f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        try f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m", alias: "prod"), by: admin)
        _ = try f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("a", ["w.bin": bytes(3000)])]), publisher: alice)
        try f.registry.setBudget(dataset: "d", epsilon: 5, delta: 1e-5, by: admin)
        var charged = PushRequest(model: "m", paths: [try f.makeModel("b", ["w.bin": bytes(3000, seed: 2)])])
        charged.datasetID = "d"
        charged.privacy.mechanism = "dp-sgd"
        charged.privacy.delta = 1e-5
        charged.privacy.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.2, steps: 300)]
        charged.recipients = [bob.publicIdentity]
        charged.alias = "prod"
        _ = try f.registry.push(charged, publisher: alice)
        _ = try f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("c", ["w.bin": bytes(3000, seed: 3)])]), publisher: alice)
        try f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(requireBudget: true), by: admin)
        try f.registry.erase(model: "m", version: "3", by: admin)
        _ = try f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: admin)
        _ = try f.registry.signAuditHead(with: try f.registryKey)
        let budget = try f.registry.budget(dataset: "d")

        // What an earlier Coffer left: the same tables, no ledger, no memory of one.
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try db.write { db in
            try db.execute(sql: "DROP TRIGGER ledger_is_never_deleted; DELETE FROM ledger; DELETE FROM registry_meta WHERE key = 'state_head'")
        }
        let memory = ClientMemory(directory: f.path("other-client"))
        let old = try Registry(at: f.home, memory: memory)
        #expect(throws: CofferRegistryError.self) { _ = try old.ledgerState() }

        #expect(try old.adoptLedger(registryKey: try f.registryKey) > 10)
        let fsck = try old.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        #expect(try old.budget(dataset: "d") == budget)
        #expect(try old.pull(try ModelReference(parsing: "m@prod"), identity: bob.identity, into: f.path("out")).version == "2")
        #expect(throws: CofferRegistryError.self) {
            _ = try old.pull(try ModelReference(parsing: "m:3"), identity: alice.identity, into: f.path("x"))
        }
        #expect(try old.verifyAudit().entries > 0)
        // From then on it is an owned registry like any other: alice's own key governs it, not the registry's alone.
        #expect(throws: CofferRegistryError.self) { try old.trust(bob.publicIdentity, by: try f.registrySigner) }
        try old.grant(Grant(principal: "bob", role: .publisher, scope: "m"), by: admin)
        #expect(throws: CofferRegistryError.refused("this registry already has a ledger: there is nothing to migrate")) {
            _ = try old.adoptLedger(registryKey: try f.registryKey)
        }
    }
}
