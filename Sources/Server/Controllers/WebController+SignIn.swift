import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird
import Logging

/// Signing in and out of the pages (docs/WEB.md, "Sign-in, session cookie and CSRF"), the notice page a refused form
/// is sent to, and the stylesheet.
extension WebController {
    /// `GET /signin?next=PATH`: the form, with a fresh sign-in CSRF token in its field and in a cookie.
    func signInForm(_ request: Request, context: CofferRequestContext) async throws -> Response {
        signInPage(next: Self.localPath(request.uri.queryParameters.get("next")), message: nil, status: .ok)
    }

    /// `POST /signin` with `token`, `csrf` and `next`: a session for a bearer token the API would take.
    func signIn(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let form = try await WebForm.read(request)
        let next = Self.localPath(form["next"])
        guard let expected = request.cookies[Self.signInCookieName]?.value, let csrf = form["csrf"],
            SecureCompare.equal(Array(csrf.utf8), Array(expected.utf8))
        else {
            state.refusals.add(principal: "-", action: "web.csrf", reason: "a sign-in form was posted without its CSRF token")
            state.metrics.refusal()
            return signInPage(next: next, message: "The form's CSRF token is missing or wrong: send the form again.", status: .forbidden)
        }
        // Failed sign-ins are limited per address and overall; the token is not even looked up over the limit.
        let address = SignInLimiter.key(for: context.remoteAddress)
        if let wait = state.signInLimiter.take(address: address) {
            let seconds = max(1, Int(wait.rounded(.up)))
            let reason = "sign-in rate limit: too many failed sign-ins from \(address) or from everywhere"
            state.refusals.add(principal: "-", action: "web.signin", reason: reason)
            state.metrics.refusal()
            var response = signInPage(
                next: next,
                message: "Too many failed sign-ins from your address: try again in \(seconds) s.",
                status: .tooManyRequests
            )
            response.headers[.retryAfter] = "\(seconds)"
            return response
        }
        let text = (form["token"] ?? "").trimmingCharacters(in: .whitespaces).utf8
        let token = SecureBytes(isolatedCount: text.count)
        token.withUnsafeMutableBytes { $0.copyBytes(from: text) }
        let holder: TokenHolder
        do {
            holder = try await TokenAuthorizer(state: state).authorize(role: .reader, target: "/signin") { () async throws(CofferRegistryError) in
                try await registry.authenticateToken(token, auditing: false)
            }
        } catch {
            return signInPage(next: next, message: "Sign-in refused: \(WebPages.describe(error).1)", status: .unauthorized)
        }
        state.signInLimiter.giveBack(address: address)
        // A new sign-in ends the browser's earlier session: one cookie, one live session.
        if let earlier = Self.sessionCookie(request) { try await registry.closeWebSession(cookie: earlier) }
        let opened = try await registry.openWebSession(token: token, holder: holder)
        // The cookie's text goes into a Set-Cookie header, which HTTPFields hold as a String, as the browser does.
        let cookie = opened.cookie.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        return WebPages.seeOther(
            next,
            cookies: [
                WebSessionAuthenticator.cookie(cookie, maxAge: Int(Registry.webSessionLifetime)),
                Self.signInCookie("", maxAge: 0),
            ]
        )
    }

    /// `POST /signout`: ends the session and deletes its cookie.
    func signOut(_ request: Request, context: CofferRequestContext) async throws -> Response {
        if let cookie = Self.sessionCookie(request) { try await registry.closeWebSession(cookie: cookie) }
        return WebPages.seeOther("/signin", cookies: [WebSessionAuthenticator.cookie("", maxAge: 0)])
    }

    /// The session cookie's value, in sodium memory.
    static func sessionCookie(_ request: Request) -> SecureBytes? {
        guard let value = request.cookies[WebSessionAuthenticator.cookieName]?.value else { return nil }
        let cookie = SecureBytes(isolatedCount: value.utf8.count)
        cookie.withUnsafeMutableBytes { $0.copyBytes(from: value.utf8) }
        return cookie
    }

    private func signInPage(next: String, message: String?, status: HTTPResponse.Status) -> Response {
        let csrf = SecureBytes.random(count: 32).withUnsafeBytes { Digest.hex(Array($0)) }
        var values: [String: Any] = ["title": "Sign in", "formCSRF": csrf, "next": next]
        if let message { values["message"] = message }
        var response = pages.render("signin", values, session: nil, status: status)
        response.setCookie(Self.signInCookie(csrf, maxAge: 600))
        return response
    }

    /// The sign-in form's CSRF cookie (no `Domain`: a `__Host-` cookie may not have one).
    static func signInCookie(_ value: String, maxAge: Int) -> Cookie {
        Cookie(name: signInCookieName, value: value, maxAge: maxAge, path: "/", secure: true, httpOnly: true, sameSite: .strict)
    }

    /// `GET /notice`: the refusal of the form this session last posted, with its status (the post was answered
    /// `303 See Other` here, so reloading shows the refusal again rather than posting again); the models page when
    /// there is none, or it is older than two minutes.
    func notice(_ request: Request, context: CofferRequestContext) async throws -> Response {
        guard let session = context.webSession, let notice = session.notice else { return WebPages.seeOther("/models") }
        return pages.error(
            HTTPError(WebPages.status(code: notice.status), message: notice.message),
            session: session,
            admin: context.holder?.scope == .admin
        )
    }

    /// Where to go after signing in: a path on this server, else the models page (never another site: `//host`,
    /// `/\host`, absolute URLs, and anything but printable ASCII: browsers strip tabs and newlines from a URL, so
    /// `/<TAB>/host` is `//host` to them; an encoded path never holds them).
    static func localPath(_ text: String?) -> String {
        guard let text, text.hasPrefix("/"), !text.hasPrefix("//"), !text.contains("\\"),
            text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
        else { return "/models" }
        return text
    }

    func stylesheet(_ request: Request, context: CofferRequestContext) async throws -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "text/css; charset=utf-8", .cacheControl: "public, max-age=3600"],
            body: .init(byteBuffer: ByteBuffer(string: WebTemplates.stylesheet))
        )
    }
}
