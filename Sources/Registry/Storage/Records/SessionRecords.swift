import Foundation

// The rows of who is signed in and what is under way: API tokens, inference and web sessions, rate limits, uploads.
// How columns and values are written: VersionRecords.swift.

struct APITokenRecord: Codable, Sendable, Equatable {
    var id: String
    var tokenHash: Data
    var principal: String
    var scope: String
    var createdAt: String
    var expiresAt: String
    var createdBy: String?
    var revokedAt: String?

    enum CodingKeys: String, CodingKey {
        case id, principal, scope
        case tokenHash = "token_hash"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case createdBy = "created_by"
        case revokedAt = "revoked_at"
    }
}

/// A row of `sessions` as inserted.
struct SessionRecord: Codable, Sendable, Equatable {
    var id: String
    var tokenHash: Data
    var principal: String
    var versionID: Int64
    var reference: String
    var alias: String?
    var createdAt: String
    var expiresAt: String
    var maxUses: Int?
    var uses: Int
    var revokedAt: String?
    var wrappedKey: Data?

    enum CodingKeys: String, CodingKey {
        case id, principal, reference, alias, uses
        case tokenHash = "token_hash"
        case versionID = "version_id"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case maxUses = "max_uses"
        case revokedAt = "revoked_at"
        case wrappedKey = "wrapped_key"
    }
}

/// A session with the model and version it opened.
struct SessionRow: Sendable, Equatable {
    var session: SessionRecord
    var model: String
    var version: String
}

/// A row of `web_sessions`: a web page's sign-in session (docs/WEB.md), by the keyed hash of its cookie.
struct WebSessionRecord: Codable, Sendable, Equatable {
    var idHash: Data
    var tokenHash: Data
    var principal: String
    var createdAt: String
    var expiresAt: String
    var binding: Data
    var notice: String?
    var noticeStatus: Int64?
    var noticeAt: String?

    enum CodingKeys: String, CodingKey {
        case principal, binding, notice
        case idHash = "id_hash"
        case tokenHash = "token_hash"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case noticeStatus = "notice_status"
        case noticeAt = "notice_at"
    }
}

/// A session's predict rate bucket (`session_rates`): tokens left at `updatedAt` (seconds since 1970).
struct SessionRateRecord: Codable, Sendable, Equatable {
    var sessionID: String
    var tokens: Double
    var updatedAt: Double

    enum CodingKeys: String, CodingKey {
        case tokens
        case sessionID = "session_id"
        case updatedAt = "updated_at"
    }

    /// The bucket after taking one token at `now` (``RateBucket``'s arithmetic), and nil when one was taken or the
    /// seconds until one is available.
    func taking(rate: Double, burst: Int, now: Double) -> (SessionRateRecord, Double?) {
        let (after, wait) = RateBucket(tokens: tokens, updatedAt: updatedAt).taking(rate: rate, burst: burst, now: now)
        return (SessionRateRecord(sessionID: sessionID, tokens: after.tokens, updatedAt: after.updatedAt), wait)
    }
}

/// A row of `uploads`: a resumable upload any replica continues.
struct UploadRecord: Codable, Sendable, Equatable {
    var id: String
    var principal: String
    var location: String
    var received: Int
    var createdAt: String
    var expiresAt: String

    enum CodingKeys: String, CodingKey {
        case id, principal, location, received
        case createdAt = "created_at"
        case expiresAt = "expires_at"
    }
}
