import Foundation

// The rows of the audit log and its signed heads.
// The rows of `schema/` (and `schema/postgres/`, the same tables), one record type per table or per query shape.
// Columns are snake_case, properties camelCase: each backend maps them (GRDB's column coding strategies, the
// PostgreSQL row decoder). Times are RFC 3339 UTC text, digests lower-case hex, public identities NAME.pub bytes.

/// A row of `audit_log`.
struct AuditEntryRecord: Codable, Sendable, Equatable {
    var seq: Int64
    var at: String
    var principal: String
    var action: String
    var target: String
    var outcome: String
    var reason: String
    var prevHash: Data
    var entryHash: Data

    enum CodingKeys: String, CodingKey {
        case seq, at, principal, action, target, outcome, reason
        case prevHash = "prev_hash"
        case entryHash = "entry_hash"
    }
}

/// A row of `audit_heads`.
struct AuditHeadRecord: Codable, Sendable, Equatable {
    var seq: Int64
    var entryHash: Data
    var signedAt: String
    var signature: Data
    var keyID: String?

    enum CodingKeys: String, CodingKey {
        case seq, signature
        case entryHash = "entry_hash"
        case signedAt = "signed_at"
        case keyID = "key_id"
    }
}
