import CofferCrypto
import CofferRegistry
import CofferTestSupport
import CofferTraining
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import CofferServer

/// The web pages through Hummingbird's router test client, on the world of ``ServerTests``: alice (admin), bob (reader,
/// publisher and inference on m/), carol (reader on other/ only), and m/risk:1 pushed by alice with alias prod.
struct WebTests {
    let server = ServerTests()

    /// A signed-in browser: its session cookie and the CSRF token the pages put in their forms.
    struct Browser {
        var cookie: String
        var csrf: String
        var headers: HTTPFields { [.cookie: "\(WebSessionAuthenticator.cookieName)=\(cookie)"] }
    }

    static func text(_ response: TestResponse) -> String { String(buffer: response.body) }

    /// The value of cookie `name` set by `response`, and the whole `Set-Cookie` line.
    static func setCookie(_ name: String, in response: TestResponse) -> (value: String, line: String)? {
        for line in response.headers[values: .setCookie] where line.hasPrefix("\(name)=") {
            let value = line.dropFirst(name.count + 1).prefix { $0 != ";" }
            return (String(value), line)
        }
        return nil
    }

    /// The value of the hidden `csrf` field in a page.
    static func csrfField(_ page: String) -> String? {
        guard let range = page.range(of: #"name="csrf" value=""#) else { return nil }
        return String(page[range.upperBound...].prefix { $0 != "\"" })
    }

    /// The page a refused form's `303 See Other` leads to (`GET /notice`), after checking that the post was answered so.
    static func notice(after response: TestResponse, _ client: some TestClientProtocol, _ browser: Browser) async throws -> TestResponse {
        #expect(response.status == .seeOther && response.headers[.location] == "/notice", "a refused form is a 303 to /notice")
        return try await client.execute(uri: "/notice", method: .get, headers: browser.headers)
    }

    static func form(_ fields: [(String, String)]) -> (HTTPFields, ByteBuffer) {
        let body = fields.map { "\($0.0)=\(WebForm.percentEncoded($0.1))" }.joined(separator: "&")
        return ([.contentType: "application/x-www-form-urlencoded"], ByteBuffer(string: body))
    }

    /// Signs in with `token` as a browser would: the form (and its sign-in cookie), then the post.
    func signIn(_ client: some TestClientProtocol, token: String) async throws -> Browser {
        let form = try await client.execute(uri: "/signin", method: .get)
        let signin = try #require(Self.setCookie(WebController.signInCookieName, in: form))
        let csrf = try #require(Self.csrfField(Self.text(form)))
        var (headers, body) = Self.form([("csrf", csrf), ("token", token), ("next", "/models")])
        headers[.cookie] = "\(WebController.signInCookieName)=\(signin.value)"
        let posted = try await client.execute(uri: "/signin", method: .post, headers: headers, body: body)
        #expect(posted.status == .seeOther && posted.headers[.location] == "/models")
        let session = try #require(Self.setCookie(WebSessionAuthenticator.cookieName, in: posted))
        let page = try await client.execute(
            uri: "/models",
            method: .get,
            headers: [.cookie: "\(WebSessionAuthenticator.cookieName)=\(session.value)"]
        )
        #expect(page.status == .ok)
        return Browser(cookie: session.value, csrf: try #require(Self.csrfField(Self.text(page))))
    }

    @Test func aSignedOutUserIsSentToSignIn() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            for uri in ["/models", "/model?name=m/risk", "/version?ref=m/risk:1"] {
                let response = try await client.execute(uri: uri, method: .get)
                #expect(response.status == .seeOther)
                #expect(response.headers[.location] == "/signin?next=" + WebForm.percentEncoded(uri))
            }
            // A cookie naming no session is no better than none.
            let forged = try await client.execute(
                uri: "/models",
                method: .get,
                headers: [.cookie: "\(WebSessionAuthenticator.cookieName)=" + String(repeating: "ab", count: 32)]
            )
            #expect(forged.status == .seeOther)
            let root = try await client.execute(uri: "/", method: .get)
            #expect(root.status == .seeOther && root.headers[.location] == "/models")
            // After signing in, the next page asked for is only ever a path of this server.
            #expect(WebController.localPath("//evil.example/x") == "/models")
            #expect(WebController.localPath("https://evil.example") == "/models")
            for sneaky in ["/\t/evil.example", "/\n/evil.example", "/ /evil.example", "/\\evil.example", "/\u{7F}/evil.example", "/caf\u{E9}"] {
                #expect(WebController.localPath(sneaky) == "/models", "\(sneaky.debugDescription)")
            }
            #expect(WebController.localPath("/version?ref=m/risk:1") == "/version?ref=m/risk:1")
        }
    }

    @Test func signInGivesAStrictShortLivedCookieAndSafeHeaders() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let form = try await client.execute(uri: "/signin", method: .get)
            let signin = try #require(Self.setCookie(WebController.signInCookieName, in: form))
            let csrf = try #require(Self.csrfField(Self.text(form)))
            var (headers, body) = Self.form([("csrf", csrf), ("token", w.tokens["bob-read"]!), ("next", "/model?name=m/risk")])
            headers[.cookie] = "\(WebController.signInCookieName)=\(signin.value)"
            let posted = try await client.execute(uri: "/signin", method: .post, headers: headers, body: body)
            #expect(posted.status == .seeOther && posted.headers[.location] == "/model?name=m/risk")
            let session = try #require(Self.setCookie(WebSessionAuthenticator.cookieName, in: posted))
            #expect(session.value.hasPrefix("cfw_") && session.value.count == 68 && session.value.dropFirst(4).allSatisfy(\.isHexDigit))
            for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=1800"] {
                #expect(session.line.contains(flag), "\(session.line) lacks \(flag)")
            }
            let page = try await client.execute(
                uri: "/model?name=m/risk",
                method: .get,
                headers: [.cookie: "\(WebSessionAuthenticator.cookieName)=\(session.value)"]
            )
            #expect(page.status == .ok)
            #expect(page.headers[.contentSecurityPolicy]?.contains("default-src 'self'") == true)
            #expect(page.headers[.contentSecurityPolicy]?.contains("frame-ancestors 'none'") == true)
            #expect(page.headers[.contentSecurityPolicy]?.contains("script-src 'none'") == true)
            #expect(page.headers[.xContentTypeOptions] == "nosniff")
            #expect(page.headers[HTTPField.Name("Referrer-Policy")!] == "same-origin")
            #expect(page.headers[.cacheControl] == "no-store")
            let html = Self.text(page)
            #expect(html.contains(#"<html lang="en">"#) && html.contains(#"name="viewport""#))
            #expect(html.contains("Signed in as bob") && html.contains(">1</a>") && html.contains("prod"))
            #expect(!html.contains(w.tokens["bob-read"]!))

            // Signing in again from the same browser ends the earlier session.
            let again = try await client.execute(uri: "/signin", method: .get)
            let cookie = try #require(Self.setCookie(WebController.signInCookieName, in: again))
            var (headers2, body2) = Self.form([("csrf", try #require(Self.csrfField(Self.text(again)))), ("token", w.tokens["bob-read"]!)])
            headers2[.cookie] = "\(WebController.signInCookieName)=\(cookie.value); \(WebSessionAuthenticator.cookieName)=\(session.value)"
            let second = try await client.execute(uri: "/signin", method: .post, headers: headers2, body: body2)
            let renewed = try #require(Self.setCookie(WebSessionAuthenticator.cookieName, in: second))
            #expect(renewed.value != session.value)
            #expect(
                try await client.execute(uri: "/models", method: .get, headers: [.cookie: "\(WebSessionAuthenticator.cookieName)=\(session.value)"])
                    .status == .seeOther
            )
            #expect(
                try await client.execute(uri: "/models", method: .get, headers: [.cookie: "\(WebSessionAuthenticator.cookieName)=\(renewed.value)"])
                    .status == .ok
            )
        }
    }

    @Test func aRefusedTokenGetsNoSession() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            for (token, message) in [
                ("cft_nothex", "malformed bearer token"), (w.tokens["revoked"]!, "was revoked at"), (w.tokens["expired"]!, "expired at"),
            ] {
                let form = try await client.execute(uri: "/signin", method: .get)
                let signin = try #require(Self.setCookie(WebController.signInCookieName, in: form))
                var (headers, body) = Self.form([("csrf", try #require(Self.csrfField(Self.text(form)))), ("token", token)])
                headers[.cookie] = "\(WebController.signInCookieName)=\(signin.value)"
                let posted = try await client.execute(uri: "/signin", method: .post, headers: headers, body: body)
                #expect(posted.status == .unauthorized)
                #expect(Self.text(posted).contains(message))
                // The form is never filled back in with the token.
                #expect(!Self.text(posted).contains("value=\"\(token)"))
                #expect(Self.setCookie(WebSessionAuthenticator.cookieName, in: posted) == nil)
            }
        }
    }

    @Test func aFormWithoutItsCSRFTokenIsRefused() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            // Sign-in: no sign-in cookie, or a field that differs from it.
            let (formHeaders, body) = Self.form([("csrf", "00"), ("token", w.tokens["bob-read"]!)])
            let noCookie = try await client.execute(uri: "/signin", method: .post, headers: formHeaders, body: body)
            #expect(noCookie.status == .forbidden && Self.setCookie(WebSessionAuthenticator.cookieName, in: noCookie) == nil)
            var wrong = formHeaders
            wrong[.cookie] = "\(WebController.signInCookieName)=11"
            let mismatch = try await client.execute(uri: "/signin", method: .post, headers: wrong, body: body)
            #expect(mismatch.status == .forbidden && Self.setCookie(WebSessionAuthenticator.cookieName, in: mismatch) == nil)

            let browser = try await signIn(client, token: w.tokens["bob-read"]!)
            for fields in [[(String, String)](), [("csrf", String(repeating: "0", count: 64))], [("csrf", "")]] {
                var (headers, body) = Self.form(fields)
                headers[.cookie] = browser.headers[.cookie]
                let posted = try await client.execute(uri: "/signout", method: .post, headers: headers, body: body)
                let response = try await Self.notice(after: posted, client, browser)
                #expect(response.status == .forbidden)
                #expect(Self.text(response).contains("CSRF token is missing or wrong"))
            }
            // Still signed in: the refused posts did nothing.
            #expect(try await client.execute(uri: "/models", method: .get, headers: browser.headers).status == .ok)
            var (headers, signOut) = Self.form([("csrf", browser.csrf)])
            headers[.cookie] = browser.headers[.cookie]
            let out = try await client.execute(uri: "/signout", method: .post, headers: headers, body: signOut)
            #expect(out.status == .seeOther && out.headers[.location] == "/signin")
            #expect(Self.setCookie(WebSessionAuthenticator.cookieName, in: out)?.line.contains("Max-Age=0") == true)
            #expect(try await client.execute(uri: "/models", method: .get, headers: browser.headers).status == .seeOther)
        }
    }

    @Test func pagesRefuseWhatTheAPIRefuses() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            // carol reads other/ only: m/risk is not listed, and asking for it is the API's 403, as a page.
            let carol = try await signIn(client, token: w.tokens["carol-read"]!)
            let models = Self.text(try await client.execute(uri: "/models", method: .get, headers: carol.headers))
            #expect(!models.contains("m/risk") && models.contains("No model matches"))
            func refusals() async throws -> Int {
                let metrics = Self.text(try await client.execute(uri: "/metrics", method: .get))
                let line = metrics.split(separator: "\n").first { $0.hasPrefix("coffer_refusals_total ") }
                return Int(line?.split(separator: " ").last ?? "") ?? -1
            }
            let before = try await refusals()
            for uri in ["/version?ref=m/risk:1", "/model?name=m/risk"] {
                let page = try await client.execute(uri: uri, method: .get, headers: carol.headers)
                #expect(page.status == .forbidden)
                let html = Self.text(page)
                #expect(html.contains("<h1>403 Forbidden</h1>") && html.contains("carol lacks the reader role on m/risk"))
                #expect(page.headers[.contentType] == "text/html; charset=utf-8")
            }
            #expect(try await refusals() == before + 2, "each refusal counted in the metrics, as the API's are")
            // A token revoked after sign-in ends the session at its next request.
            let admin = Signer(w.fixture.publisher)
            let created = try await w.fixture.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: admin)
            let bob = try await signIn(client, token: created.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) })
            #expect(try await client.execute(uri: "/models", method: .get, headers: bob.headers).status == .ok)
            try await w.fixture.registry.revokeToken(id: created.info.id, by: admin)
            let after = try await client.execute(uri: "/models", method: .get, headers: bob.headers)
            #expect(after.status == .seeOther && after.headers[.location]?.hasPrefix("/signin") == true)
        }
    }

    @Test func theVersionPageShowsTheProofsAndATamperedBlob() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let page = try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers)
            #expect(page.status == .ok)
            let html = Self.text(page)
            #expect(html.contains(#"<span class="badge ok" id="status">verified</span> signed by alice"#))
            for label in ["Mechanism", "Accountant", "Noise multiplier", "Sampling rate", "Steps", "Clip norm", "Epsilon", "Delta", "Pruning ratio"] {
                #expect(html.contains("<dt>\(label)</dt>"), "no \(label)")
            }
            let summary = try await w.fixture.registry.show(try ModelReference(parsing: "m/risk:1"))
            let file = try #require(summary.files.first)
            #expect(html.contains(file.path) && html.contains(file.sealedSHA256) && html.contains("<td>\(file.size)</td>"))
            // The numbers shown are the signed ones (this fixture's checkpoint carries no privacy.json: "not stated";
            // tools/interop/test_web.py shows a trained one's).
            let privacy = summary.privacy
            for (label, value) in [("Epsilon", privacy.epsilon), ("Delta", privacy.delta), ("Noise multiplier", privacy.noiseMultiplier)] {
                #expect(html.contains("<dt>\(label)</dt><dd>\(WebController.number(value))</dd>"), "\(label)")
            }

            // Viewing checks the signature now, but reads no blob and appends no audit entry; the last blob check is shown.
            #expect(html.contains(#"<span class="badge ok" id="signature-status">verified now</span>"#))
            #expect(html.contains(#"<span id="blob-status">not checked since this server started</span>"#))
            let entries = try await w.fixture.registry.auditEntries().count
            _ = try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers)
            #expect(try await w.fixture.registry.auditEntries().count == entries, "a view appends no audit entry")

            // "Check now" reads every blob, audits the check under the principal's name, and goes back to the page.
            func checkNow() async throws -> TestResponse {
                let (headers, body) = Self.form([("csrf", bob.csrf), ("ref", "m/risk:1")])
                var all = headers
                all.append(contentsOf: bob.headers)
                return try await client.execute(uri: "/version/check", method: .post, headers: all, body: body)
            }
            let checked = try await checkNow()
            #expect(checked.status == .seeOther && checked.headers[.location] == "/version?ref=m%2Frisk%3A1")
            let after = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers))
            #expect(after.contains(#"<span class="badge ok" id="blob-status">matched</span> at the last check, at "#) && after.contains(" by bob"))
            let audited = try #require(try await w.fixture.registry.auditEntries().last)
            #expect(audited.action == "verify" && audited.principal == "bob" && audited.target == "m/risk:1" && audited.outcome == .ok)

            // One byte of the sealed blob changed on disk: the next check says so, with the verifier's message.
            let blob = TestBackends.blobFile(file.sealedSHA256, home: w.fixture.home)
            var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
            bytes[bytes.count / 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: blob))
            #expect(try await checkNow().status == .seeOther)
            let tampered = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers))
            #expect(tampered.contains(#"<span class="badge bad" id="status">not verified</span>"#))
            #expect(tampered.contains(#"<span class="badge bad" id="blob-status">mismatch</span>"#))
            #expect(tampered.contains("blob of \(file.path) does not match its signed SHA-256"))

            // Checks are limited per principal: past the burst, a 429 page saying when to try again. (The fourth check
            // within 20 s is the one; a loaded machine can take longer over these checks and earn one more, which
            // VersionChecksTests counts exactly.)
            var limited = try await checkNow()
            for _ in 0..<3 where limited.status == .seeOther { limited = try await checkNow() }
            #expect(limited.status == .tooManyRequests && limited.headers[.retryAfter] != nil)
            #expect(Self.text(limited).contains("bob checked versions 3 times recently: check again in "))
            // GET /v1/verify hashes every blob too and draws on the same bucket.
            let api = try await client.execute(uri: "/v1/verify?ref=m/risk:1", method: .get, headers: server.bearer(w.tokens["bob-read"]!))
            #expect(api.status == .tooManyRequests && api.headers[.retryAfter] != nil, "\(api.status)")
            #expect(Self.text(api).contains("bob checked versions 3 times recently: check again in "), "\(Self.text(api))")
            // Another principal's checks are their own; a form without the CSRF token is refused.
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            var (headers, body) = Self.form([("csrf", alice.csrf), ("ref", "m/risk:1")])
            headers.append(contentsOf: alice.headers)
            #expect(try await client.execute(uri: "/version/check", method: .post, headers: headers, body: body).status == .seeOther)
            // bob sees that someone checked since, not who: that is the audit log's, for admins.
            let bobSees = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers))
            #expect(bobSees.contains(" by another principal") && !bobSees.contains(" by alice"), "\(bobSees)")
            let aliceSees = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: alice.headers))
            #expect(aliceSees.contains(" by alice"))
            (headers, body) = Self.form([("ref", "m/risk:1")])
            headers.append(contentsOf: alice.headers)
            let unsigned = try await client.execute(uri: "/version/check", method: .post, headers: headers, body: body)
            #expect(try await Self.notice(after: unsigned, client, alice).status == .forbidden)
        }
    }

    @Test func theModelPageIsPagedByKeyset() async throws {
        let w = try await server.world()
        for _ in 1...2 {
            _ = try await w.fixture.registry.push(
                PushRequest(model: "m/risk", paths: [try await w.fixture.checkpoint()]),
                publisher: w.fixture.publisher
            )
        }
        try await server.app(w).test(.router) { client in
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let first = Self.text(try await client.execute(uri: "/model?name=m/risk", method: .get, headers: bob.headers))
            for version in 1...3 { #expect(first.contains(#"risk%3A\#(version)">\#(version)</a></td>"#)) }
            #expect(!first.contains("Older versions") && !first.contains(">Newest</a>"), "one page holds 3 versions")
            let older = Self.text(try await client.execute(uri: "/model?name=m/risk&before=2", method: .get, headers: bob.headers))
            #expect(older.contains(#"risk%3A1">1</a></td>"#) && !older.contains(#"risk%3A2">2</a></td>"#) && !older.contains(#">3</a></td>"#))
            #expect(older.contains(#"<a href="/model?name=m%2Frisk">Newest</a>"#))
            let unknown = try await client.execute(uri: "/model?name=m/risk&before=9", method: .get, headers: bob.headers)
            #expect(unknown.status == .notFound && Self.text(unknown).contains("m/risk:9"))
        }
    }

    @Test func hostileTextIsEscapedEverywhere() async throws {
        let w = try await server.world()
        let hostile = #"<script>alert("x")</script>'"><img src=x onerror=alert(1)>"#
        try await w.fixture.registry.tag(try ModelReference(parsing: "m/risk:1"), set: ["note": hostile])
        try await server.app(w).test(.router) { client in
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let page = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers))
            #expect(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"))
            #expect(!page.contains("<script") && !page.contains("<img"))
            // HTML escaping leaves text that reads as another: a bidirectional override shows `devorppa` as `approved`.
            try await w.fixture.registry.tag(try ModelReference(parsing: "m/risk:1"), set: ["state": "\u{202E}devorppa\u{200B}\u{1B}[8m"])
            let spoofed = Self.text(try await client.execute(uri: "/version?ref=m/risk:1", method: .get, headers: bob.headers))
            #expect(spoofed.contains(#"\u202edevorppa\u200b\u001b[8m"#), "\(spoofed)")
            #expect(!spoofed.unicodeScalars.contains { [0x1B, 0x202E, 0x200B].contains($0.value) })
            // A search for it is echoed back escaped too.
            let search = try await client.execute(uri: "/models?q=" + WebForm.percentEncoded(hostile), method: .get, headers: bob.headers)
            #expect(!Self.text(search).contains("<script") && Self.text(search).contains("&lt;script&gt;"))
            // A quote with a combining mark after it (one Swift Character, not a quote) is escaped all the same: it must
            // not close the search field's value="…".
            let combined = "\"\u{301} autofocus x=\"y"
            let field = Self.text(try await client.execute(uri: "/models?q=" + WebForm.percentEncoded(combined), method: .get, headers: bob.headers))
            #expect(field.contains("&quot;\u{301} autofocus x=&quot;y") && !field.contains(" autofocus x=\""), "\(field)")
            // And an unparseable reference is a 400 page whose message is escaped.
            let bad = try await client.execute(uri: "/version?ref=" + WebForm.percentEncoded("<b>x"), method: .get, headers: bob.headers)
            #expect(bad.status == .badRequest && !Self.text(bad).contains("<b>x"))
        }
    }

    @Test func theBudgetPageDrawsTheComposedEpsilonOnTheServer() async throws {
        let w = try await server.world()
        let registry = w.fixture.registry
        try await registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, by: Signer(w.fixture.publisher))
        let histories = [
            [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)],
            [PrivacySegment(sampleRate: 0.02, noiseMultiplier: 0.9, steps: 300)],
        ]
        for segments in histories {
            var request = PushRequest(model: "m/risk", paths: [w.fixture.path("ckpt")])
            request.datasetID = "census"
            request.privacy.mechanism = "dp-sgd"
            request.privacy.delta = 1e-5
            request.privacy.segments = segments
            request.privacy.standardisation = "public"
            request.privacy.batchSampling = "secret"
            _ = try await registry.push(request, publisher: w.fixture.publisher)
        }
        // The plotted points are the compositions of the first k histories, the last being what the budget spent.
        let history = try await registry.budgetHistory(dataset: "census")
        var reference = RDPAccountant()
        reference.compose(histories[0][0])
        let first = reference.epsilon(delta: 1e-5).epsilon
        let status = try await registry.budget(dataset: "census")
        #expect(history.count == 2 && abs(history[0] - first) < 1e-9 && abs(history[1] - status.spent) < 1e-9)
        #expect(history[1] < status.versions.map(\.epsilon).reduce(0, +))
        try await server.app(w).test(.router) { client in
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let list = Self.text(try await client.execute(uri: "/budgets", method: .get, headers: bob.headers))
            #expect(
                list.contains(#"<a href="/budget?dataset=census">census</a>"#) && list.contains("<td>\(WebController.epsilon(status.spent))</td>")
            )
            let page = try await client.execute(uri: "/budget?dataset=census", method: .get, headers: bob.headers)
            #expect(page.status == .ok)
            let html = Self.text(page)
            #expect(html.contains(#"<strong id="spent">\#(WebController.epsilon(status.spent))</strong> of epsilon 5 spent"#))
            #expect(html.contains(#"<svg class="plot""#) && html.components(separatedBy: "<circle ").count == 3)
            let plot = BudgetPlot(total: 5, history: history)
            let points = plot.values["points"] as? String ?? "-"
            #expect(points.split(separator: " ").count == 3 && html.contains(#"points="\#(points)""#))
            // Higher epsilon is drawn higher: SVG's y grows downwards.
            #expect(plot.y(history[1]) < plot.y(history[0]) && plot.y(history[0]) < plot.y(0))
            #expect(html.contains("<td>m/risk:2</td>") == false && html.contains(">m/risk:2</a>") && html.contains(">m/risk:3</a>"))
            let unknown = try await client.execute(uri: "/budget?dataset=nothing", method: .get, headers: bob.headers)
            #expect(unknown.status == .notFound)
        }
    }

    @Test func anAliasIsSetFromTheModelPageAndAPolicyRefusalNamesItsRule() async throws {
        let w = try await server.world()
        _ = try await w.fixture.registry.setPolicy(
            model: "m/risk",
            alias: "strict",
            rules: PolicyRules(maxEpsilon: 1),
            by: Signer(w.fixture.publisher)
        )
        try await server.app(w).test(.router) { client in
            // A read token: no form, and a post is the API's 403 (the scope does not allow publishing).
            let reader = try await signIn(client, token: w.tokens["bob-read"]!)
            let readPage = Self.text(try await client.execute(uri: "/model?name=m/risk", method: .get, headers: reader.headers))
            #expect(!readPage.contains(#"action="/alias""#) && readPage.contains("alias strict: epsilon at most 1.0"))
            func post(_ browser: Browser, _ fields: [(String, String)]) async throws -> TestResponse {
                var (headers, body) = Self.form(fields)
                headers[.cookie] = browser.headers[.cookie]
                return try await client.execute(uri: "/alias", method: .post, headers: headers, body: body)
            }
            let byReader = try await post(reader, [("csrf", reader.csrf), ("model", "m/risk"), ("alias", "staging"), ("version", "1")])
            #expect(try await Self.notice(after: byReader, client, reader).status == .forbidden)

            let bob = try await signIn(client, token: w.tokens["bob-publish"]!)
            #expect(Self.text(try await client.execute(uri: "/model?name=m/risk", method: .get, headers: bob.headers)).contains(#"action="/alias""#))
            let noToken = try await post(bob, [("model", "m/risk"), ("alias", "staging"), ("version", "1")])
            #expect(try await Self.notice(after: noToken, client, bob).status == .forbidden)
            let set = try await post(bob, [("csrf", bob.csrf), ("model", "m/risk"), ("alias", "staging"), ("version", "1")])
            #expect(set.status == .seeOther && set.headers[.location] == "/model?name=m%2Frisk")
            #expect(try await w.fixture.registry.show(try ModelReference(parsing: "m/risk@staging")).version == "1")
            #expect(Self.text(try await client.execute(uri: "/model?name=m/risk", method: .get, headers: bob.headers)).contains("prod, staging"))
            // The policy: version 1 states no epsilon, so strict may not name it; the page says which rule failed.
            let refused = try await Self.notice(
                after: try await post(bob, [("csrf", bob.csrf), ("model", "m/risk"), ("alias", "strict"), ("version", "1")]),
                client,
                bob
            )
            #expect(refused.status == .forbidden)
            #expect(Self.text(refused).contains("policy refused: alias strict of m/risk requires epsilon &lt;= 1.0; the version states no epsilon"))
            await #expect(throws: CofferRegistryError.self) { _ = try await w.fixture.registry.show(try ModelReference(parsing: "m/risk@strict")) }
        }
    }

    @Test func theLineageGraphShowsOnlyWhatThePrincipalMayRead() async throws {
        let w = try await server.world()
        let registry = w.fixture.registry
        var base = PushRequest(model: "other/base", paths: [w.fixture.path("ckpt")])
        base.datasetID = "raw-data"
        _ = try await registry.push(base, publisher: w.fixture.publisher)
        var child = PushRequest(model: "m/risk", paths: [w.fixture.path("ckpt")])
        child.parent = try ModelReference(parsing: "other/base:1")
        child.datasetID = "census"
        child.trainingConfigDigest = String(repeating: "ab", count: 32)
        _ = try await registry.push(child, publisher: w.fixture.publisher)
        try await server.app(w).test(.router) { client in
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let full = Self.text(try await client.execute(uri: "/version?ref=m/risk:2", method: .get, headers: alice.headers))
            #expect(full.contains("Lineage, oldest first: other/base:1, then m/risk:2"))
            for label in [
                ">other/base:1</text>", ">m/risk:2</text>", ">dataset raw-data</text>", ">dataset census</text>", ">config abababababab</text>",
            ] {
                #expect(full.contains(label), "\(label)")
            }
            #expect(full.components(separatedBy: #"<line class="edge""#).count - 1 == 4, "parent, two datasets and a configuration")
            #expect(full.contains(#"<figure class="figure lineage-figure columns-3">"#) && full.contains(#"viewBox="0 0 720.0 144.0""#))
            // bob reads m/ only: the parent in other/ is named (m/risk:2's signed statement names it, and
            // GET /v1/version shows it to him) but nothing of its own: not its dataset.
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let partial = Self.text(try await client.execute(uri: "/version?ref=m/risk:2", method: .get, headers: bob.headers))
            #expect(partial.contains("Lineage, oldest first: other/base:1, whose details you may not read, then m/risk:2"))
            #expect(partial.contains(">other/base:1 (no access)</text>") && !partial.contains("raw-data"))
        }
    }

    /// The graph is drawn at its natural size and a phone scrolls what does not fit (docs/WEB.md, "On a phone"), so a
    /// column no node fills is left out: a version with neither dataset nor configuration is one box wide.
    @Test(arguments: [(false, false, 1), (true, false, 2), (false, true, 2), (true, true, 3)])
    func theLineageGraphIsOnlyAsWideAsTheColumnsItFills(dataset: Bool, configuration: Bool, columns: Int) {
        let parent = LineageGraph.Node(model: "m/base", version: "1", dataset: nil, configuration: nil)
        let child = LineageGraph.Node(
            model: "m/risk",
            version: "2",
            dataset: dataset ? "census" : nil,
            configuration: configuration ? String(repeating: "ab", count: 32) : nil
        )
        let graph = LineageGraph(chain: [parent, child], hiddenParent: nil)
        #expect(graph.columnCount == columns)
        #expect(graph.width == [220.0, 470, 720][columns - 1])
        let values = graph.values
        #expect(values["columns"] as? Int == columns && values["width"] as? String == LineageGraph.format(graph.width))
        // Every box inside the graph, the versions' column first when no dataset is stated.
        let nodes = values["nodes"] as? [[String: Any]] ?? []
        let rights = nodes.compactMap { node in Double(node["x"] as? String ?? "").map { $0 + LineageGraph.boxWidth } }
        #expect(nodes.count == 2 + (dataset ? 1 : 0) + (configuration ? 1 : 0) && rights.count == nodes.count)
        #expect(rights.allSatisfy { $0 <= graph.width - LineageGraph.margin } && rights.max() == graph.width - LineageGraph.margin)
        let version = nodes.first { $0["kind"] as? String == "current" }?["x"] as? String
        #expect(version == (dataset ? "260.0" : "10.0"))
    }
}
