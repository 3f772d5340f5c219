import CofferCrypto
import Foundation
import GRDB
import GRDBSQLite

// Tokens, sessions, web sessions, uploads, the audit log and maintenance.
extension SQLiteMetadataStore {
    // MARK: - Access

    func token(hash: Data) async throws(CofferRegistryError) -> APITokenRecord? {
        try await read { db in
            try SQLRequest<APITokenRecord>(
                literal: "SELECT * FROM \(APITokenRecord.self) WHERE \(APITokenRecord.Columns.tokenHash) = \(hash)",
                cached: true
            ).fetchOne(db)
        }
    }

    func tokens() async throws(CofferRegistryError) -> [APITokenRecord] {
        try await read { db in try APITokenRecord.order(APITokenRecord.Columns.createdAt).fetchAll(db) }
    }

    private static let sessionSelect = """
        SELECT s.*, m.name AS model_name, v.version AS version_name FROM sessions s
        JOIN versions v ON v.id = s.version_id JOIN models m ON m.id = v.model_id
        """

    private static func sessionRow(_ row: Row) throws -> SessionRow {
        SessionRow(session: try SessionRecord(row: row), model: row["model_name"], version: row["version_name"])
    }

    func session(_ selector: SessionSelector) async throws(CofferRegistryError) -> SessionRow? {
        try await read { db in
            switch selector {
            case .tokenHash(let hash):
                try Self.firstRow(db.cachedStatement(sql: "\(Self.sessionSelect) WHERE s.token_hash = ?"), [hash], Self.sessionRow)
            case .id(let id):
                try Self.firstRow(db.cachedStatement(sql: "\(Self.sessionSelect) WHERE s.id = ?"), [id], Self.sessionRow)
            }
        }
    }

    func sessions() async throws(CofferRegistryError) -> [SessionRow] {
        try await read { db in try Self.rows(db.makeStatement(sql: "\(Self.sessionSelect) ORDER BY s.created_at"), [], Self.sessionRow) }
    }

    func sessions(of principal: String) async throws(CofferRegistryError) -> [SessionRow] {
        try await read { db in try Self.sessions(of: principal, db) }
    }

    /// `principal`'s sessions, read in the caller's transaction.
    static func sessions(of principal: String, _ db: Database) throws -> [SessionRow] {
        try rows(db.cachedStatement(sql: "\(sessionSelect) WHERE s.principal = ? ORDER BY s.created_at"), [principal], sessionRow)
    }

    /// Refuses the commit in progress when `check` says so of the rows as they are now (see ``UnitOfWork/HoldingCheck``).
    static func enforce(_ check: UnitOfWork.HoldingCheck, _ db: Database) throws {
        switch check.rows {
        case .sessions(let refusal):
            if let reason = refusal(try sessions(of: check.principal, db)) { throw CofferRegistryError.sessionRefused(reason) }
        case .uploads(let refusal):
            let uploads = try UploadRecord.filter(Column("principal") == check.principal).fetchAll(db)
            if let reason = refusal(uploads) { throw CofferRegistryError.tooManyUploads(reason) }
        }
    }

    func takeSessionUses(id: String, count: Int) async throws(CofferRegistryError) -> Bool {
        let (taken, exhausted) = try await write { db in
            try db.cachedStatement(
                sql: "UPDATE sessions SET uses = uses + ?2 WHERE id = ?1 AND revoked_at IS NULL AND (max_uses IS NULL OR uses + ?2 <= max_uses)"
            ).execute(arguments: [id, count])
            guard db.changesCount == 1 else { return (false, false) }
            // The last use destroys the key copy: an exhausted session opens nothing, even from a copy of the database.
            try db.cachedStatement(sql: "UPDATE sessions SET wrapped_key = NULL WHERE id = ? AND max_uses IS NOT NULL AND uses >= max_uses")
                .execute(arguments: [id])
            let exhausted = db.changesCount == 1
            if exhausted { try Self.oweTruncation(db) }
            return (true, exhausted)
        }
        if exhausted { try? await truncateLogIfOwed(waiting: true) }  // as in `commit`
        return taken
    }

    func takeRateToken(session: String, rate: Double, burst: Int, now: Double) async throws(CofferRegistryError) -> Double? {
        // A row, not this process's memory: servers sharing the registry's directory share the bucket.
        try await write { db in
            let bucket =
                try SessionRateRecord.fetchOne(db, key: session) ?? SessionRateRecord(sessionID: session, tokens: Double(burst), updatedAt: now)
            let (after, wait) = bucket.taking(rate: rate, burst: burst, now: now)
            try after.save(db)
            return wait
        }
    }

    func addWebSession(_ record: WebSessionRecord, keepingAtMost: Int, now: String) async throws(CofferRegistryError) {
        try await write { db in
            try WebSessionRecord.filter(WebSessionRecord.Columns.expiresAt <= now).deleteAll(db)
            let own = try WebSessionRecord.filter(WebSessionRecord.Columns.principal == record.principal)
                .order(WebSessionRecord.Columns.createdAt.desc).fetchAll(db)
            for old in own.dropFirst(max(0, keepingAtMost - 1)) { try old.delete(db) }
            try record.insert(db)
        }
    }

    func webSession(idHash: Data) async throws(CofferRegistryError) -> WebSessionRecord? {
        try await read { db in try WebSessionRecord.fetchOne(db, key: idHash) }
    }

    func removeWebSession(idHash: Data) async throws(CofferRegistryError) {
        try await write { db in _ = try WebSessionRecord.deleteOne(db, key: idHash) }
    }

    func setWebNotice(idHash: Data, notice: String?, status: Int64?, at: String?, binding: Data) async throws(CofferRegistryError) {
        try await write { db in
            try db.cachedStatement(sql: "UPDATE web_sessions SET notice = ?, notice_status = ?, notice_at = ?, binding = ? WHERE id_hash = ?")
                .execute(arguments: [notice, status, at, binding, idHash])
        }
    }

    func upload(id: String) async throws(CofferRegistryError) -> UploadRecord? {
        try await read { db in try UploadRecord.fetchOne(db, key: id) }
    }

    func uploads(principal: String?) async throws(CofferRegistryError) -> [UploadRecord] {
        try await read { db in
            var request = UploadRecord.all()
            if let principal { request = request.filter(Column("principal") == principal) }
            return try request.fetchAll(db)
        }
    }

    func pendingBlobs(before time: String) async throws(CofferRegistryError) -> [String] {
        try await read { db in try String.fetchAll(db, sql: "SELECT digest FROM pending_blobs WHERE started_at < ?", arguments: [time]) }
    }

    // MARK: - Audit log

    func lastAuditEntry() async throws(CofferRegistryError) -> (seq: Int64, hash: Data)? {
        try await read { db in try Self.lastAuditEntry(db) }
    }

    func auditEntries(since at: String?) async throws(CofferRegistryError) -> [AuditEntryRecord] {
        try await read { db in
            var request = AuditEntryRecord.order(AuditEntryRecord.Columns.seq)
            if let at { request = request.filter(AuditEntryRecord.Columns.at >= at) }
            return try request.fetchAll(db)
        }
    }

    func auditEntries(before seq: Int64?, principal: String?, action: String?, limit: Int) async throws(CofferRegistryError) -> [AuditEntryRecord] {
        try await read { db in
            var request = AuditEntryRecord.order(AuditEntryRecord.Columns.seq.desc).limit(limit)
            if let seq { request = request.filter(AuditEntryRecord.Columns.seq < seq) }
            if let principal { request = request.filter(AuditEntryRecord.Columns.principal == principal) }
            if let action { request = request.filter(AuditEntryRecord.Columns.action == action) }
            return try request.fetchAll(db)
        }
    }

    func lastAuditHead() async throws(CofferRegistryError) -> AuditHeadRecord? {
        try await read { db in try AuditHeadRecord.order(AuditHeadRecord.Columns.seq.desc).fetchOne(db) }
    }

    func forEachAuditEntry(
        after first: Int64,
        through last: Int64?,
        _ body: (_ seq: Int64, _ column: (Int) -> UnsafeRawBufferPointer) throws(CofferRegistryError) -> Bool
    ) async throws(CofferRegistryError) {
        // SQLite's own row loop, with each entry's fields read from where SQLite holds them: GRDB's rows (a Data or
        // String per column) made verifying a million entries take 4-7 s instead of about 2.
        let walk = {
            (body: @escaping (Int64, (Int) -> UnsafeRawBufferPointer) throws(CofferRegistryError) -> Bool) async throws(CofferRegistryError) in
            let unchecked = UncheckedBody(body: body)
            try await self.read { db in
                let statement = try db.makeStatement(
                    sql: """
                        SELECT seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash FROM audit_log
                        WHERE seq > ? AND seq <= ? ORDER BY seq
                        """
                )
                try statement.setArguments([first, last ?? Int64.max])
                let handle = statement.sqliteStatement
                func column(_ index: Int) -> UnsafeRawBufferPointer {
                    let start = sqlite3_column_blob(handle, Int32(index))
                    return UnsafeRawBufferPointer(start: start, count: start == nil ? 0 : Int(sqlite3_column_bytes(handle, Int32(index))))
                }
                while true {
                    let step = sqlite3_step(handle)
                    if step == SQLITE_DONE { break }
                    guard step == SQLITE_ROW else { throw DatabaseError(resultCode: ResultCode(rawValue: step), message: db.lastErrorMessage) }
                    guard try unchecked.body(sqlite3_column_int64(handle, 0), column) else { break }
                }
            }
        }
        try await withoutActuallyEscaping(body) { (body) async throws(CofferRegistryError) in try await walk(body) }
    }

    func auditHeads(after seq: Int64) async throws(CofferRegistryError) -> [AuditHeadRecord] {
        try await read { db in try AuditHeadRecord.filter(AuditHeadRecord.Columns.seq > seq).order(AuditHeadRecord.Columns.seq).fetchAll(db) }
    }

    func lastAuditHeadSeq() async throws(CofferRegistryError) -> Int64 {
        try await read { db in try Int64.fetchOne(db, sql: "SELECT max(seq) FROM audit_heads") ?? 0 }
    }

    // MARK: - Maintenance

    func integrityProblems() async throws(CofferRegistryError) -> [String] {
        let result = try await read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
        return result == ["ok"] ? [] : ["SQLite integrity_check: \(result.joined(separator: "; "))"]
    }

    func materializedTables() async throws(CofferRegistryError) -> MaterializedTables {
        try await read { db in
            var tables = MaterializedTables()
            tables.principals = try PrincipalRecord.fetchAll(db)
            tables.grants = try GrantRecord.fetchAll(db)
            tables.trusted = try TrustedSignerRecord.fetchAll(db)
            tables.aliases = try Row.fetchAll(
                db,
                sql: "SELECT m.name, a.alias, v.version FROM aliases a JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id"
            ).map { .init(model: $0[0], alias: $0[1], version: $0[2]) }
            tables.policies = try PolicyRecord.fetchAll(db)
            tables.budgets = try BudgetRecord.fetchAll(db)
            tables.charges = try Row.fetchAll(
                db,
                sql: """
                    SELECT c.dataset_id, m.name, v.version FROM budget_charges c JOIN versions v ON v.id = c.version_id
                    JOIN models m ON m.id = v.model_id
                    """
            ).map { .init(dataset: $0[0], model: $0[1], version: $0[2]) }
            tables.erasures = Self.heads(try Row.fetchAll(db, sql: "\(Self.headSelect) WHERE v.id IN (SELECT version_id FROM erasures)"))
            tables.keys = try RegistryKeyRecord.fetchAll(db)
            tables.tokens = try APITokenRecord.fetchAll(db)
            tables.versions = Self.heads(try Row.fetchAll(db, sql: Self.headSelect))
            return tables
        }
    }
}

/// A non-escaping closure carried into GRDB's read block, which runs it before returning.
private struct UncheckedBody: @unchecked Sendable {
    let body: (Int64, (Int) -> UnsafeRawBufferPointer) throws(CofferRegistryError) -> Bool
}
