import Foundation
import HTTPTypes
import Hummingbird

/// The check every web form post passes before its body is read (docs/WEB.md, "Where a form may come from"): a
/// browser's `Sec-Fetch-Site`, if it sent one, is `same-origin`, and its `Origin`, if it sent one, is this server's
/// own origin as the request reached it. Cookies do not tell ports or sibling hosts apart, so a `SameSite` cookie and
/// a double-submit token alone let a neighbouring service post a sign-in form with a cookie of its own (login CSRF).
///
/// The server's origin: `https` if it serves TLS itself, else `http`, and the `Host` the browser sent. Behind a proxy
/// that terminates TLS, the proxy says so in `X-Forwarded-Proto` (and in `X-Forwarded-Host`, if it rewrites `Host`).
/// Trusting those headers costs nothing here: the check stops browsers, and a page on another site cannot make a
/// browser send them (they are not headers a form or a CORS-simple request may carry); a client that is not a browser
/// chooses its own `Origin` anyway.
enum WebOrigin {
    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
    static let forwardedProto = HTTPField.Name("X-Forwarded-Proto")!
    static let forwardedHost = HTTPField.Name("X-Forwarded-Host")!
    /// HTTPTypes marks `.host` unavailable (HTTP/1's Host is the request's authority); a test client sends it as a field.
    static let host = HTTPField.Name("Host")!

    /// Why a post of `request` is refused (one line), or nil when it may go on.
    static func refusal(of request: Request, servesTLS: Bool) -> String? {
        if let site = request.headers[secFetchSite], site != "same-origin" {
            return "the form was posted from another site (Sec-Fetch-Site: \(site.prefix(40)))"
        }
        guard let origin = request.headers[.origin] else { return nil }
        guard let own = own(request, servesTLS: servesTLS) else {
            return "the form names its origin (\(origin.prefix(100))) but the request names no host to compare it with"
        }
        guard normalized(origin) == own else { return "the form was posted from \(origin.prefix(100)), not from this server (\(own))" }
        return nil
    }

    /// This server's origin as `request` reached it, normalized; nil without a host.
    static func own(_ request: Request, servesTLS: Bool) -> String? {
        let proto = request.headers[forwardedProto].flatMap { first($0) }?.lowercased()
        let scheme = proto == "https" || proto == "http" ? proto! : (servesTLS ? "https" : "http")
        // HTTP/1's Host header becomes the request's authority (SwiftNIO moves it there); a test client sends it as a field.
        guard let host = request.headers[forwardedHost].flatMap({ first($0) }) ?? request.headers[host] ?? request.head.authority else {
            return nil
        }
        return normalized("\(scheme)://\(host)")
    }

    /// `scheme://host[:port]` in lower case, without the scheme's default port; anything else (`null`, a path) as it is.
    static func normalized(_ origin: String) -> String {
        let lower = origin.lowercased()
        for (scheme, port) in [("http://", ":80"), ("https://", ":443")] where lower.hasPrefix(scheme) && lower.hasSuffix(port) {
            return String(lower.dropLast(port.count))
        }
        return lower
    }

    private static func first(_ list: String) -> String? {
        let value = list.split(separator: ",").first?.trimmingCharacters(in: .whitespaces) ?? ""
        return value.isEmpty ? nil : value
    }
}
