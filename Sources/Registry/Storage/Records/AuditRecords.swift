import Foundation

// The rows of the audit log and its signed heads.
// How columns and values are written: VersionRecords.swift.

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
