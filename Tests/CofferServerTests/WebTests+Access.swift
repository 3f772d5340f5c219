import CofferRegistry
import CofferTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import CofferServer

/// The pages that give and take access: sessions, tokens and grants.
extension WebTests {
    @Test func sessionsAreListedAndRevokedWithTheFormsToken() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let opened = try await client.execute(
                uri: "/v1/sessions",
                method: .post,
                headers: server.bearer(w.tokens["bob-infer"]!),
                body: ByteBuffer(string: #"{"ref": "m/risk@prod", "ttl_seconds": 600, "max_uses": 4}"#)
            )
            #expect(opened.status == .created)
            let id = try #require((try JSONSerialization.jsonObject(with: Data(opened.body.readableBytesView)) as? [String: Any])?["id"] as? String)
            let bob = try await signIn(client, token: w.tokens["bob-infer"]!)
            let list = Self.text(try await client.execute(uri: "/sessions", method: .get, headers: bob.headers))
            #expect(list.contains("<code>\(id)</code>") && list.contains(#"<td class="status">open</td>"#) && list.contains("0 of 4"))
            #expect(list.contains(#"aria-label="Revoke session \#(id)""#))
            // A read token sees the session but may not revoke it: no button, and the post is the API's 403.
            let reader = try await signIn(client, token: w.tokens["bob-read"]!)
            #expect(!Self.text(try await client.execute(uri: "/sessions", method: .get, headers: reader.headers)).contains("Revoke session"))
            var (headers, body) = Self.form([("csrf", reader.csrf), ("id", id)])
            headers[.cookie] = reader.headers[.cookie]
            let byReader = try await client.execute(uri: "/sessions/revoke", method: .post, headers: headers, body: body)
            #expect(try await Self.notice(after: byReader, client, reader).status == .forbidden)
            // Without the form's token: refused, the session still open.
            (headers, body) = Self.form([("id", id)])
            headers[.cookie] = bob.headers[.cookie]
            let noToken = try await client.execute(uri: "/sessions/revoke", method: .post, headers: headers, body: body)
            #expect(try await Self.notice(after: noToken, client, bob).status == .forbidden)
            #expect(try await w.fixture.registry.sessions().first { $0.id == id }?.revokedAt == nil)
            (headers, body) = Self.form([("csrf", bob.csrf), ("id", id)])
            headers[.cookie] = bob.headers[.cookie]
            let revoked = try await client.execute(uri: "/sessions/revoke", method: .post, headers: headers, body: body)
            #expect(revoked.status == .seeOther && revoked.headers[.location] == "/sessions")
            #expect(try await w.fixture.registry.sessions().first { $0.id == id }?.revokedAt != nil)
            let after = Self.text(try await client.execute(uri: "/sessions", method: .get, headers: bob.headers))
            #expect(after.contains(#"<td class="status">revoked at "#) && !after.contains("Revoke session"))
            // The admin sees every principal's sessions; carol (not bob) sees none of bob's.
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            #expect(Self.text(try await client.execute(uri: "/sessions", method: .get, headers: alice.headers)).contains("<code>\(id)</code>"))
            let carol = try await signIn(client, token: w.tokens["carol-read"]!)
            #expect(!Self.text(try await client.execute(uri: "/sessions", method: .get, headers: carol.headers)).contains(id))
        }
    }

    @Test func theTokenListIsForAdminsAndShowsNoToken() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            #expect(try await client.execute(uri: "/tokens", method: .get, headers: bob.headers).status == .forbidden)
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let page = try await client.execute(uri: "/tokens", method: .get, headers: alice.headers)
            #expect(page.status == .ok)
            let html = Self.text(page)
            let tokens = try await w.fixture.registry.tokens()
            #expect(tokens.count == w.tokens.count)
            for info in tokens { #expect(html.contains("<code>\(info.id)</code>")) }
            #expect(html.contains(#"<td class="status">revoked at "#) && html.contains(#"<td class="status">expired</td>"#))
            #expect(!html.contains("cft_") && html.contains(#"action="/tokens""#))
            for token in w.tokens.values { #expect(!html.contains(token)) }
            // A revoke button for each live token only.
            let now = Date()
            let live = tokens.filter { $0.revokedAt == nil && ISO8601DateFormatter.fractional.date(from: $0.expiresAt)! > now }
            #expect(html.components(separatedBy: "aria-label=\"Revoke token ").count - 1 == live.count)
        }
    }

    /// The token and grant forms file change requests; an admin's own key approves them (docs/FORMAT.md, "Change
    /// requests"). The token is shown once, opens nothing before approval and exactly what was asked after.
    @Test func tokensAndGrantsAreAskedForOnThePagesAndApprovedWithAnAdminsKey() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            func post(_ browser: Browser, _ path: String, _ fields: [(String, String)]) async throws -> TestResponse {
                var (headers, body) = Self.form([("csrf", browser.csrf)] + fields)
                headers[.cookie] = browser.headers[.cookie]
                return try await client.execute(uri: path, method: .post, headers: headers, body: body)
            }
            // Readers get the 403 page, for the forms and the pages alike.
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            #expect(try await client.execute(uri: "/principals", method: .get, headers: bob.headers).status == .forbidden)
            let byReader = try await post(bob, "/tokens", [("principal", "bob"), ("scope", "read"), ("ttl", "1d")])
            #expect(try await Self.notice(after: byReader, client, bob).status == .forbidden)

            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let asked = try await post(alice, "/tokens", [("principal", "carol"), ("scope", "read"), ("ttl", "2h")])
            #expect(asked.status == .ok)
            let html = Self.text(asked)
            let token = try #require(html.firstRange(of: /cft_[0-9a-f]{64}/).map { String(html[$0]) })
            let text = try #require(html.firstRange(of: /cfr1\.[A-Za-z0-9_-]+/).map { String(html[$0]) })
            #expect(html.contains("a read token") && html.contains("for carol"))
            #expect(asked.headers[.cacheControl] == "no-store")
            func status() async throws -> HTTPResponse.Status {
                try await client.execute(uri: "/v1/sessions", method: .get, headers: server.bearer(token)).status
            }
            #expect(try await status() == .unauthorized)
            let before = Set(try await w.fixture.registry.tokens().map(\.id))
            try await w.fixture.registry.approve(try ChangeRequest(text: text), by: Signer(w.fixture.publisher))
            #expect(try await status() == .ok)
            let minted = try #require(try await w.fixture.registry.tokens().first { !before.contains($0.id) })
            #expect(minted.scope == .read)
            // The list then shows it, and never the token again.
            let list = Self.text(try await client.execute(uri: "/tokens", method: .get, headers: alice.headers))
            #expect(list.contains("<code>\(minted.id)</code>") && !list.contains(token))

            // Revoking is done at once, by the server's key for the admin.
            let revoked = try await post(alice, "/tokens/revoke", [("id", minted.id)])
            #expect(revoked.status == .seeOther && revoked.headers[.location] == "/tokens")
            #expect(try await status() == .unauthorized)

            // A grant asked for on the principals page, then its revocation.
            let principals = Self.text(try await client.execute(uri: "/principals", method: .get, headers: alice.headers))
            #expect(principals.contains("reader on other/") && principals.contains(#"action="/grants""#))
            let grant = Self.text(
                try await post(alice, "/grants", [("principal", "carol"), ("role", "inference"), ("scope", "m/"), ("max_predictions", "50")])
            )
            let grantText = try #require(grant.firstRange(of: /cfr1\.[A-Za-z0-9_-]+/).map { String(grant[$0]) })
            #expect(!grant.contains("cft_") && grant.contains("grant carol inference on m/ (at most 50 predictions)"))
            #expect(try await w.fixture.registry.grants(of: "carol").count == 1)
            try await w.fixture.registry.approve(try ChangeRequest(text: grantText), by: Signer(w.fixture.publisher))
            #expect(try await w.fixture.registry.grants(of: "carol").contains { $0.role == .inference && $0.maxPredictions == 50 })
            let revoke = Self.text(
                try await post(alice, "/grants/revoke", [("principal", "carol"), ("role", "inference"), ("scope", "m/"), ("alias", "")])
            )
            #expect(revoke.contains("inference on m/ (at most 50 predictions)") && revoke.contains("revoke carol"))
            // Bad input: one line on the notice page, nothing filed.
            let bad = try await post(alice, "/grants", [("principal", "carol"), ("role", "superuser")])
            #expect(Self.text(try await Self.notice(after: bad, client, alice)).contains("unknown role"))
            let noTTL = try await post(alice, "/tokens", [("principal", "carol"), ("scope", "read"), ("ttl", "soon")])
            let notice = try await Self.notice(after: noTTL, client, alice)
            #expect(notice.status == .badRequest && Self.text(notice).contains("invalid duration"))
        }
    }
}
