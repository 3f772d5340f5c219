import CofferCrypto
import CofferRegistry
import Foundation
import HTTPTypes
import Hummingbird
import Mustache

/// Renders the web pages from ``WebTemplates`` and sends them with the headers every page carries (docs/WEB.md,
/// "Headers").
struct WebPages: Sendable {
    private let library: MustacheLibrary

    init() {
        MustacheContentTypes.register(ScalarHTMLEscaping(), named: ScalarHTMLEscaping.name)
        var library = MustacheLibrary()
        for (name, text) in WebTemplates.all {
            // The templates are constants of this module (parsed by every test run): a parse error is a bug here.
            do {
                try library.register("{{% CONTENT_TYPE: \(ScalarHTMLEscaping.name)}}" + text, named: name)
            } catch {
                preconditionFailure("web template \(name) does not parse: \(error)")
            }
        }
        self.library = library
    }

    /// HTML escaping of every Unicode scalar. swift-mustache's own escaping looks characters up whole, and a quote
    /// followed by a combining mark is one Swift Character that is not a quote: `"\u{301}` passed through unescaped
    /// and closed an attribute (an outside review found it with a search for it echoed into `value="…"`).
    struct ScalarHTMLEscaping: MustacheContentType {
        static let name = "HTML_BY_SCALAR"

        func escapeText(_ text: String) -> String {
            var escaped = String.UnicodeScalarView()
            for scalar in text.unicodeScalars {
                switch scalar {
                case "<": escaped.append(contentsOf: "&lt;".unicodeScalars)
                case ">": escaped.append(contentsOf: "&gt;".unicodeScalars)
                case "&": escaped.append(contentsOf: "&amp;".unicodeScalars)
                case "\"": escaped.append(contentsOf: "&quot;".unicodeScalars)
                case "'": escaped.append(contentsOf: "&#39;".unicodeScalars)
                default: escaped.append(scalar)
                }
            }
            return String(escaped)
        }
    }

    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy:
            "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        .xContentTypeOptions: "nosniff",
        // same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the pages' own forms, which
        // ``WebOrigin`` must refuse; other sites still get no Referer.
        HTTPField.Name("Referrer-Policy")!: "same-origin",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        .cacheControl: "no-store",
    ]

    /// The page `name` filled with `values`, plus the layout's: whether someone is signed in, who, the CSRF token of
    /// the sign-out form, and whether to link the admin pages (a link only: each page checks the role itself).
    func render(
        _ name: String,
        _ values: [String: Any],
        session: WebSession?,
        admin: Bool = false,
        status: HTTPResponse.Status = .ok
    ) -> Response {
        var values = values
        values["admin"] = admin
        values["signedIn"] = session != nil
        values["principal"] = session?.principal ?? ""
        values["csrf"] = session?.csrf ?? ""
        return Self.html(ByteBuffer(string: Self.visible(library.render(values, withTemplate: name) ?? "")), status: status)
    }

    /// Where a template shows a secret: a comment, which no value can write (`<` is always escaped).
    static let secretSlot = "<!--secret-->"

    /// The page `name` with `secret` written into its ``secretSlot``: the secret goes from sodium memory into the
    /// response's bytes, never through a `String` (a token shown once, as `token create` prints it).
    func render(
        _ name: String,
        _ values: [String: Any],
        showingOnce secret: borrowing SecureBytes,
        session: WebSession?,
        admin: Bool = false
    ) -> Response {
        var values = values
        values["admin"] = admin
        values["signedIn"] = session != nil
        values["principal"] = session?.principal ?? ""
        values["csrf"] = session?.csrf ?? ""
        let html = Self.visible(library.render(values, withTemplate: name) ?? "")
        guard let slot = html.range(of: Self.secretSlot) else { preconditionFailure("web template \(name) has no secret slot") }
        var body = ByteBuffer(string: String(html[..<slot.lowerBound]))
        secret.withUnsafeBytes { _ = body.writeBytes($0) }
        body.writeString(String(html[slot.upperBound...]))
        return Self.html(body, status: .ok)
    }

    /// A rendered page with the control, bidirectional and invisible characters of the values in it shown as `\u`
    /// escapes (no template holds one): HTML escaping stops markup, not a tag that reads as another text
    /// (U+202E shows `devorppa` as `approved`).
    private static func visible(_ html: String) -> String { VisibleText.of(html, lines: true) }

    private static func html(_ body: ByteBuffer, status: HTTPResponse.Status) -> Response {
        var headers = securityHeaders
        headers[.contentType] = "text/html; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: body))
    }

    /// The status of a code kept with a notice, with its reason phrase (the heading of the page showing it); a code
    /// the server never keeps is a 500 (`HTTPResponse.Status(code:)` traps outside 0...999).
    static func status(code: Int) -> HTTPResponse.Status {
        let known: [HTTPResponse.Status] = [
            .badRequest, .unauthorized, .forbidden, .notFound, .methodNotAllowed, .conflict, .contentTooLarge, .unprocessableContent,
            .tooManyRequests, .internalServerError, .serviceUnavailable,
        ]
        return known.first { $0.code == code } ?? .internalServerError
    }

    /// An error as a page: the status's reason as the heading, the error's one line as the message.
    func error(_ error: any Error, session: WebSession?, admin: Bool = false) -> Response {
        let (status, message) = Self.describe(error)
        return render(
            "error",
            ["title": "\(status.code) \(status.reasonPhrase)", "message": message],
            session: session,
            admin: admin,
            status: status
        )
    }

    static func describe(_ error: any Error) -> (HTTPResponse.Status, String) {
        switch error {
        case let error as HTTPError: (error.status, error.body ?? error.status.reasonPhrase)
        case let error as any HTTPResponseError: (error.status, "\(error)")
        default: (.internalServerError, "the page could not be made")
        }
    }

    /// `303 See Other` to `location`, with the page headers.
    static func seeOther(_ location: String, cookies: [Cookie] = []) -> Response {
        var headers = securityHeaders
        headers[.location] = location
        var response = Response(status: .seeOther, headers: headers)
        for cookie in cookies { response.setCookie(cookie) }
        return response
    }
}

/// Sets the page headers on every web response, refuses a form posted from anywhere but this server's own pages
/// (``WebOrigin``: 403, counted and audited as the API's refusals are) before anything reads it, and turns an error
/// no page handled (a bad form, a route's own refusal) into an error page rather than the API's JSON.
struct WebHeadersMiddleware: RouterMiddleware {
    typealias Context = CofferRequestContext
    let state: ServerState

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.method == .post, let reason = WebOrigin.refusal(of: request, servesTLS: state.servesTLS) {
            state.refusals.add(principal: "-", action: "web.origin", reason: reason)
            state.metrics.refusal()
            return state.pages.error(HTTPError(.forbidden, message: reason), session: nil)
        }
        do {
            var response = try await next(request, context)
            for field in WebPages.securityHeaders where response.headers[field.name] == nil { response.headers.append(field) }
            return response
        } catch {
            return state.pages.error(error, session: context.webSession)
        }
    }
}
