import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Synchronization
import Testing

@testable import CofferRegistry

/// One regression test per finding of the outside security review (issue 15), named after it. Each tampers as the
/// finding's attacker would (a writer of the registry directory drops the triggers that stop honest mistakes) and
/// fails on the code before the fix.
struct SecurityFindingsTests {
    /// A registry owned by alice (admin, trusted signer), with m:1 and m:2 pushed and m@prod on version 1.
    /// On SQLite in every pass: the findings' attackers edit the SQLite file (PostgresRegistryTests and the
    /// parameterized suites attack PostgreSQL's rows).
    func owned() async throws -> (RegistryFixture, UnlockedIdentity, Signer) {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: try f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let dir = try f.makeModel("model", ["w.bin": bytes(30_000)])
        var first = PushRequest(model: "m", paths: [dir])
        first.alias = "prod"
        _ = try await f.registry.push(first, publisher: alice)
        try f.makeModel("model", ["w.bin": bytes(30_000, seed: 9)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        return (f, alice, admin)
    }

    /// Runs SQL as a writer of the registry directory: every protective trigger dropped first.
    func attack(_ f: RegistryFixture, _ statements: String, _ arguments: StatementArguments = []) throws {
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try db.write { db in
            let triggers = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for trigger in triggers { try db.execute(sql: "DROP TRIGGER \(trigger)") }
            try db.execute(sql: statements, arguments: arguments)
        }
    }

    /// A record in `record`'s place, with `change` or `at` replaced, signed by `signer`: what whoever holds a key the
    /// chain accepts there could write instead of it (a valid signature, a link the replay held).
    func resigned(_ record: LedgerRecord, at: String? = nil, change: LedgerChange? = nil, signer: borrowing Identity) -> LedgerRecord {
        LedgerRecord.sign(
            registry: record.registry,
            seq: record.seq,
            prev: record.prev,
            at: at ?? record.at,
            by: record.by,
            change: change ?? record.change,
            signer: signer
        )
    }

    // MARK: - 1. A malicious server substitutes another signed version

    @Test func finding01_aServerCannotSubstituteAnotherSignedVersion() async throws {
        let (f, alice, _) = try await owned()
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let client = ClientMemory(directory: f.path("remote-client"))
        let ledger = try await RemoteLedger.sync(
            from: StoredLedger(registry: f.registry),
            location: "https://registry.test",
            key: nil,
            memory: client
        )
        let bob = alice.identity.publicIdentity.keyID
        // What an honest server would send for m:1, m:2.
        let v1 = try await f.registry.package(try ModelReference(parsing: "m:1"), keyID: bob, includeKey: true, for: "alice")
        let v2 = try await f.registry.package(try ModelReference(parsing: "m:2"), keyID: bob, includeKey: true, for: "alice")
        // A server rewriting `ref` answers m:2 for m:1, for m@prod and the other way round: each is refused.
        for (asked, sent) in [("m:1", v2), ("m@prod", v2), ("m:2", v1)] {
            let expected = try RemoteExpectation(try ModelReference(parsing: asked), ledger: ledger)
            let refused = await refusal { _ = try RemotePull.verifiedFiles(sent, expected: expected, trusting: nil) }
            #expect(refused.contains("the server sent m:") || refused.contains("the ledger names"), "\(asked): \(refused)")
        }
        // Relabelling the package does not help: the signed statement names its own model and version.
        var relabelled = v2
        relabelled.version = "1"
        let expected = try RemoteExpectation(try ModelReference(parsing: "m:1"), ledger: ledger)
        await expectRefusal("integrity check failed") { _ = try RemotePull.verifiedFiles(relabelled, expected: expected, trusting: nil) }
        // The honest answers pass, the alias resolved on the client's own replay of the ledger.
        let prod = try RemoteExpectation(try ModelReference(parsing: "m@prod"), ledger: ledger)
        #expect(prod.version == "1" && prod.digest == v1.digest)
        _ = try RemotePull.verifiedFiles(v1, expected: prod, trusting: nil)
    }

    // MARK: - 2. audit verify trusts any key in registry_keys; truncation and rollback pass

    @Test func finding02_auditVerifyAcceptsOnlyTheKeyChainAndRefusesTruncationAndRollback() async throws {
        let (f, _, admin) = try await owned()
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        try await f.registry.grant(Grant(principal: "alice", role: .reader), by: admin)
        // An attacker's key inserted as a retired registry key, signing a head over a rewritten chain.
        let mallory = try Identity.generate(name: "registry")
        let last = try await f.registry.metadata.lastAuditEntry()!
        let forged = mallory.signEd25519(Registry.headMessage(seq: last.seq, hash: Array(last.hash)))
        try attack(
            f,
            """
            INSERT INTO registry_keys (key_id, public_identity, created_at, retired_at) VALUES (?, ?, 'x', 'y');
            INSERT OR REPLACE INTO audit_heads (seq, entry_hash, signed_at, signature, key_id) VALUES (?, ?, 'z', ?, ?)
            """,
            [
                mallory.publicIdentity.keyID, Data(mallory.publicIdentity.jsonBytes), last.seq, Data(last.hash), Data(forged),
                mallory.publicIdentity.keyID,
            ]
        )
        await expectRefusal("is not signed by a key of the registry's chain") { _ = try await f.reopen().verifyAudit() }
        await #expect(try f.reopen().fsck().problems.contains { $0.contains("registry key") && $0.contains("not in the ledger") })

        // Heads deleted and the tail truncated: the ledger's mark of the audit head (and this client's memory) catch it.
        let (g, _, gadmin) = try await owned()
        _ = try await g.registry.signAuditHead(with: try g.registryKey)
        try await g.registry.grant(Grant(principal: "alice", role: .reader), by: gadmin)
        _ = try await g.registry.verifyAudit()
        try attack(g, "DELETE FROM audit_heads; DELETE FROM audit_log WHERE seq > 3")
        let truncated = await refusal { _ = try await g.reopen().verifyAudit() }
        #expect(truncated.contains("is gone (truncated or rolled back)"), "\(truncated)")

        // An older copy of the whole database restored: the client that saw the newer one refuses it.
        let (h, _, hadmin) = try await owned()
        try await (h.registry.metadata as! SQLiteMetadataStore).checkpointAndTruncateLog()
        try FileManager.default.copyItem(atPath: "\(h.home)/registry.sqlite", toPath: h.path("old.sqlite"))
        try await h.registry.grant(Grant(principal: "alice", role: .reader), by: hadmin)
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: "\(h.home)/registry.sqlite\(suffix)") }
        try FileManager.default.copyItem(atPath: h.path("old.sqlite"), toPath: "\(h.home)/registry.sqlite")
        let rolledBack = await refusal { _ = try await h.reopen().verifyAudit() }
        #expect(rolledBack.contains("the registry was rolled back"), "\(rolledBack)")
        await #expect(try h.reopen().fsck().problems.contains { $0.contains("rolled back") })
    }

    // MARK: - 4. The inference role alone releases plaintext

    @Test func finding04_theInferenceRoleAloneReleasesNoPlaintext() async throws {
        let (f, alice, admin) = try await owned()
        let carol = try person("carol")
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.publisher, .inference], by: admin)
        try await f.registry.addRecipient(try ModelReference(parsing: "m:1"), recipient: carol.publicIdentity, identity: alice)
        // Ten minutes: under a loaded CI machine a one-minute session expired before its first use.
        let opened = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: carol, ttl: 600)
        let text = opened.token.text()
        await expectRefusal("carol lacks the reader role on m") { try await InferenceSession.authorizeExport(registry: f.registry, tokenText: text) }
        let session = try await InferenceSession(registry: f.registry, token: opened.token)
        await expectRefusal("carol lacks the reader role") { _ = try await session.export("w.bin", registry: f.registry) { _ in 0 } }
        try await f.registry.grant(Grant(principal: "carol", role: .reader, scope: "m"), by: admin)
        try await f.registry.grant(Grant(principal: "carol", role: .decrypt, scope: "m"), by: admin)
        await #expect(try session.export("w.bin", registry: f.registry) { $0.count } == 30_000)
        await #expect(try f.registry.auditEntries().contains { $0.action == "export" && $0.outcome == .ok && $0.reason.contains("w.bin") })
    }

    // MARK: - 5. Session key copies outlive expiry, exhaustion, grant revocation and recipient removal

    @Test func finding05_sessionKeyCopiesDieWithTheirSessions() async throws {
        let (f, alice, admin) = try await owned()
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.inference], by: admin)
        try await f.registry.addRecipient(try ModelReference(parsing: "m"), recipient: bob.publicIdentity, identity: alice)
        let t0 = Date()
        // Expiry and use limit are bound into the key the copy is wrapped under: editing them opens nothing.
        let short = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: bob, ttl: 60, maxUses: 1, now: t0)
        try attack(f, "UPDATE sessions SET expires_at = '2999-01-01T00:00:00.000Z', max_uses = 100 WHERE id = ?", [short.info.id])
        await expectRefusal("does not open with this token") { _ = try await InferenceSession(registry: try f.reopen(), token: short.token) }
        // The last use destroys the copy.
        let once = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: bob, ttl: 60, maxUses: 1, now: t0)
        _ = try await InferenceSession(registry: f.registry, token: once.token)
        // A grant revoked and given again does not revive the sessions it allowed.
        let granted = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: bob, ttl: 600, now: t0)
        try await f.registry.revoke(Grant(principal: "bob", role: .inference), by: admin)
        try await f.registry.grant(Grant(principal: "bob", role: .inference), by: admin)
        await expectRefusal("holds no key any more") { _ = try await InferenceSession(registry: f.registry, token: granted.token) }
        // Removing a recipient ends the sessions it opened on those versions.
        let removed = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: bob, ttl: 600, now: t0)
        try await f.registry.removeRecipient(
            try ModelReference(parsing: "m"),
            keyID: bob.publicIdentity.keyID,
            by: try await f.registry.principal(for: alice.identity)
        )
        await expectRefusal("was revoked") { _ = try await InferenceSession(registry: f.registry, token: removed.token) }
        let ids = [once.info.id, granted.info.id, removed.info.id]
        let live = try await f.sqlite().read { db in
            try Int.fetchOne(
                db,
                sql: "SELECT count(*) FROM sessions WHERE wrapped_key IS NOT NULL AND id IN (?, ?, ?)",
                arguments: StatementArguments(ids)
            )
        }
        #expect(live == 0)
    }

    // MARK: - 7. Alias policies checked only at alias set; an edited alias row is followed

    @Test func finding07_policiesHoldAtEveryUseAndAliasRowsAreNotTrusted() async throws {
        let (f, alice, admin) = try await owned()
        var strict = PushRequest(model: "m", paths: [try f.makeModel("big", ["w.bin": bytes(100)])])
        strict.privacy.epsilon = 3
        strict.privacy.delta = 1e-5
        _ = try await f.registry.push(strict, publisher: alice)  // m:3, epsilon 3
        try await f.registry.setAlias("staging", model: "m", version: "3", by: admin)
        let violating = try await f.registry.setPolicy(model: "m", alias: "staging", rules: PolicyRules(maxEpsilon: 2), by: admin)
        #expect(violating == ["m@staging"])
        let refused = await refusal { _ = try await f.registry.pull(try ModelReference(parsing: "m@staging"), identity: alice, into: f.path("out")) }
        #expect(refused.contains("policy refused: alias staging of m requires epsilon <= 2.0; the version has 3.0"), "\(refused)")
        await expectRefusal("policy refused") {
            _ = try await f.registry.openSession(try ModelReference(parsing: "m@staging"), identity: alice, ttl: 60)
        }
        await expectRefusal("policy refused") { _ = try await f.registry.verify(try ModelReference(parsing: "m@staging")) }
        // The aliases table edited to point prod at version 2: the ledger still says 1, and fsck names the row.
        try attack(f, "UPDATE aliases SET version_id = (SELECT id FROM versions WHERE version = '2') WHERE alias = 'prod'")
        let reopened = try await f.reopen()
        await #expect(try reopened.pull(try ModelReference(parsing: "m@prod"), identity: alice, into: f.path("prod")).version == "1")
        await #expect(try reopened.fsck().problems.contains("alias m@prod 2 is in its table but not in the ledger"))
    }

    // MARK: - 8. The budget ledger can be erased

    @Test func finding08_budgetsAreRecomputedFromTheSignedRecords() async throws {
        let (f, alice, admin) = try await owned()
        let segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.5, steps: 400)]
        let one = Registry.composedEpsilon(segments, delta: 1e-5)
        // Room for one such version, not two.
        try await f.registry.setBudget(dataset: "d", epsilon: one * 1.1, delta: 1e-5, by: admin)
        var charged = PushRequest(model: "m", paths: [try f.makeModel("c", ["w.bin": bytes(100)])])
        charged.datasetID = "d"
        charged.privacy.mechanism = "dp-sgd"
        charged.privacy.delta = 1e-5
        charged.privacy.segments = segments
        charged.privacy.standardisation = "public"
        charged.privacy.batchSampling = "secret"
        _ = try await f.registry.push(charged, publisher: alice)
        let spent = try await f.registry.budget(dataset: "d").spent
        #expect(abs(spent - one) < 1e-9)
        try attack(f, "DELETE FROM budget_charges")
        let reopened = try await f.reopen()
        await #expect(try reopened.budget(dataset: "d").spent == spent, "the deleted charge still counts")
        await expectRefusal("privacy budget exceeded") { _ = try await reopened.push(charged, publisher: alice) }
        await #expect(try reopened.fsck().problems.contains { $0.contains("budget charge d m:3 is in the ledger but not in its table") })
    }

    // MARK: - 9. Unbounded lifetimes

    @Test func finding09_sessionAndTokenLifetimesAreBounded() async throws {
        let (f, alice, _) = try await owned()
        for ttl in [1e308, .infinity, 31_536_001, 0, -5] {
            await expectRefusal("at most 365 days") {
                _ = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: alice, ttl: ttl)
            }
            await expectRefusal("at most 365 days") {
                _ = try await f.registry.createToken(principal: "alice", scope: .read, ttl: ttl, by: Signer(alice))
            }
        }
        await expectRefusal("--max-uses") {
            _ = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: alice, ttl: 60, maxUses: 0)
        }
    }

    // MARK: - 10. list, show and list --where print a tampered epsilon as fact

    @Test func finding10_listAndShowMarkWhatDoesNotMatchItsSignature() async throws {
        let (f, _, _) = try await owned()
        await #expect(try f.registry.list().allSatisfy(\.verified))
        try attack(f, "UPDATE versions SET epsilon = 0.1 WHERE version = '1'")
        let reopened = try await f.reopen()
        let listed = try await reopened.list(where: "epsilon<=1")
        #expect(listed.count == 1 && !listed[0].verified && listed[0].verification!.contains("differs from the signed statement"))
        let shown = try await reopened.show(try ModelReference(parsing: "m:1"))
        #expect(!shown.verified && shown.json["verified"] == .bool(false))
        await #expect(try reopened.show(try ModelReference(parsing: "m:2")).verified)
    }

    // MARK: - 12. token create accepts a scope the principal has no role for

    @Test func finding12_tokensAreOnlyMintedForRolesHeld() async throws {
        let (f, alice, admin) = try await owned()
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader], by: admin)
        let actor = admin
        _ = alice
        await expectRefusal("bob holds no role the publish scope allows") {
            _ = try await f.registry.createToken(principal: "bob", scope: .publish, ttl: 60, by: actor)
        }
        _ = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 60, by: actor)
        await expectRefusal("holds the publisher role on no model") {
            try await f.registry.requirePublisherSomewhere(try f.registry.principal(for: bob.identity), action: "upload", target: "-")
        }
    }

    // MARK: - 14. Signer names are self-declared and not unique

    @Test func finding14_aTrustedNameBelongsToOneKey() async throws {
        let (f, alice, admin) = try await owned()
        let impostor = try person("alice")
        await expectRefusal("the name alice is already bound to the trusted key") { try await f.registry.trust(impostor.publicIdentity, by: admin) }
        try await f.registry.trust(impostor.publicIdentity, name: "not-alice", by: admin)
        // Its versions say who signed them by the trusted name, and a policy naming alice is not met by it.
        try await f.registry.addPrincipal(name: "impostor", identity: impostor.publicIdentity, roles: [.publisher], by: admin)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("i", ["w.bin": bytes(10)])]), publisher: impostor)
        await #expect(try f.registry.verify(try ModelReference(parsing: "m:3")).signer == "not-alice")
        try await f.registry.setPolicy(model: "m", alias: "prod", rules: PolicyRules(signer: "alice"), by: admin)
        await expectRefusal("requires a signature by alice; the version is signed by not-alice") {
            try await f.registry.setAlias("prod", model: "m", version: "3", by: admin)
        }
        _ = alice
    }

    // MARK: - 16. File names

    @Test(arguments: [
        ("line\nforged: yes", "has a control character"), ("tab\there", "has a control character"),
        (String(repeating: "n", count: 201), "longer than 200 bytes"), ("model.sig", "the name pull gives the model-signing bundle"),
        ("model.sig/w.bin", "the name pull gives the model-signing bundle"), ("x/\u{301}y", "starts with a combining mark"),
        // Deeper than an interrupted pull's signal handler removes (helper-41).
        (Array(repeating: "d", count: 32).joined(separator: "/") + "/f.bin", "is more than 32 names deep"),
    ])
    func finding16_fileNamesThatCannotRoundTripAreRefused(name: String, expected: String) async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let dir = f.path("named")
        let file = "\(dir)/\(name)"
        try FileManager.default.createDirectory(atPath: FileBytes.parentDirectory(of: file), withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: file))
        let refused = await refusal { _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice) }
        #expect(refused.contains(expected), "\(refused)")
        #expect(f.blobDigests().isEmpty)
    }

    @Test func finding16_unicodeTwinsAreOneName() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let dir = f.path("twins")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in ["caf\u{E9}.bin", "cafe\u{301}.bin"] { try Data(name.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name)")) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).count == 2)
        await expectRefusal("two inputs map to the same path") {
            _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        }
    }

    // MARK: - 17. Smaller findings

    @Test func finding17_principalsCanBeRemovedAndEverythingTheyHeldEnds() async throws {
        let (f, alice, admin) = try await owned()
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .inference], by: admin)
        let token = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: admin)
        try await f.registry.addRecipient(try ModelReference(parsing: "m:1"), recipient: bob.publicIdentity, identity: alice)
        let session = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: bob, ttl: 600)
        try await f.registry.removePrincipal("bob", by: admin)
        await expectRefusal("unauthenticated") { _ = try await f.registry.authenticateToken(token.token.text()) }
        await expectRefusal("was revoked") { _ = try await InferenceSession(registry: f.registry, token: session.token) }
        await expectRefusal("is not a principal") { _ = try await f.registry.principal(for: bob.identity) }
        await expectRefusal("the last admin") { try await f.registry.removePrincipal("alice", by: admin) }
        await #expect(try f.registry.fsck().problems.isEmpty)
    }

    @Test func finding17_grantsWithoutAnAliasAreNotDuplicated() async throws {
        let (f, _, admin) = try await owned()
        for _ in 0..<3 { try await f.registry.grant(Grant(principal: "alice", role: .reader, scope: "m"), by: admin) }
        let rows = try await f.sqlite().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM grants WHERE principal = 'alice' AND role = 'reader'")
        }
        #expect(rows == 1)
        await #expect(try f.registry.grants(of: "alice").filter { $0.role == .reader }.count == 1)
    }

    @Test func finding17_anUntrustedVersionsBlobsAreNotOrphans() async throws {
        let f = try await RegistryFixture(.sqlite)
        let mallory = try person("mallory")
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("x", ["w.bin": bytes(100)])]), publisher: mallory)
        let report = try await f.registry.fsck()
        #expect(report.problems.contains { $0.contains("not a trusted signer") })
        #expect(report.orphanBlobs.isEmpty && report.blobs == 1)
        await #expect(try f.registry.gc(grace: 0).removedBlobs == 0)
    }
}
