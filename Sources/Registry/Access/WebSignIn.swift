public import CofferCrypto
public import Foundation

/// A web page's sign-in session (docs/WEB.md, "Sign-in, session cookie and CSRF"), as a row of the metadata store, so
/// that every server of the registry (replicas behind a load balancer, a restarted server) knows it.
public struct WebSession: Sendable {
    public let principal: String
    /// The CSRF token of the session's forms: derived from the cookie's secret, so nothing stores it.
    public let csrf: String
    public let expiresAt: String
    /// The refusal of the form this session last posted, for two minutes (`GET /notice`). Set by the server only.
    public let notice: Notice?
    let idHash: Data
    /// The keyed hash of the bearer token it was signed in with: every request authenticates that token again.
    public let tokenHash: [UInt8]

    public struct Notice: Sendable, Equatable {
        public let status: Int
        public let message: String

        public init(status: Int, message: String) {
            self.status = status
            self.message = message
        }
    }
}

/// A session just opened: the cookie's value (`cfw_` and 64 hex digits, in sodium memory, shown to the browser only).
public struct OpenedWebSession: ~Copyable {
    public let cookie: SecureBytes
    public let session: WebSession
}

extension Registry {
    /// How long a web session lasts from sign-in (not renewed by use).
    public static let webSessionLifetime: TimeInterval = 30 * 60
    /// Sessions one principal holds at once; its own oldest goes first past this, so that one token signing in from a
    /// script again and again cannot push everyone else's out (an outside review's finding).
    public static let webSessionsPerPrincipal = 8
    /// How long a refused form's message stays on `GET /notice`.
    static let webNoticeLifetime: TimeInterval = 120

    /// Opens a web session for `holder`, who signed in with the bearer token `token` (authenticated by the caller).
    public func openWebSession(
        token: borrowing SecureBytes,
        holder: TokenHolder,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> OpenedWebSession {
        let bearer = try SessionToken(text: token, prefix: SessionToken.apiPrefix)
        let cookie = SessionToken(secret: SecretKey.random(), prefix: SessionToken.webPrefix)
        var record = WebSessionRecord(
            idHash: Data(try tokenHash(cookie)),
            tokenHash: Data(try tokenHash(bearer)),
            principal: holder.principal.name,
            createdAt: Self.timestamp(now),
            expiresAt: Self.timestamp(now.addingTimeInterval(Self.webSessionLifetime)),
            binding: Data()
        )
        record.binding = Data(try binding(of: record))
        try await metadata.addWebSession(record, keepingAtMost: Self.webSessionsPerPrincipal, now: Self.timestamp(now))
        return OpenedWebSession(cookie: cookie.text(), session: Self.webSession(record, cookie: cookie, now: now))
    }

    /// The live session a cookie names; nil for a malformed, unknown or expired cookie, and for a row that does not
    /// match its cookie (edited in the database to another token or a later expiry: audited).
    public func webSession(cookie text: borrowing SecureBytes, now: Date = Date()) async throws(CofferRegistryError) -> WebSession? {
        guard let cookie = try? SessionToken(text: text, prefix: SessionToken.webPrefix) else { return nil }
        guard let row = try await metadata.webSession(idHash: Data(try tokenHash(cookie))), Self.timestamp(now) < row.expiresAt else {
            return nil
        }
        guard SecureCompare.equal(Array(row.binding), try binding(of: row)) else {
            try? await audit(
                principal: row.principal,
                action: "web.session",
                target: "-",
                outcome: .refused,
                reason: "a web session's row does not match its cookie (edited in the database)"
            )
            return nil
        }
        return Self.webSession(row, cookie: cookie, now: now)
    }

    /// Ends the session a cookie names (sign-out, or a new sign-in from the same browser).
    public func closeWebSession(cookie text: borrowing SecureBytes) async throws(CofferRegistryError) {
        guard let cookie = try? SessionToken(text: text, prefix: SessionToken.webPrefix) else { return }
        try await metadata.removeWebSession(idHash: Data(try tokenHash(cookie)))
    }

    /// Keeps the refusal of a form `session` posted, for `GET /notice` on whichever server the browser asks next.
    public func setWebNotice(_ notice: WebSession.Notice, on session: WebSession, now: Date = Date()) async throws(CofferRegistryError) {
        guard var row = try await metadata.webSession(idHash: session.idHash) else { return }
        row.notice = notice.message
        row.noticeStatus = Int64(notice.status)
        row.noticeAt = Self.timestamp(now)
        try await metadata.setWebNotice(
            idHash: row.idHash,
            notice: row.notice,
            status: row.noticeStatus,
            at: row.noticeAt,
            binding: Data(try binding(of: row))
        )
    }

    /// A MAC under `K_h`, which the database never holds, over everything the row says: a writer of the database, who
    /// sees every hash (an admin token's included, in `api_tokens`) and may hold a cookie of their own, cannot point a
    /// row at another token, principal or expiry, nor write its notice.
    func binding(of row: WebSessionRecord) throws(CofferRegistryError) -> [UInt8] {
        let fields = [
            "coffer/v1/web-session", Digest.hex(Array(row.idHash)), Digest.hex(Array(row.tokenHash)), row.principal, row.createdAt,
            row.expiresAt, row.notice ?? "", row.noticeStatus.map(String.init) ?? "", row.noticeAt ?? "",
        ]
        return try hashKeyMAC(Array(fields.map { "\($0.utf8.count):\($0)" }.joined().utf8))
    }

    private static func webSession(_ row: WebSessionRecord, cookie: borrowing SessionToken, now: Date) -> WebSession {
        var notice: WebSession.Notice? = nil
        if let message = row.notice, let status = row.noticeStatus, let at = row.noticeAt,
            at > timestamp(now.addingTimeInterval(-webNoticeLifetime))
        {
            notice = WebSession.Notice(status: Int(status), message: message)
        }
        return WebSession(
            principal: row.principal,
            csrf: Digest.hex(cookie.secret.mac(Array("coffer/v1/web-csrf".utf8))),
            expiresAt: row.expiresAt,
            notice: notice,
            idHash: row.idHash,
            tokenHash: Array(row.tokenHash)
        )
    }
}
