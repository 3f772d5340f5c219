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
    private func populated(_ alice: UnlockedIdentity, _ bob: UnlockedIdentity) throws -> RegistryFixture {
        let f = try RegistryFixture()
        try f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: admin)
        try f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod"), by: admin)
        try f.registry.trust(alice.publicIdentity, by: admin)
        let dir = try f.makeModel("model", ["weights.bin": bytes(5000) + Self.canary + bytes(3000)])
        var request = PushRequest(model: "m/risk", paths: [dir])
        request.recipients = [bob.publicIdentity]
        request.alias = "prod"
        _ = try f.registry.push(request, publisher: alice)
        try FileManager.default.removeItem(atPath: dir)
        return f
    }

    private func refusal(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func rolesAreCheckedAndRefusalsNameWhatIsMissing() throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try populated(alice, bob)
        let eve = try person("eve")
        #expect(
            refusal { _ = try f.registry.push(PushRequest(model: "m/risk", paths: [f.path("x")]), publisher: bob) }.contains(
                "bob lacks the publisher role on m/risk"
            )
        )
        #expect(refusal { _ = try f.registry.principal(for: eve.identity) }.contains("is not a principal of this registry"))
        #expect(
            refusal { _ = try f.registry.openSession(try ModelReference(parsing: "m/risk:1"), identity: bob.identity, ttl: 60) }.contains(
                "bob lacks the inference role on m/risk"
            )
        )
        #expect(
            refusal { _ = try f.registry.pull(try ModelReference(parsing: "m/risk"), identity: bob.identity, into: f.path("out")) }.contains(
                "bob lacks the reader role"
            )
        )
        #expect(refusal { try f.registry.grant(Grant(principal: "bob", role: .admin), by: Signer(bob)) }.contains("bob lacks the admin role"))
        #expect(!f.exists("out/weights.bin"))
        let refused = try f.registry.auditEntries().filter { $0.outcome == .refused }
        #expect(refused.count == 5)
    }

    @Test func sessionsDecryptOnlyWhileValidAndEveryRefusalIsAudited() throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try populated(alice, bob)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        let prod = try ModelReference(parsing: "m/risk@prod")
        let opened = try f.registry.openSession(prod, identity: bob.identity, ttl: 60, maxUses: 2, now: t0)
        let session = try InferenceSession(registry: f.registry, token: opened.token, now: t0.addingTimeInterval(10))
        let plaintext = session.withFile("weights.bin") { Array($0) }
        #expect(plaintext == bytes(5000) + Self.canary + bytes(3000))
        let isMultiTask = session.isMultiTaskModel
        #expect(!isMultiTask)

        // Expired (injected clock), then exhausted, revoked, unknown and malformed tokens.
        #expect(
            refusal { _ = try InferenceSession(registry: f.registry, token: opened.token, now: t0.addingTimeInterval(61)) }.contains("expired at")
        )
        let limited = try f.registry.openSession(prod, identity: bob.identity, ttl: 600, maxUses: 1, now: t0)
        _ = try InferenceSession(registry: f.registry, token: limited.token, now: t0)
        #expect(refusal { _ = try InferenceSession(registry: f.registry, token: limited.token, now: t0) }.contains("has used all 1 of its uses"))
        let revoked = try f.registry.openSession(prod, identity: bob.identity, ttl: 600, now: t0)
        try f.registry.revokeSession(id: revoked.info.id, identity: bob.identity)
        #expect(refusal { _ = try InferenceSession(registry: f.registry, token: revoked.token, now: t0) }.contains("was revoked"))
        // Revoking: someone else's session is unknown to a non-admin, as is one that does not exist; an admin may revoke any.
        let carol = try person("carol")
        try f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [], by: Signer(alice))
        let bobs = try f.registry.openSession(prod, identity: bob.identity, ttl: 600, now: t0)
        #expect(throws: CofferRegistryError.unknownSession(bobs.info.id)) { try f.registry.revokeSession(id: bobs.info.id, identity: carol.identity) }
        #expect(throws: CofferRegistryError.unknownSession("0123456789abcdef")) {
            try f.registry.revokeSession(id: "0123456789abcdef", identity: bob.identity)
        }
        _ = try InferenceSession(registry: f.registry, token: bobs.token, now: t0)
        try f.registry.revokeSession(id: bobs.info.id, identity: alice.identity)
        #expect(refusal { _ = try InferenceSession(registry: f.registry, token: bobs.token, now: t0) }.contains("was revoked"))
        let stranger = SessionToken(secret: SecretKey.random())
        #expect(refusal { _ = try InferenceSession(registry: f.registry, token: stranger, now: t0) }.contains("unknown session token"))
        #expect(
            refusal { _ = try InferenceSession(registry: f.registry, tokenText: passphrase("cfs_not-a-token"), now: t0) }.contains(
                "malformed session token"
            )
        )

        // The principal loses the grant: its open session stops working.
        let later = try f.registry.openSession(prod, identity: bob.identity, ttl: 600, now: t0)
        try f.registry.revoke(Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod"), by: Signer(alice))
        #expect(
            refusal { _ = try InferenceSession(registry: f.registry, token: later.token, now: t0) }.contains("no longer holds the inference role")
        )

        let refusals = try f.registry.auditEntries().filter { $0.action == "infer" && $0.outcome == .refused }
        #expect(refusals.count == 7)
        #expect(try f.registry.auditEntries().filter { $0.action == "session.revoke" && $0.outcome == .refused }.count == 2)
        // Expired and revoked sessions lost their key copy: the token alone can no longer open anything.
        let keys = try DatabaseQueue(path: "\(f.home)/registry.sqlite").read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM sessions WHERE wrapped_key IS NOT NULL")
        }
        // Exhausted sessions and those whose grant went lose it too (a re-grant does not bring them back).
        #expect(keys == 0, "no session that can no longer be used holds a key")
    }

    @Test func noPlaintextReachesTheDiskOrTheLog() throws {
        let started = Date().addingTimeInterval(-1)
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try populated(alice, bob)
        let opened = try f.registry.openSession(try ModelReference(parsing: "m/risk@prod"), identity: bob.identity, ttl: 60)
        for _ in 0..<3 {
            let session = try InferenceSession(registry: f.registry, token: opened.token)
            #expect(session.withFile("weights.bin") { $0.count } == 8000 + Self.canary.count)
        }
        let tokenText = opened.token.text().withUnsafeBytes { Array($0) }
        // The registry directory whole; of the temporary directory, what changed while the test ran.
        var scanned = 0
        for (root, since) in [(f.root.path, Date.distantPast), (NSTemporaryDirectory(), started)] {
            let files = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String } ?? []
            for relative in files {
                let path = "\(root)/\(relative)"
                guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                    attributes[.type] as? FileAttributeType == .typeRegular,
                    (attributes[.modificationDate] as? Date ?? .distantPast) >= since,
                    let data = FileManager.default.contents(atPath: path)
                else { continue }
                scanned += 1
                #expect(data.range(of: Data(Self.canary)) == nil, "canary in \(path)")
                #expect(data.range(of: Data(tokenText)) == nil, "token in \(path)")
            }
        }
        #expect(scanned > 3, "the registry's database, keys and blobs were scanned")
    }

    /// A registry with a signed audit head over its first entries and two unsigned ones after it.
    private func auditedRegistry() throws -> RegistryFixture {
        let f = try RegistryFixture()
        let alice = try person("alice")
        try f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        for name in ["b1", "b2", "b3", "b4"] {
            try f.registry.addPrincipal(name: name, identity: try person(name).publicIdentity, roles: [.reader], by: admin)
        }
        #expect(try f.registry.signAuditHead(with: try f.registryKey) == 6)
        try f.registry.grant(Grant(principal: "b1", role: .decrypt), by: admin)
        try f.registry.grant(Grant(principal: "b2", role: .decrypt), by: admin)
        let report = try f.registry.verifyAudit()
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
    func auditTamperingIsDetected(sql: String, expected: String) throws {
        let f = try auditedRegistry()
        try tamper(f, sql)
        let message = refusal { _ = try f.registry.verifyAudit() }
        #expect(message.contains(expected), "\(message)")
    }

    @Test func aRewrittenChainUnderASignedHeadIsDetected() throws {
        let f = try auditedRegistry()
        // Rewrite entry 3 (b1's roles) and recompute every hash after it, as a careful attacker would.
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try db.write { db in
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
        #expect(refusal { _ = try f.registry.verifyAudit() }.contains("entries up to 6 were rewritten under a signed head"))
    }
}
