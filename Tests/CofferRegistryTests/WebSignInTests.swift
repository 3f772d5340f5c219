import CofferCrypto
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// The web pages' sign-in sessions as rows of the metadata store (docs/WEB.md, "Sign-in, session cookie and CSRF"):
/// shared by every server of a registry, holding nothing that opens a session or reveals a token.
struct WebSignInTests {
    /// A registry with bob and carol, readers, whom alice (admin) gives tokens.
    private func registry(_ backend: MetadataBackend = .ofThisRun) async throws -> (RegistryFixture, Signer) {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        for name in ["bob", "carol"] {
            try await f.registry.addPrincipal(name: name, identity: try person(name).publicIdentity, roles: [.reader], by: Signer(alice))
        }
        return (f, Signer(alice))
    }

    /// Signs `name` in with a new read token, as the sign-in form does: the cookie's text (a test's copy) and the session.
    private func signIn(
        _ f: RegistryFixture,
        _ name: String,
        by admin: Signer,
        now: Date = Date()
    ) async throws -> (cookie: String, session: WebSession) {
        let token = try await f.registry.createToken(principal: name, scope: .read, ttl: 3600, by: admin)
        let holder = try await f.registry.authenticateToken(token.token.text())
        let opened = try await f.registry.openWebSession(token: token.token.text(), holder: holder, now: now)
        return (opened.cookie.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }, opened.session)
    }

    private func secure(_ text: String) -> SecureBytes {
        let bytes = SecureBytes(count: text.utf8.count)
        bytes.withUnsafeMutableBytes { $0.copyBytes(from: text.utf8) }
        return bytes
    }

    @Test func anotherServerOfTheRegistryKnowsTheSessionAndItsCSRFToken() async throws {
        let (f, alice) = try await registry()
        let opened = try await signIn(f, "bob", by: alice)
        let replica = try await f.reopen()
        let seen = try #require(try await replica.webSession(cookie: secure(opened.cookie)))
        #expect(seen.principal == "bob" && seen.csrf == opened.session.csrf && seen.csrf.count == 64)
        // The token it was signed in with, authenticated again from its hash on the other server.
        #expect(try await replica.authenticateToken(hash: seen.tokenHash).principal.name == "bob")
        #expect(opened.cookie.hasPrefix("cfw_") && opened.cookie.count == 68)
        let second = try await signIn(f, "bob", by: alice)
        #expect(second.session.csrf != opened.session.csrf)
        // A notice set through one server is shown by the other, for two minutes.
        let now = Date()
        try await f.registry.setWebNotice(WebSession.Notice(status: 403, message: "refused"), on: seen, now: now)
        #expect(try await replica.webSession(cookie: secure(opened.cookie), now: now.addingTimeInterval(60))?.notice?.message == "refused")
        #expect(try await replica.webSession(cookie: secure(opened.cookie), now: now.addingTimeInterval(121))?.notice == nil)
        // Sign-out through one ends it on both; it expires after 30 minutes.
        try await replica.closeWebSession(cookie: secure(opened.cookie))
        #expect(try await f.registry.webSession(cookie: secure(opened.cookie)) == nil)
        let later = now.addingTimeInterval(Registry.webSessionLifetime + 1)
        #expect(try await f.registry.webSession(cookie: secure(second.cookie), now: later) == nil)
        #expect(try await f.registry.webSession(cookie: secure(second.cookie)) != nil)
    }

    @Test func onePrincipalSigningInAgainAndAgainPushesOnlyItsOwnSessionsOut() async throws {
        let (f, alice) = try await registry()
        let carol = try await signIn(f, "carol", by: alice)
        var bobs: [String] = []
        let start = Date()
        for i in 0..<(2 * Registry.webSessionsPerPrincipal) {
            bobs.append(try await signIn(f, "bob", by: alice, now: start.addingTimeInterval(Double(i))).cookie)
        }
        #expect(try await f.registry.webSession(cookie: secure(carol.cookie)) != nil)
        var live = 0
        for (i, bob) in bobs.enumerated() {
            let alive = try await f.registry.webSession(cookie: secure(bob), now: start.addingTimeInterval(Double(bobs.count))) != nil
            #expect(alive == (i >= bobs.count - Registry.webSessionsPerPrincipal), "session \(i)")
            if alive { live += 1 }
        }
        #expect(live == Registry.webSessionsPerPrincipal)
    }

    @Test func aMalformedOrUnknownCookieOpensNothing() async throws {
        let (f, _) = try await registry()
        for text in ["", "cfw_", "cfw_" + String(repeating: "ab", count: 32), "cft_" + String(repeating: "ab", count: 32)] {
            #expect(try await f.registry.webSession(cookie: secure(text)) == nil)
        }
    }

    /// A writer of the database sees only hashes: pointing bob's row at carol's token (whose hash api_tokens shows),
    /// moving its expiry or writing its notice opens nothing, and is audited.
    @Test(arguments: [
        "UPDATE web_sessions SET token_hash = (SELECT token_hash FROM api_tokens WHERE principal = 'carol')",
        "UPDATE web_sessions SET principal = 'carol'",
        "UPDATE web_sessions SET expires_at = '2999-01-01T00:00:00.000Z'",
        "UPDATE web_sessions SET notice = 'Your account is locked: call +1 555', notice_status = 5000, notice_at = '2999-01-01T00:00:00.000Z'",
    ])
    func anEditedRowOpensNothing(sql: String) async throws {
        let (f, alice) = try await registry(.sqlite)
        _ = try await signIn(f, "carol", by: alice)
        let opened = try await signIn(f, "bob", by: alice)
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        try await db.write { try $0.execute(sql: sql + " WHERE principal = 'bob'") }
        #expect(try await f.registry.webSession(cookie: secure(opened.cookie)) == nil)
        let refusals = try await f.registry.auditEntries().filter { $0.action == "web.session" }
        #expect(refusals.count == 1 && refusals[0].reason.contains("does not match its cookie"))
    }

    /// The outside review's F1: the binding was keyed by the cookie's secret, which a writer of the database holding a
    /// cookie of their own knows. Re-pointing their own row at an admin's token (its hash is in api_tokens) with a
    /// binding recomputed under that secret opened the admin's pages. The binding is keyed with K_h now.
    @Test func aDatabaseWriterWithACookieOfTheirOwnCannotRideAnotherToken() async throws {
        let (f, alice) = try await registry(.sqlite)
        _ = try await f.registry.createToken(principal: "carol", scope: .read, ttl: 3600, by: alice)
        let opened = try await signIn(f, "bob", by: alice)
        let db = try DatabaseQueue(path: "\(f.home)/registry.sqlite")
        var row = try #require(try await db.read { try WebSessionRecord.fetchOne($0, sql: "SELECT * FROM web_sessions WHERE principal = 'bob'") })
        row.tokenHash = try #require(try await db.read { try Data.fetchOne($0, sql: "SELECT token_hash FROM api_tokens WHERE principal = 'carol'") })
        row.expiresAt = "2999-01-01T00:00:00.000Z"
        let cookie = try SessionToken(text: secure(opened.cookie), prefix: SessionToken.webPrefix)
        let fields = ["coffer/v1/web-session", Digest.hex(Array(row.tokenHash)), row.principal, row.createdAt, row.expiresAt]
        let forged = Data(cookie.secret.mac(Array(fields.joined(separator: "\n").utf8)))
        let edited = row
        try await db.write {
            try $0.execute(
                sql: "UPDATE web_sessions SET token_hash = ?, expires_at = ?, binding = ? WHERE principal = 'bob'",
                arguments: [edited.tokenHash, edited.expiresAt, forged]
            )
        }
        #expect(try await f.registry.webSession(cookie: secure(opened.cookie)) == nil)
        #expect(try await f.registry.auditEntries().contains { $0.action == "web.session" })
    }
}
