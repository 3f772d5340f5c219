import Foundation

/// One page of the audit log, newest entry first.
public struct AuditPage: Sendable, Equatable {
    public var entries: [AuditEntry]
    /// The `before` that asks for the next, older page; nil on the last page.
    public var next: Int64?
}

/// The newest audit head the registry signed.
public struct SignedAuditHead: Sendable, Equatable {
    /// The entry the head covers (and every entry before it).
    public var seq: Int64
    public var signedAt: String
    public var keyID: String?
}

extension Registry {
    /// Entries the filter matches with a sequence number below `before` (from the newest when nil), newest first, at
    /// most `limit`: keyset pages, each found from the primary key, so the thousandth page costs what the first does.
    /// Principal and action are filtered by the store; the model (and namespace) by ``AuditFilter/matches(_:)``.
    ///
    /// ```swift
    /// let first = try await registry.auditPage(AuditFilter(principal: "bob"), limit: 50)
    /// let second = try await registry.auditPage(AuditFilter(principal: "bob"), before: first.next, limit: 50)
    /// ```
    public func auditPage(_ filter: AuditFilter, before: Int64? = nil, limit: Int = 50) async throws(CofferRegistryError) -> AuditPage {
        guard (1...1000).contains(limit) else { throw .invalidInput("an audit page holds from 1 to 1000 entries, not \(limit)") }
        // Entries store UTC with milliseconds: `since` is compared in the same shape.
        let since = try filter.since.map { text throws(CofferRegistryError) in Self.timestamp(try Self.parseTime(text, field: "since")) }
        let filter = filter.model == nil ? filter : filter.including(try await sessions())
        let chunk = filter.model == nil ? limit + 1 : max(4 * limit, 256)
        var entries: [AuditEntry] = []
        var cursor = before
        scan: while true {
            let rows = try await metadata.auditEntries(before: cursor, principal: filter.principal, action: filter.action, limit: chunk)
            for row in rows {
                // Entries are appended in time order: one older than `since` ends the scan.
                if let since, row.at < since { break scan }
                let entry = Self.entry(row)
                if filter.matches(entry) { entries.append(entry) }
                if entries.count > limit { break scan }
            }
            guard rows.count == chunk, let last = rows.last else { break }
            cursor = last.seq
        }
        let more = entries.count > limit
        if more { entries.removeLast() }
        return AuditPage(entries: entries, next: more ? entries.last?.seq : nil)
    }

    /// The newest signed audit head, if the log has one (``verifyAudit()`` checks its signature).
    public func lastSignedAuditHead() async throws(CofferRegistryError) -> SignedAuditHead? {
        try await metadata.lastAuditHead().map { SignedAuditHead(seq: $0.seq, signedAt: $0.signedAt, keyID: $0.keyID) }
    }

    static func entry(_ row: AuditEntryRecord) -> AuditEntry {
        AuditEntry(
            seq: row.seq,
            at: row.at,
            principal: row.principal,
            action: row.action,
            target: row.target,
            outcome: AuditEntry.Outcome(rawValue: row.outcome) ?? .failed,
            reason: row.reason
        )
    }
}
