import CofferCrypto
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// Principals, grants, inference sessions and the audit log, on a real registry directory.
struct AccessTests {
    static let canary = Array("COFFER-CANARY-7f3a9c1e-do-not-leak".utf8)

    /// A registry owned by alice, with bob (inference on m/ through alias prod) as a recipient of m/risk:1,
    /// whose one file embeds the canary.
    private func populated(_ alice: UnlockedIdentity, _ bob: UnlockedIdentity, on backend: MetadataBackend = .sqlite) async throws -> RegistryFixture
    {
        let f = try await RegistryFixture(backend)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: admin)
        try await f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod"), by: admin)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let dir = try f.makeModel("model", ["weights.bin": bytes(5000) + Self.canary + bytes(3000)])
        var request = PushRequest(model: "m/risk", paths: [dir])
        request.recipients = [bob.publicIdentity]
        request.alias = "prod"
        _ = try await f.registry.push(request, publisher: alice)
        try FileManager.default.removeItem(atPath: dir)
        return f
    }

    /// The session hash key is made whole or not at all, and once: an empty file left by an older Coffer's creation cut
    /// short (every session then failed, helper-41) is made again; a key that exists stays as it is.
    @Test func theSessionHashKeyIsMadeWholeOnceAndAnEmptyOneIsMadeAgain() async throws {
        let f = try await RegistryFixture(.sqlite)
        let path = "\(f.home)/\(Registry.sessionHashKeyName)"
        unlink(path)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(), attributes: [.posixPermissions: 0o600]))
        let first = try f.registry.sessionHashKey().withUnsafeBytes { Array($0) }
        let stored = try #require(FileManager.default.contents(atPath: path))
        #expect(Array(stored) == first && first.count == 32 && first != [UInt8](repeating: 0, count: 32))
        #expect(try f.registry.sessionHashKey().withUnsafeBytes { Array($0) } == first)
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home).filter { $0.contains("coffer-tmp") }.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func rolesAreCheckedAndRefusalsNameWhatIsMissing(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob, on: backend)
        let eve = try person("eve")
        await expectRefusal("bob lacks the publisher role on m/risk") {
            _ = try await f.registry.push(PushRequest(model: "m/risk", paths: [f.path("x")]), publisher: bob)
        }
        await expectRefusal("is not a principal of this registry") { _ = try await f.registry.principal(for: eve.identity) }
        await expectRefusal("bob lacks the inference role on m/risk") {
            _ = try await f.registry.openSession(try ModelReference(parsing: "m/risk:1"), identity: bob, ttl: 60)
        }
        await expectRefusal("bob lacks the reader role") {
            _ = try await f.registry.pull(try ModelReference(parsing: "m/risk"), identity: bob, into: f.path("out"))
        }
        await expectRefusal("bob lacks the admin role") { try await f.registry.grant(Grant(principal: "bob", role: .admin), by: Signer(bob)) }
        #expect(!f.exists("out/weights.bin"))
        let refused = try await f.registry.auditEntries().filter { $0.outcome == .refused }
        #expect(refused.count == 5)
    }

    /// The write-ahead log stays between commands, so the frames that carried a session's key copy must go when the
    /// copy does: at its last use, on revocation and when it has expired.
    @Test func aSessionsKeyCopyLeavesTheDatabaseAndItsLogWhenTheSessionEnds() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        let prod = try ModelReference(parsing: "m/risk@prod")
        func keyCopy(_ id: String) throws -> Data {
            try #require(
                try DatabaseQueue(path: "\(f.home)/registry.sqlite").read { db in
                    try Data.fetchOne(db, sql: "SELECT wrapped_key FROM sessions WHERE id = ?", arguments: [id])
                }
            )
        }
        func expectGone(_ copy: Data, _ how: String) {
            for name in ["registry.sqlite", "registry.sqlite-wal"] {
                guard let file = FileManager.default.contents(atPath: "\(f.home)/\(name)") else { continue }
                #expect(file.range(of: copy) == nil, "a session's key copy survives in \(name) after \(how)")
            }
        }
        let used = try await f.registry.openSession(prod, identity: bob, ttl: 600, maxUses: 1, now: t0)
        let usedCopy = try keyCopy(used.info.id)
        _ = try await InferenceSession(registry: f.registry, token: used.token, now: t0)
        expectGone(usedCopy, "its last use")
        let revoked = try await f.registry.openSession(prod, identity: bob, ttl: 600, now: t0)
        let revokedCopy = try keyCopy(revoked.info.id)
        try await f.registry.revokeSession(id: revoked.info.id, identity: bob)
        expectGone(revokedCopy, "its revocation")
        let expiring = try await f.registry.openSession(prod, identity: bob, ttl: 60, now: t0)
        let expiringCopy = try keyCopy(expiring.info.id)
        _ = try await f.registry.openSession(prod, identity: bob, ttl: 60, now: t0.addingTimeInterval(120))  // drops expired keys
        expectGone(expiringCopy, "its expiry")
    }

    @Test(arguments: MetadataBackend.available) func sessionsDecryptOnlyWhileValidAndEveryRefusalIsAudited(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob, on: backend)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        let prod = try ModelReference(parsing: "m/risk@prod")
        let opened = try await f.registry.openSession(prod, identity: bob, ttl: 60, maxUses: 2, now: t0)
        let session = try await InferenceSession(registry: f.registry, token: opened.token, now: t0.addingTimeInterval(10))
        let plaintext = session.withFile("weights.bin") { Array($0) }
        #expect(plaintext == bytes(5000) + Self.canary + bytes(3000))
        let isMultiTask = session.isMultiTaskModel
        #expect(!isMultiTask)

        // Expired (injected clock), then exhausted, revoked, unknown and malformed tokens.
        await expectRefusal("expired at") {
            _ = try await InferenceSession(registry: f.registry, token: opened.token, now: t0.addingTimeInterval(61))
        }
        let limited = try await f.registry.openSession(prod, identity: bob, ttl: 600, maxUses: 1, now: t0)
        _ = try await InferenceSession(registry: f.registry, token: limited.token, now: t0)
        await expectRefusal("has used all 1 of its uses") { _ = try await InferenceSession(registry: f.registry, token: limited.token, now: t0) }
        let revoked = try await f.registry.openSession(prod, identity: bob, ttl: 600, now: t0)
        try await f.registry.revokeSession(id: revoked.info.id, identity: bob)
        await expectRefusal("was revoked") { _ = try await InferenceSession(registry: f.registry, token: revoked.token, now: t0) }
        // Revoking: someone else's session is unknown to a non-admin, as is one that does not exist; an admin may revoke any.
        let carol = try person("carol")
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [], by: Signer(alice))
        let bobs = try await f.registry.openSession(prod, identity: bob, ttl: 600, now: t0)
        await #expect(throws: CofferRegistryError.unknownSession(bobs.info.id)) {
            try await f.registry.revokeSession(id: bobs.info.id, identity: carol)
        }
        await #expect(throws: CofferRegistryError.unknownSession("0123456789abcdef")) {
            try await f.registry.revokeSession(id: "0123456789abcdef", identity: bob)
        }
        _ = try await InferenceSession(registry: f.registry, token: bobs.token, now: t0)
        try await f.registry.revokeSession(id: bobs.info.id, identity: alice)
        await expectRefusal("was revoked") { _ = try await InferenceSession(registry: f.registry, token: bobs.token, now: t0) }
        let stranger = SessionToken(secret: SecretKey.random())
        await expectRefusal("unknown session token") { _ = try await InferenceSession(registry: f.registry, token: stranger, now: t0) }
        await expectRefusal("malformed session token") {
            _ = try await InferenceSession(registry: f.registry, tokenText: passphrase("cfs_not-a-token"), now: t0)
        }

        // The principal loses the grant: its open session stops working.
        let later = try await f.registry.openSession(prod, identity: bob, ttl: 600, now: t0)
        try await f.registry.revoke(Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod"), by: Signer(alice))
        await expectRefusal("no longer holds the inference role") {
            _ = try await InferenceSession(registry: f.registry, token: later.token, now: t0)
        }

        let refusals = try await f.registry.auditEntries().filter { $0.action == "infer" && $0.outcome == .refused }
        #expect(refusals.count == 7)
        await #expect(try f.registry.auditEntries().filter { $0.action == "session.revoke" && $0.outcome == .refused }.count == 2)
        // Expired and revoked sessions lost their key copy: the token alone can no longer open anything.
        let keys = try await f.registry.metadata.sessions().filter { $0.session.wrappedKey != nil }.count
        // Exhausted sessions and those whose grant went lose it too (a re-grant does not bring them back).
        #expect(keys == 0, "no session that can no longer be used holds a key")
    }

    @Test func noPlaintextReachesTheDiskOrTheLog() async throws {
        let started = Date().addingTimeInterval(-1)
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        // Ten minutes: the session is used in real time, and a loaded full run took over a minute to get to it.
        let opened = try await f.registry.openSession(try ModelReference(parsing: "m/risk@prod"), identity: bob, ttl: 600)
        for _ in 0..<3 {
            let session = try await InferenceSession(registry: f.registry, token: opened.token)
            #expect(session.withFile("weights.bin") { $0.count } == 8000 + Self.canary.count)
        }
        let tokenText = opened.token.text().withUnsafeBytes { Array($0) }
        // The registry directory whole; of the temporary directory, what changed while the test ran. On a thread of its
        // own: the temporary directory holds other tests' databases and blobs, read here for seconds.
        let registryRoot = f.root.path
        let canary = Data(Self.canary)
        let (scanned, leaks) = await Offload.run { () -> (Int, [String]) in
            var scanned = 0
            var leaks: [String] = []
            for (root, since) in [(registryRoot, Date.distantPast), (NSTemporaryDirectory(), started)] {
                let files = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String } ?? []
                for relative in files {
                    let path = "\(root)/\(relative)"
                    // Other tests running meanwhile write plaintext inputs of their own (their fixtures' model/): not ours.
                    if !path.hasPrefix(registryRoot), relative.hasPrefix("coffer-registry-"), relative.contains("/model/") { continue }
                    // A build of these tests elsewhere in the temporary directory (a fresh clone's CI, a reviewer's copy)
                    // holds the canary as a literal in its test binary: seen once, built while this test ran.
                    if !path.hasPrefix(registryRoot), relative.split(separator: "/").contains(".build") { continue }
                    guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                        attributes[.type] as? FileAttributeType == .typeRegular,
                        (attributes[.modificationDate] as? Date ?? .distantPast) >= since,
                        let data = FileManager.default.contents(atPath: path)
                    else { continue }
                    scanned += 1
                    if data.range(of: canary) != nil { leaks.append("canary in \(path)") }
                    if data.range(of: Data(tokenText)) != nil { leaks.append("token in \(path)") }
                }
            }
            return (scanned, leaks)
        }
        #expect(leaks.isEmpty, "\(leaks)")
        #expect(scanned > 3, "the registry's database, keys and blobs were scanned")
    }

    /// A registry with a signed audit head over its first entries and two unsigned ones after it.
    private func auditedRegistry() async throws -> RegistryFixture {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        for name in ["b1", "b2", "b3", "b4"] {
            try await f.registry.addPrincipal(name: name, identity: try person(name).publicIdentity, roles: [.reader], by: admin)
        }
        await #expect(try f.registry.signAuditHead(with: try f.registryKey) == 6)
        try await f.registry.grant(Grant(principal: "b1", role: .decrypt), by: admin)
        try await f.registry.grant(Grant(principal: "b2", role: .decrypt), by: admin)
        let report = try await f.registry.verifyAudit()
        #expect(report == AuditReport(entries: 8, signedThrough: 6, unsigned: 2))
        return f
    }

    /// Tampers with the database as someone holding the file would: triggers dropped first.
    private func tamper(_ f: RegistryFixture, _ sql: String) throws {
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try db.write { db in
            try db.execute(sql: "DROP TRIGGER audit_is_append_only; DROP TRIGGER audit_is_never_deleted")
            try db.execute(sql: sql)
        }
    }

    @Test(arguments: [
        ("UPDATE audit_log SET reason = 'roles admin' WHERE seq = 3", "entry 3 was edited"),
        ("UPDATE audit_log SET principal = 'mallory' WHERE seq = 7", "entry 7 was edited"),
        ("DELETE FROM audit_log WHERE seq = 4", "entry 4 is missing"),
        (
            "INSERT INTO audit_log SELECT 9, at, principal, action, target, outcome, reason, zeroblob(32), entry_hash FROM audit_log WHERE seq = 2",
            "entry 9 does not link"
        ),
        ("UPDATE audit_log SET seq = -seq WHERE seq IN (2, 3); UPDATE audit_log SET seq = 5 - (-seq) WHERE seq < 0", "entry 2 does not link"),
        ("DELETE FROM audit_log WHERE seq >= 5", "entry 6, covered by a signed head, is gone"),
        ("UPDATE audit_heads SET signature = zeroblob(64)", "is not signed by a key of the registry's chain"),
    ])
    func auditTamperingIsDetected(sql: String, expected: String) async throws {
        let f = try await auditedRegistry()
        try tamper(f, sql)
        let message = await refusal { _ = try await f.registry.verifyAudit() }
        #expect(message.contains(expected), "\(message)")
    }

    @Test func aRewrittenChainUnderASignedHeadIsDetected() async throws {
        let f = try await auditedRegistry()
        // Rewrite entry 3 (b1's roles) and recompute every hash after it, as a careful attacker would.
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try await db.write { db in
            try db.execute(sql: "DROP TRIGGER audit_is_append_only")
            try db.execute(sql: "UPDATE audit_log SET reason = 'roles admin' WHERE seq = 3")
            var previous = Registry.genesisHash
            for row in try Row.fetchAll(db, sql: "SELECT * FROM audit_log ORDER BY seq") {
                let entry = AuditEntry(
                    seq: row["seq"],
                    at: row["at"],
                    principal: row["principal"],
                    action: row["action"],
                    target: row["target"],
                    outcome: AuditEntry.Outcome(rawValue: row["outcome"])!,
                    reason: row["reason"]
                )
                let hash = entry.hash(previous: previous)
                try db.execute(
                    sql: "UPDATE audit_log SET prev_hash = ?, entry_hash = ? WHERE seq = ?",
                    arguments: [Data(previous), Data(hash), entry.seq]
                )
                previous = hash
            }
        }
        await expectRefusal("entries up to 6 were rewritten under a signed head") { _ = try await f.registry.verifyAudit() }
    }
}
