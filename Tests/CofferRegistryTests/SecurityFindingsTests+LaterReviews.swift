import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Synchronization
import Testing

@testable import CofferRegistry

/// The second review (of the ledger itself), one test per finding it reproduced, named after its letter.
extension SecurityFindingsTests {
    @Test func reviewA_aRegistryReplacedWholesaleIsRefusedByEveryClientThatUsedIt() async throws {
        let (f, _, _) = try await owned()
        let bob = ClientMemory(directory: f.path("bob-client"))
        _ = try await Registry(at: f.home, memory: bob).ledgerState()  // bob uses the registry: his client pins its root
        let other = try await RegistryFixture(.sqlite)
        for name in ["registry.sqlite", "registry.key", "registry.pub"] {
            try FileManager.default.removeItem(atPath: "\(f.home)/\(name)")
            try FileManager.default.copyItem(atPath: "\(other.home)/\(name)", toPath: "\(f.home)/\(name)")
        }
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: "\(f.home)/registry.sqlite\(suffix)") }
        await expectRefusal("it was replaced") { _ = try await Registry(at: f.home, memory: bob).ledgerState() }
    }

    @Test func reviewB_aVersionRecordMustBeSignedByTheStatementsPublisher() async throws {
        let (f, _, _) = try await owned()
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:1")).id)
        let state = try await f.registry.ledgerState()
        // A record for m:1 in this registry, signed by a fresh key naming itself as publisher: a valid signature, but not
        // the publisher of the statement it would vouch for.
        let forger = try Identity.generate(name: "alice")
        var facts = try await f.registry.versionRecord(model: "m", version: "1", state: state)
        facts.publisher = forger.publicIdentity
        let forged = LedgerRecord.sign(
            registry: state.registry,
            seq: 1,
            prev: LedgerRecord.zeroHash,
            at: "x",
            by: "x",
            change: .version(facts),
            signer: forger
        )
        let checked = try Registry.checkVersionRecord(forged, model: "m", version: "1", state: state)
        #expect(checked.publisher.keyID != stored.publisherKeyID, "the forged record checks out on its own...")
        // ...so it is bound to the statement: a local copy at row 0, where the lookup once found it, is ignored.
        try attack(f, "INSERT INTO ledger (seq, kind, object, envelope, hash) VALUES (0, 'version', 'version:m:1', ?, 'x')", [Data(forged.envelope)])
        await #expect(try f.reopen().verify(try ModelReference(parsing: "m:1")).version == "1")
        // Remotely, a package carrying it for another registry's genuine m:1 is refused.
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let ledger = try await RemoteLedger.sync(from: StoredLedger(registry: f.registry), location: "https://b.test", key: nil, memory: nil)
        var package = try await f.registry.package(try ModelReference(parsing: "m:1"), keyID: nil, includeKey: false, for: "alice")
        package.record = Data(forged.envelope).base64EncodedString()
        let expected = try RemoteExpectation(try ModelReference(parsing: "m:1"), ledger: ledger)
        await expectRefusal("names another version or publisher") { _ = try RemotePull.verifiedFiles(package, expected: expected, trusting: nil) }
    }

    @Test func reviewC_aTokenRowNobodySignedForOpensNothing() async throws {
        let (f, alice, admin) = try await owned()
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader], by: admin)
        // A token written straight into the table for alice, admin scope, by someone who read session-hash.key.
        let forged = SessionToken(secret: SecretKey.random(), prefix: SessionToken.apiPrefix)
        let hash = try f.registry.tokenHash(forged)
        try attack(
            f,
            "INSERT INTO api_tokens (id, token_hash, principal, scope, created_at, expires_at) VALUES ('00000000deadbeef', ?, 'alice', 'admin', 'x', '2999-01-01T00:00:00.000Z')",
            [Data(hash)]
        )
        await expectRefusal("unknown bearer token") { _ = try await f.reopen().authenticateToken(forged.text()) }
        // bob's own read token, edited into alice's admin token, is not the token that was minted either.
        let minted = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: admin)
        try attack(f, "UPDATE api_tokens SET principal = 'alice', scope = 'admin' WHERE id = ?", [minted.info.id])
        await expectRefusal("unknown bearer token") { _ = try await f.reopen().authenticateToken(minted.token.text()) }
        await #expect(try f.reopen().fsck().problems.contains { $0.contains("bearer token") })
        _ = alice
    }

    @Test func reviewG_M_historiesAreBoundedBeforeAnyoneComposesThem() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let dir = try f.makeModel("model", ["w.bin": bytes(100)])
        for segments in [
            Array(repeating: PrivacySegment(sampleRate: 1e-6, noiseMultiplier: 1e6, steps: 1), count: 1001),
            [PrivacySegment(sampleRate: 0.5, noiseMultiplier: 1, steps: 1 << 62)],
        ] {
            var request = PushRequest(model: "m", paths: [dir])
            request.privacy.segments = segments
            await expectRefusal("invalid privacy metadata") { _ = try await f.registry.push(request, publisher: alice) }
        }
        // A record with such a history, appended by whoever can sign one (any key, in a registry without principals),
        // is refused by every reader instead of trapping it.
        try await f.registry.setBudget(dataset: "d", epsilon: 1, delta: 1e-5, by: try f.registrySigner)
        let state = try await f.registry.ledgerState()
        let huge = LedgerChange.VersionFacts(
            model: "m",
            version: "9",
            digest: String(repeating: "0", count: 64),
            publisher: alice.publicIdentity,
            dataset: "d",
            mechanism: "dp-sgd",
            segments: [
                PrivacySegment(sampleRate: 0.5, noiseMultiplier: 1, steps: 1 << 62),
                PrivacySegment(sampleRate: 0.5, noiseMultiplier: 1, steps: 1 << 62),
            ],
            charged: true,
            overrideBy: nil
        )
        try appendForgedVersion(f, huge, after: state, by: alice.publicIdentity.keyID, signer: alice.identity)
        let fresh = try await Registry(at: f.home, memory: nil)
        await expectRefusal("its history is out of bounds") { _ = try await fresh.ledgerState() }
        await #expect(try fresh.fsck().problems.contains { $0.contains("out of bounds") })
    }

    @Test func reviewI_anAuditLogCutAfterTheLedgersMarkIsCaughtByTheSignedStateHead() async throws {
        let (f, _, admin) = try await owned()
        _ = try await f.registry.signAuditHead(with: try f.registryKey)  // marks the audit head in the ledger
        let marked = try await f.registry.metadata.lastAuditEntry()!.seq
        for role in [Role.reader, .decrypt, .inference] { try await f.registry.grant(Grant(principal: "alice", role: role, scope: "m"), by: admin) }
        _ = try await f.registry.signAuditHead(with: try f.registryKey, checkpoint: false)  // a server's frequent head: no mark
        try attack(f, "DELETE FROM audit_log WHERE seq > ?; DELETE FROM audit_heads WHERE seq > ?", [marked, marked])
        let auditor = try await Registry(at: f.home, memory: ClientMemory(directory: f.path("auditor")))
        await expectRefusal("named by the registry's signed state head") { _ = try await auditor.verifyAudit() }
    }

    @Test func reviewL_theRegistrysOnlineKeyCannotChangeWhoIsTrusted() async throws {
        let (f, _, _) = try await owned()
        let mallory = try person("mallory")
        let online = try f.registrySigner
        await expectRefusal("an admin signs it") {
            try await f.registry.addPrincipal(name: "mallory", identity: mallory.publicIdentity, roles: [.publisher], by: online)
        }
        let asAlice = Signer.registry(try f.registryKey, for: Principal(name: "alice", keyID: ""))
        await expectRefusal("only alice's own key can") { try await f.registry.trust(mallory.publicIdentity, name: "alice-release", by: asAlice) }
        await expectRefusal("only alice's own key can") { try await f.registry.grant(Grant(principal: "alice", role: .publisher), by: asAlice) }
        // What a server does for a token holder still works: moving an alias as alice.
        try await f.registry.setAlias("prod", model: "m", version: "2", by: asAlice)
        // A rotation by the online key alone is refused; with alice's approval it goes through.
        await expectRefusal("an admin signs it") {
            _ = try await f.registry.rotateKey(
                current: try f.registryKey,
                passphrase: passphrase("registry passphrase"),
                kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
                by: online
            )
        }
    }

    /// The third review (of the metadata GET's memos): the last verified ledger record, remembered by its bytes so that
    /// a refresh need not hash it again, vouches only for the state it was verified with. Two validly signed records
    /// for one number (a registry key holder's fork), one remembered from another state (a concurrent refresh, or the
    /// state fsck replaced), must not let this state's record be swapped for the other.
    @Test func reviewN_aRememberedLedgerTailVouchesOnlyForTheStateItWasVerifiedWith() async throws {
        let (f, _, _) = try await owned()
        let state = try await f.registry.ledgerState()
        let stored = try #require(try await f.registry.metadata.ledgerRecords(after: state.seq - 1, limit: nil).last)
        let record = try Registry.parse(Array(stored.envelope))
        let fork = resigned(record, at: "2031-01-01T00:00:00.000Z", signer: try f.registryKey.identity)
        #expect(fork.seq == state.seq && fork.hash != state.hash)
        f.registry.verifiedTail.withLock { $0 = (fork.seq, fork.hash, Data(fork.envelope)) }
        try await f.attack("UPDATE ledger SET envelope = ?, hash = ? WHERE seq = ?", [Data(fork.envelope), fork.hash, fork.seq])
        await expectRefusal("ledger record \(state.seq), verified before, was rewritten") { _ = try await f.registry.ledgerState() }
    }

    /// helper-38's review (a malicious server): the client's replay gives no digest for an explicit version (`m:2`), and
    /// the ledger record sent with its package was checked for its signature and a place within the chain only. A
    /// server holding the registry key signed a record that never entered the ledger, for another statement the
    /// publisher once signed, and pull, show and verify took it. The record must be the one replayed at its place: its
    /// links are walked to the next waypoint (past 1,024 records, as here) or to the last record.
    @Test func review38_anExplicitVersionIsTheRecordTheLedgerHolds() async throws {
        let (f, alice, admin) = try await owned()
        for _ in 0..<520 {
            try await f.registry.grant(Grant(principal: "alice", role: .reader), by: admin)
            _ = try await f.registry.revoke(Grant(principal: "alice", role: .reader), by: admin)
        }
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let served = StoredLedger(registry: f.registry)
        let ledger = try await RemoteLedger.sync(
            from: served,
            location: "https://registry.test",
            key: nil,
            memory: ClientMemory(directory: f.path("c"))
        )
        #expect(ledger.state.seq > 1024 && ledger.state.waypoints?.count == Int(ledger.state.seq / 1024))

        let genuine = try await f.registry.package(try ModelReference(parsing: "m:2"), keyID: nil, includeKey: false, for: "alice")
        let envelope = Array(try #require(genuine.record.flatMap { Data(base64Encoded: $0) }))
        let record = try Registry.parse(envelope)
        #expect(try await RemoteLedger.confirmedVersion(envelope, in: ledger.state, from: served).digest == genuine.digest)
        // The same version's record for another digest, signed by the registry key at the same place.
        guard case .version(var facts) = record.change else { throw CofferRegistryError.tampered("not a version record") }
        facts.digest = String(repeating: "ab", count: 32)
        let forged = resigned(record, change: .version(facts), signer: try f.registryKey.identity)
        // What the client checked before: it passes.
        #expect(try Registry.checkVersionRecord(forged, model: "m", version: "2", state: ledger.state).digest == facts.digest)
        await expectRefusal("the server sent a ledger record that is not the one replayed here at \(record.seq)") {
            _ = try await RemoteLedger.confirmedVersion(forged.envelope, in: ledger.state, from: served)
        }

        // A record that is no version's is refused too (the genesis here).
        let genesis = try #require(try await f.registry.ledgerRecords(after: 0, limit: 1).first).envelope
        await expectRefusal("not a version record of the ledger replayed here") {
            _ = try await RemoteLedger.confirmedVersion(genesis, in: ledger.state, from: served)
        }
        // Past the last waypoint the walk ends at the last record replayed: m:3's record, and one forged for it.
        let dir = try f.makeModel("model3", ["w.bin": bytes(3000, seed: 3)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let later = try await RemoteLedger.sync(
            from: served,
            location: "https://registry.test",
            key: nil,
            memory: ClientMemory(directory: f.path("c"))
        )
        let third = try await f.registry.package(try ModelReference(parsing: "m:3"), keyID: nil, includeKey: false, for: "alice")
        let thirdEnvelope = Array(try #require(third.record.flatMap { Data(base64Encoded: $0) }))
        let thirdRecord = try Registry.parse(thirdEnvelope)
        #expect(thirdRecord.seq > 1024 * Int64(later.state.waypoints?.count ?? 0))
        #expect(try await RemoteLedger.confirmedVersion(thirdEnvelope, in: later.state, from: served).digest == third.digest)
        let forgedThird = resigned(thirdRecord, at: "2031-01-01T00:00:00.000Z", signer: try f.registryKey.identity)
        await expectRefusal("not the one replayed here at \(thirdRecord.seq)") {
            _ = try await RemoteLedger.confirmedVersion(forgedThird.envelope, in: later.state, from: served)
        }

        // A state remembered before waypoints gets them from one read of the chain, which must reach its hash.
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(ledger.state)) as! [String: Any]
        json["waypoints"] = nil
        json["recordedVersionKeys"] = nil
        let old = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: json))
        #expect(old.waypoints == nil && old.recordedVersionKeys == nil && old.lacksIndexes)
        #expect(try await RemoteLedger.filledIndexes(old, from: served, location: "https://registry.test") == ledger.state)
        #expect(ledger.state.supersedes(old) && !old.supersedes(ledger.state))
        json["hash"] = String(repeating: "0", count: 63) + "1"
        let rewritten = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: json))
        await expectRefusal("does not reach record \(ledger.state.seq) as verified before") {
            _ = try await RemoteLedger.filledIndexes(rewritten, from: served, location: "https://registry.test")
        }

        // A local user's remembered state gets them too, and keeps them (helper-39: a `coffer serve` started from such a
        // state saved states without them, and every remote sync by the same user read the whole chain again).
        let local = ClientMemory(directory: f.path("local"))
        let current = try await Registry(at: f.home, memory: local).ledgerState()
        var remembered = try JSONSerialization.jsonObject(with: JSONEncoder().encode(current)) as! [String: Any]
        remembered["waypoints"] = nil
        let before = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: remembered))
        try await local.remember(current.registry) { $0!.state = before }
        #expect(try local.remembered(current.registry)?.state.waypoints == nil)
        #expect(try await Registry(at: f.home, memory: local).ledgerState() == current)
        #expect(try local.remembered(current.registry)?.state == current)
        remembered["hash"] = String(repeating: "0", count: 63) + "1"
        let wrong = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: remembered))
        try await local.remember(current.registry) { $0!.state = wrong }
        await expectRefusal("was rewritten") { _ = try await Registry(at: f.home, memory: local).ledgerState() }
    }

    /// helper-38: pins were named by the URL's text, so `https://Registry.example:443/` made a fresh pin (trust on first
    /// use again) beside `https://registry.example`'s.
    @Test func review38_aServedRegistryHasOnePinNameHoweverItsURLIsWritten() throws {
        let spellings = ["https://Registry.Example:443/api/", "HTTPS://registry.example/api?x=1#top", "https://registry.example/api"]
        #expect(Set(try spellings.map { ClientMemory.location(url: try #require(URL(string: $0))) }) == ["https://registry.example/api"])
        #expect(ClientMemory.location(url: try #require(URL(string: "https://registry.example:8443"))) == "https://registry.example:8443")
        #expect(ClientMemory.location(url: try #require(URL(string: "http://127.0.0.1:8080/"))) == "http://127.0.0.1:8080")
    }

    /// helper-70: the replay refuses a charged `version` record whose facts say its statistics are nonprivate or its
    /// batches seeded, but a record may leave those facts out (every record made before 2026-12-06 does). A charged
    /// record that leaves them out, for a statement whose signed privacy says `nonprivate` (or `seeded`), passes the
    /// replay: verify and pull, local or remote, must refuse it on the statement itself.
    @Test(arguments: [("nonprivate", nil), (nil, "seeded")] as [(String?, String?)])
    func review70_aChargedRecordThatLeavesTheSourceOutIsJudgedByItsStatement(standardisation: String?, batchSampling: String?) async throws {
        let (f, alice, admin) = try await owned()
        // m:3, trained on d with its statistics (or batches) outside DP, pushed while d had no budget: honest, not charged.
        var (facts, seq) = try await pushM3(f, Self.dpSGD(standardisation: standardisation, batchSampling: batchSampling), by: alice)
        #expect(!facts.charged && facts.standardisation == standardisation && facts.batchSampling == batchSampling)

        // Its record taken off the end, d given a budget by its admin, and the record signed again by alice, charged and
        // leaving the source out as a Coffer before 2026-12-06 wrote it: a chain a client meeting the registry now accepts.
        try attack(f, "DELETE FROM ledger WHERE seq = ?", [seq])
        let budgeted = try await Registry(at: f.home, memory: nil)
        try await budgeted.setBudget(dataset: "d", epsilon: 100, delta: 1e-5, by: admin)
        let state = try await budgeted.ledgerState()
        facts.charged = true
        facts.standardisation = nil
        facts.batchSampling = nil
        try appendForgedVersion(f, facts, after: state, by: "alice", signer: alice.identity)
        let reader = try await Registry(at: f.home, memory: nil)
        #expect(try await reader.ledgerState().isCharged(facts.digest), "the replay takes the charge")

        let m3 = try ModelReference(parsing: "m:3")
        let line = "integrity check failed: m:3: charged to a budget, though its statement says its training, statistics or batches are outside DP"
        try await expectEveryReaderRefuses(m3, f, reader: reader, as: alice, line: line)
        // The versions recorded honestly still verify.
        await #expect(try reader.verify(try ModelReference(parsing: "m:2")).version == "2")
    }
}
