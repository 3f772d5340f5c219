import CofferCrypto
import Foundation
import HTTPTypes
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The web pages' sign-in sessions, in this process's memory (docs/WEB.md, "Sign-in, session cookie and CSRF"):
/// keyed by the SHA-256 of the cookie's session id, each holding the bearer token it was signed in with (in sodium
/// memory, re-authenticated on every request), its principal's name and its CSRF token.
final class WebSessions: Sendable {
    /// How long a session lasts from sign-in.
    static let lifetime: TimeInterval = 30 * 60
    /// Sessions held at once when locked memory does not bound them lower (``capacity(memlockLimit:pageSize:)``); the
    /// oldest go first past the capacity (each needs a valid bearer token, so this only bounds memory).
    static let maximumCapacity = 10_000
    /// The share of RLIMIT_MEMLOCK the sessions' tokens may lock: the rest is for the registry's keys and the models
    /// the server decrypts for inference sessions.
    static let memlockShare = 4
    /// Sessions one principal holds at once; its own oldest goes first past this, so that one token signing in from a
    /// script again and again cannot push everyone else's sessions out (an outside review's finding).
    static let perPrincipal = 8

    final class Session: @unchecked Sendable {
        /// The bearer token, read only (by `authorize`) after it is built.
        let token: SecureBytes
        let principal: String
        let csrf: String
        let expires: Date
        /// The refusal of the form this session last posted, shown by `GET /notice` (the POST is answered with a 303
        /// there, so reloading the page does not post the form again). Set by the server only, never from a request's
        /// text, so nobody can make the page say something else.
        private let notice = Mutex<Notice?>(nil)

        struct Notice {
            let status: HTTPResponse.Status
            let message: String
            let expires: Date
        }

        /// How long a refusal stays on `GET /notice`.
        static let noticeLifetime: TimeInterval = 120

        func setNotice(status: HTTPResponse.Status, message: String, now: Date = Date()) {
            notice.withLock { $0 = Notice(status: status, message: message, expires: now.addingTimeInterval(Self.noticeLifetime)) }
        }

        /// The last refusal, while it lasts.
        func currentNotice(now: Date = Date()) -> Notice? { notice.withLock { $0.flatMap { $0.expires > now ? $0 : nil } } }

        init(token: consuming SecureBytes, principal: String, csrf: String, expires: Date) {
            self.token = token
            self.principal = principal
            self.csrf = csrf
            self.expires = expires
        }
    }

    private let sessions = Mutex<[String: Session]>([:])
    /// Sessions held at once; 0 when RLIMIT_MEMLOCK leaves none a locked page (every sign-in is then refused).
    let capacity: Int

    init(capacity: Int = WebSessions.maximumCapacity) { self.capacity = capacity }

    /// This process's soft RLIMIT_MEMLOCK in bytes; nil when it is unlimited (glibc names it `__RLIMIT_MEMLOCK` in Swift:
    /// `RLIMIT_MEMLOCK` is a macro).
    static func memlockLimit() -> Int? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    /// The sessions that fit a share (``memlockShare``) of `memlockLimit` bytes of locked memory, each session's
    /// token taking one page (sodium_malloc locks whole pages, and a token is far shorter than one), at most
    /// ``maximumCapacity``; nil `memlockLimit` is unlimited.
    static func capacity(memlockLimit: Int?, pageSize: Int) -> Int {
        guard let memlockLimit else { return maximumCapacity }
        return min(maximumCapacity, max(0, memlockLimit) / memlockShare / max(pageSize, 1))
    }

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
            if sessions.count >= capacity, let oldest = sessions.min(by: { $0.value.expires < $1.value.expires })?.key {
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
