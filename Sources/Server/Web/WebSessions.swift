import CofferCrypto
import Foundation
import Synchronization

/// The web pages' sign-in sessions, in this process's memory (docs/WEB.md, "Sign-in, session cookie and CSRF"):
/// keyed by the SHA-256 of the cookie's session id, each holding the bearer token it was signed in with (in sodium
/// memory, re-authenticated on every request), its principal's name and its CSRF token.
final class WebSessions: Sendable {
    /// How long a session lasts from sign-in.
    static let lifetime: TimeInterval = 30 * 60
    /// Sessions held at once; the oldest go first past this (each needs a valid bearer token, so this only bounds memory).
    static let capacity = 10_000
    /// Sessions one principal holds at once; its own oldest goes first past this, so that one token signing in from a
    /// script again and again cannot push everyone else's sessions out (an outside review's finding).
    static let perPrincipal = 8

    final class Session: @unchecked Sendable {
        /// The bearer token, read only (by `authorize`) after it is built.
        let token: SecureBytes
        let principal: String
        let csrf: String
        let expires: Date

        init(token: consuming SecureBytes, principal: String, csrf: String, expires: Date) {
            self.token = token
            self.principal = principal
            self.csrf = csrf
            self.expires = expires
        }
    }

    private let sessions = Mutex<[String: Session]>([:])

    /// Starts a session for `token`'s holder; returns the session id for the cookie (64 hex digits) and the session.
    func open(token: consuming SecureBytes, principal: String, now: Date = Date()) -> (id: String, session: Session) {
        let id = Self.randomHex()
        let session = Session(token: token, principal: principal, csrf: Self.randomHex(), expires: now.addingTimeInterval(Self.lifetime))
        sessions.withLock { sessions in
            sessions = sessions.filter { $0.value.expires > now }
            let own = sessions.filter { $0.value.principal == principal }
            if own.count >= Self.perPrincipal, let oldest = own.min(by: { $0.value.expires < $1.value.expires })?.key {
                sessions[oldest] = nil
            }
            if sessions.count >= Self.capacity, let oldest = sessions.min(by: { $0.value.expires < $1.value.expires })?.key {
                sessions[oldest] = nil
            }
            sessions[Self.key(id)] = session
        }
        return (id, session)
    }

    /// The live session of a cookie's id; an expired one is dropped.
    func session(_ id: String, now: Date = Date()) -> Session? {
        let key = Self.key(id)
        return sessions.withLock { sessions in
            guard let session = sessions[key] else { return nil }
            guard session.expires > now else {
                sessions[key] = nil
                return nil
            }
            return session
        }
    }

    func close(_ id: String) { _ = sessions.withLock { $0.removeValue(forKey: Self.key(id)) } }

    var count: Int { sessions.withLock { $0.count } }

    /// 32 random bytes from libsodium, as 64 lower-case hex digits.
    static func randomHex() -> String { SecureBytes.random(count: 32).withUnsafeBytes { Digest.hex(Array($0)) } }

    private static func key(_ id: String) -> String { Digest.hex(Digest.sha256(Array(id.utf8))) }
}
