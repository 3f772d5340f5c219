import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird

/// Guards the signed-in pages: the `__Host-coffer_session` cookie must name a live session of the registry
/// (``Registry/webSession(cookie:now:)``, shared by every server), whose bearer token is then authorized for `role` by
/// ``TokenAuthorizer``, the API's own path (so a token revoked or expired since sign-in ends the session at once). A `POST` must carry the session's CSRF token in its `csrf` field. Errors below become
/// pages; a refused `POST` is answered `303 See Other` to `GET /notice`, which shows the refusal (kept with the session),
/// so that reloading the page does not post the form again.
///
/// Signed out (no cookie, an unknown or expired session, a token the registry now refuses): 303 to `/signin`.
struct WebSessionAuthenticator: RouterMiddleware {
    typealias Context = CofferRequestContext
    /// `__Host-`: only this host sets it, over a secure origin, for the whole site (see ``WebController/signInCookieName``).
    static let cookieName = "__Host-coffer_session"
    let state: ServerState
    let role: Role

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let cookie = WebController.sessionCookie(request), let session = try await state.registry.webSession(cookie: cookie) else {
            return Self.signIn(after: request)
        }
        var context = context
        context.webSession = session
        do {
            context.holder = try await TokenAuthorizer(state: state).authorize(role: role, target: request.uri.path) {
                () async throws(CofferRegistryError) in
                try await state.registry.authenticateToken(hash: session.tokenHash, auditing: false)
            }
        } catch let error as HTTPError where error.status == .unauthorized {
            try await state.registry.closeWebSession(cookie: cookie)
            return Self.signIn(after: request)
        } catch {
            return try await refuse(error, request, session: session, admin: false)
        }
        do {
            if request.method == .post {
                let form = try await WebForm.read(request)
                guard let csrf = form["csrf"], SecureCompare.equal(Array(csrf.utf8), Array(session.csrf.utf8)) else {
                    let reason = "a form was posted without the session's CSRF token"
                    state.refusals.add(RefusalKey(principal: session.principal, action: "web.csrf", target: request.uri.path, reason: reason))
                    state.metrics.refusal()
                    throw HTTPError(.forbidden, message: "the form's CSRF token is missing or wrong: reload the page and send the form again")
                }
                context.form = form
            }
            return try await next(request, context)
        } catch {
            // Answered as a page rather than thrown, so counted here as the request log counts the API's refusals.
            if (error as? CofferRegistryError)?.isRefusal == true { state.metrics.refusal() }
            return try await refuse(error, request, session: session, admin: context.holder?.scope == .admin)
        }
    }

    /// The error page of a refused `GET`; for a `POST`, the refusal kept with the session (in the metadata store, so
    /// any server shows it) and a 303 to the page showing it.
    private func refuse(_ error: any Error, _ request: Request, session: WebSession, admin: Bool) async throws -> Response {
        guard request.method == .post else { return state.pages.error(error, session: session, admin: admin) }
        let (status, message) = WebPages.describe(error)
        try await state.registry.setWebNotice(WebSession.Notice(status: status.code, message: message), on: session)
        return WebPages.seeOther("/notice")
    }

    /// 303 to the sign-in page, which sends the user back to this page (a GET) once signed in.
    static func signIn(after request: Request) -> Response {
        guard request.method == .get else { return WebPages.seeOther("/signin") }
        return WebPages.seeOther("/signin?next=" + WebForm.percentEncoded(request.uri.description))
    }

    /// The session cookie, or (with `value` empty and age 0) the cookie that deletes it.
    static func cookie(_ value: String, maxAge: Int) -> Cookie {
        Cookie(name: cookieName, value: value, maxAge: maxAge, path: "/", secure: true, httpOnly: true, sameSite: .strict)
    }
}

/// `application/x-www-form-urlencoded` bodies of the web forms, and the percent-encoding of the pages' links.
enum WebForm {
    /// The largest form a page sends (a token and two hidden fields).
    static let maximumSize = 16 << 10

    /// The fields of a posted form; a repeated field keeps its first value.
    ///
    /// - Throws: `HTTPError` 400 for a body that is not a form, 413 for one over ``maximumSize``.
    static func read(_ request: Request) async throws -> [String: String] {
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: maximumSize) } catch {
            throw HTTPError(.contentTooLarge, message: "a form holds at most \(maximumSize) bytes")
        }
        return try parse(String(buffer: body))
    }

    static func parse(_ text: String) throws -> [String: String] {
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = decode(parts[0]), let value = decode(parts.count > 1 ? parts[1] : "") else {
                throw HTTPError(.badRequest, message: "the form is not URL-encoded UTF-8")
            }
            if fields[name] == nil { fields[name] = value }
        }
        return fields
    }

    private static func decode(_ text: Substring) -> String? { text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding }

    /// `text` with everything but unreserved characters percent-encoded, for a query value.
    static func percentEncoded(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }
}
