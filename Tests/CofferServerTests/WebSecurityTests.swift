import CofferCrypto
import CofferRegistry
import CofferTestSupport
import CofferTraining
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import CofferServer

/// The outside review's findings on the web pages (docs/WEB.md, "Fixed from the outside review"): `__Host-` cookies
/// and the origin of every form post, the sign-in rate limit, the budgets a
/// reader is shown, and refused forms answered with a redirect rather than a page to the POST.
struct WebSecurityTests {
    let server = ServerTests()
    let web = WebTests()

    /// The headers and body of a sign-in post with a fresh form's CSRF token and cookie, plus `extra` headers.
    func signInPost(_ client: some TestClientProtocol, token: String, extra: HTTPFields = [:]) async throws -> TestResponse {
        let form = try await client.execute(uri: "/signin", method: .get)
        let signin = try #require(WebTests.setCookie(WebController.signInCookieName, in: form))
        var (headers, body) = WebTests.form([("csrf", try #require(WebTests.csrfField(WebTests.text(form)))), ("token", token)])
        headers[.cookie] = "\(WebController.signInCookieName)=\(signin.value)"
        headers.append(contentsOf: extra)
        return try await client.execute(uri: "/signin", method: .post, headers: headers, body: body)
    }

    // MARK: - Cookies and where a form may come from

    @Test func bothCookiesAreHostPrefixedSecureAndSiteWide() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let form = try await client.execute(uri: "/signin", method: .get)
            let posted = try await signInPost(client, token: w.tokens["bob-read"]!)
            for (name, response) in [("__Host-coffer_signin", form), ("__Host-coffer_session", posted)] {
                let line = try #require(WebTests.setCookie(name, in: response)?.line, "\(name) is not set")
                let attributes = line.split(separator: ";").dropFirst().map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                #expect(attributes.contains("secure") && attributes.contains("path=/") && attributes.contains("httponly"), "\(line)")
                #expect(!attributes.contains { $0.hasPrefix("domain") }, "a __Host- cookie may not name a domain: \(line)")
            }
            // The old names are neither set nor read: a planted `coffer_session` cookie is no session.
            #expect(posted.headers[values: .setCookie].allSatisfy { $0.hasPrefix("__Host-") })
            let session = try #require(WebTests.setCookie(WebSessionAuthenticator.cookieName, in: posted))
            let planted = try await client.execute(uri: "/models", method: .get, headers: [.cookie: "coffer_session=\(session.value)"])
            #expect(planted.status == .seeOther)
        }
    }

    /// Posts from another site are refused before the form is read; same-origin ones, and ones from clients that send
    /// neither header, go on.
    @Test(arguments: [
        ([WebOrigin.secFetchSite: "cross-site"] as HTTPFields, "Sec-Fetch-Site: cross-site"),
        ([WebOrigin.secFetchSite: "same-site"] as HTTPFields, "Sec-Fetch-Site: same-site"),
        ([WebOrigin.secFetchSite: "none"] as HTTPFields, "Sec-Fetch-Site: none"),
        (
            [.origin: "http://evil.example", WebOrigin.host: "127.0.0.1:8080"] as HTTPFields,
            "posted from http://evil.example, not from this server (http://127.0.0.1:8080)"
        ),
        // Another port of the same host: cookies do not tell ports apart, origins do.
        ([.origin: "http://127.0.0.1:9090", WebOrigin.host: "127.0.0.1:8080"] as HTTPFields, "posted from http://127.0.0.1:9090"),
        // This server speaks plain HTTP: an https origin is not its own.
        ([.origin: "https://127.0.0.1:8080", WebOrigin.host: "127.0.0.1:8080"] as HTTPFields, "posted from https://127.0.0.1:8080"),
        ([.origin: "null", WebOrigin.host: "127.0.0.1:8080"] as HTTPFields, "posted from null"),
        // Without a Host field, the request's authority (the test client's: localhost).
        ([.origin: "http://127.0.0.1:8080"] as HTTPFields, "not from this server (http://localhost)"),
    ])
    func aPostFromAnotherSiteIsRefused(headers: HTTPFields, message: String) async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            func refusals() async throws -> Int {
                let metrics = WebTests.text(try await client.execute(uri: "/metrics", method: .get))
                return Int(metrics.split(separator: "\n").first { $0.hasPrefix("coffer_refusals_total ") }?.split(separator: " ").last ?? "") ?? -1
            }
            let before = try await refusals()
            // The sign-in form, with a valid token and its CSRF token: no session.
            let signIn = try await signInPost(client, token: w.tokens["bob-read"]!, extra: headers)
            #expect(signIn.status == .forbidden && WebTests.setCookie(WebSessionAuthenticator.cookieName, in: signIn) == nil)
            #expect(WebTests.text(signIn).contains(message), "\(WebTests.text(signIn))")
            #expect(WebTests.text(signIn).contains("<h1>403 Forbidden</h1>"))
            // A signed-in form with its CSRF token: nothing done.
            let bob = try await web.signIn(client, token: w.tokens["bob-read"]!)
            var (post, body) = WebTests.form([("csrf", bob.csrf)])
            post[.cookie] = bob.headers[.cookie]
            post.append(contentsOf: headers)
            let signOut = try await client.execute(uri: "/signout", method: .post, headers: post, body: body)
            #expect(signOut.status == .forbidden && WebTests.text(signOut).contains(message))
            #expect(try await client.execute(uri: "/models", method: .get, headers: bob.headers).status == .ok, "still signed in")
            #expect(try await refusals() == before + 2)
        }
    }

    @Test func aPostFromThisServersOwnOriginGoesOn() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            for headers: HTTPFields in [
                [WebOrigin.secFetchSite: "same-origin", .origin: "http://127.0.0.1:8080", WebOrigin.host: "127.0.0.1:8080"],
                [.origin: "HTTP://LOCALHOST", WebOrigin.host: "localhost:80"],  // the default port, and any case
                [:],  // a client that sends neither (curl, an old browser): the CSRF token still guards it
                // Behind a proxy that terminates TLS and says so.
                [
                    .origin: "https://coffer.example", WebOrigin.host: "10.0.0.5:8080", WebOrigin.forwardedProto: "https",
                    WebOrigin.forwardedHost: "coffer.example",
                ],
            ] {
                let posted = try await signInPost(client, token: w.tokens["bob-read"]!, extra: headers)
                #expect(posted.status == .seeOther, "\(headers): \(WebTests.text(posted))")
                #expect(WebTests.setCookie(WebSessionAuthenticator.cookieName, in: posted) != nil)
            }
        }
    }

    /// With `--tls-cert`, the server's own origin is https.
    @Test func aServerWithTLSTakesPostsFromItsHTTPSOrigin() async throws {
        let w = try await server.world()
        let pem = try Self.selfSignedCertificate(in: w.fixture.path("tls"))
        try await server.app(w, configuration: .init(port: 0, tls: pem)).test(.router) { client in
            let own = try await signInPost(
                client,
                token: w.tokens["bob-read"]!,
                extra: [.origin: "https://127.0.0.1:8443", WebOrigin.host: "127.0.0.1:8443"]
            )
            #expect(own.status == .seeOther)
            let plain = try await signInPost(
                client,
                token: w.tokens["bob-read"]!,
                extra: [.origin: "http://127.0.0.1:8443", WebOrigin.host: "127.0.0.1:8443"]
            )
            #expect(plain.status == .forbidden && WebTests.text(plain).contains("not from this server (https://127.0.0.1:8443)"))
        }
    }

    static func selfSignedCertificate(in directory: String) throws -> (certificate: String, privateKey: String) {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let openssl = try ProgramRun.run(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem",
            ]
        )
        #expect(openssl.status == 0, "openssl req failed: \(openssl.stderr)")
        return (directory + "/cert.pem", directory + "/key.pem")
    }

    // MARK: - Sign-in rate limit

    @Test func failedSignInsAreLimitedAndTheRefusalIsCountedAndAudited() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            // Successes take nothing: more of them than the limit's burst all go through.
            for _ in 0..<(SignInLimiter.perAddress.burst + 2) {
                #expect(try await signInPost(client, token: w.tokens["bob-read"]!).status == .seeOther)
            }
            for _ in 0..<SignInLimiter.perAddress.burst {
                #expect(try await signInPost(client, token: "cft_" + String(repeating: "0", count: 64)).status == .unauthorized)
            }
            // Over the limit: 429, and a valid token is not even looked up.
            let limited = try await signInPost(client, token: w.tokens["bob-read"]!)
            #expect(limited.status == .tooManyRequests)
            #expect(WebTests.setCookie(WebSessionAuthenticator.cookieName, in: limited) == nil)
            let retry = try #require(limited.headers[.retryAfter].flatMap { Int($0) })
            #expect(retry > 0 && retry <= 30)
            let html = WebTests.text(limited)
            #expect(html.contains("Too many failed sign-ins from your address: try again in \(retry) s."))
            #expect(!html.contains(w.tokens["bob-read"]!))
            let metrics = WebTests.text(try await client.execute(uri: "/metrics", method: .get))
            #expect(metrics.contains(#"signin",status="429"} 1"#), "\(metrics)")
        }
        // The tally reaches the audit log (at the latest when the server stops), as the API's refusals do.
        var limited: [AuditEntry] = []
        for _ in 0..<250 {
            limited = try await w.fixture.registry.auditEntries().filter { $0.action == "web.signin" }
            if !limited.isEmpty { break }
            try await Task.sleep(for: .milliseconds(40))
        }
        #expect(limited.first?.outcome == .refused && limited.first?.reason.hasPrefix("sign-in rate limit: too many failed sign-ins from") == true)
    }

    @Test func theLimitIsPerAddressAndOverallAndRefills() {
        let limiter = SignInLimiter(perAddress: .init(rate: 1, burst: 2), overall: .init(rate: 10, burst: 3))
        let t = Date(timeIntervalSince1970: 1000)
        #expect(limiter.take(address: "a", now: t) == nil && limiter.take(address: "a", now: t) == nil)
        let wait = limiter.take(address: "a", now: t)
        #expect(wait.map { abs($0 - 1) < 1e-9 } == true, "one token a second: the next in 1 s")
        // Another address has its own bucket, but the overall one (3) is now down to 1.
        #expect(limiter.take(address: "b", now: t) == nil)
        #expect(limiter.take(address: "c", now: t) != nil, "the overall bucket is empty")
        // A success gives its token back to both.
        limiter.giveBack(address: "b")
        #expect(limiter.take(address: "c", now: t) == nil)
        // Time refills them.
        #expect(limiter.take(address: "a", now: t.addingTimeInterval(1)) == nil)
        // IPv6 clients are limited by /64, IPv4 ones (also as seen on a dual-stack socket) by address.
        let v6a = try? SocketAddress(ipAddress: "2001:db8:1:2::1", port: 1)
        let v6b = try? SocketAddress(ipAddress: "2001:db8:1:2:ffff::9", port: 2)
        let v6c = try? SocketAddress(ipAddress: "2001:db8:1:3::1", port: 2)
        #expect(SignInLimiter.key(for: v6a) == SignInLimiter.key(for: v6b) && SignInLimiter.key(for: v6a) != SignInLimiter.key(for: v6c))
        #expect(SignInLimiter.key(for: v6a) == "20010db800010002::/64")
        #expect(SignInLimiter.key(for: try? SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 1)) == "::ffff:192.0.2.7")
        #expect(SignInLimiter.key(for: try? SocketAddress(ipAddress: "192.0.2.7", port: 1)) == "192.0.2.7")
    }

    // MARK: - What a page shows

    @Test func theBudgetListShowsOnlyDatasetsChargedByReadableModels() async throws {
        let w = try await server.world()
        let registry = w.fixture.registry
        let admin = Signer(w.fixture.publisher)
        for dataset in ["census", "payroll", "unused"] { try await registry.setBudget(dataset: dataset, epsilon: 5, delta: 1e-5, by: admin) }
        for (model, dataset) in [("m/risk", "census"), ("other/pay", "payroll")] {
            var request = PushRequest(model: model, paths: [w.fixture.path("ckpt")])
            request.datasetID = dataset
            request.privacy.mechanism = "dp-sgd"
            request.privacy.delta = 1e-5
            request.privacy.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 100)]
            request.privacy.standardisation = "public"
            request.privacy.batchSampling = "secret"
            _ = try await registry.push(request, publisher: w.fixture.publisher)
        }
        try await server.app(w).test(.router) { client in
            func listed(_ token: String) async throws -> [String] {
                let browser = try await web.signIn(client, token: token)
                let html = WebTests.text(try await client.execute(uri: "/budgets", method: .get, headers: browser.headers))
                return ["census", "payroll", "unused"].filter { html.contains(#"<a href="/budget?dataset=\#($0)">"#) }
            }
            #expect(try await listed(w.tokens["bob-read"]!) == ["census"], "bob reads m/ only")
            #expect(try await listed(w.tokens["carol-read"]!) == ["payroll"], "carol reads other/ only")
            #expect(try await listed(w.tokens["admin"]!) == ["census", "payroll", "unused"], "an admin sees every dataset")
            // An admin's read token is a reader's view.
            let created = try await registry.createToken(principal: "alice", scope: .read, ttl: 600, by: admin)
            let aliceRead = created.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            #expect(try await listed(aliceRead) == ["census", "payroll"])
        }
    }

    // MARK: - Refused forms

    @Test func aRefusedFormIsASeeOtherToANoticeOnlyTheServerWrites() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let bob = try await web.signIn(client, token: w.tokens["bob-read"]!)
            var (headers, body) = WebTests.form([("csrf", String(repeating: "0", count: 64))])
            headers[.cookie] = bob.headers[.cookie]
            let refused = try await client.execute(uri: "/signout", method: .post, headers: headers, body: body)
            #expect(refused.status == .seeOther && refused.headers[.location] == "/notice")
            // The notice, with the refusal's status; a reload shows it again and posts nothing.
            for _ in 0..<2 {
                let notice = try await client.execute(uri: "/notice", method: .get, headers: bob.headers)
                #expect(notice.status == .forbidden)
                #expect(WebTests.text(notice).contains("<h1>403 Forbidden</h1>") && WebTests.text(notice).contains("CSRF token is missing or wrong"))
            }
            // Nothing a request says reaches it: a query is ignored, and another session has no notice.
            let forged = try await client.execute(uri: "/notice?message=Your+account+is+locked", method: .get, headers: bob.headers)
            #expect(!WebTests.text(forged).contains("locked"))
            let carol = try await web.signIn(client, token: w.tokens["carol-read"]!)
            let none = try await client.execute(uri: "/notice", method: .get, headers: carol.headers)
            #expect(none.status == .seeOther && none.headers[.location] == "/models")
        }
    }

    /// A notice's status comes from a row: a code the server never keeps is a 500 page, never a trap (the outside
    /// review's F5: `HTTPResponse.Status(code:)` traps outside 0...999, and the row's MAC now covers the notice too).
    @Test func aNoticeStatusTheServerNeverKeepsIsA500() {
        #expect(WebPages.status(code: 403) == .forbidden && WebPages.status(code: 403).reasonPhrase == "Forbidden")
        for code in [5000, -1, 0, 999, 299] { #expect(WebPages.status(code: code) == .internalServerError) }
    }
}
