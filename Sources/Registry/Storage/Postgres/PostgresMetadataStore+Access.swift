import CofferCrypto
import Foundation
import NIOCore
import PostgresNIO

/// Principals, grants, tokens, sessions, and the audit log.
extension PostgresMetadataStore {
    // MARK: Access

    func token(hash: Data) async throws(CofferRegistryError) -> APITokenRecord? {
        try await fetchOne(APITokenRecord.self, "SELECT * FROM api_tokens WHERE token_hash = \(ByteBuffer(bytes: hash))")
    }

    func tokens() async throws(CofferRegistryError) -> [APITokenRecord] {
        try await fetchAll(APITokenRecord.self, "SELECT * FROM api_tokens ORDER BY created_at COLLATE \"C\", id")
    }

    private static let sessionSelect = """
        SELECT s.*, m.name AS model_name, v.version AS version_name FROM sessions s
        JOIN versions v ON v.id = s.version_id JOIN models m ON m.id = v.model_id
        """

    private func sessionRows(_ query: PostgresQuery) async throws(CofferRegistryError) -> [SessionRow] {
        try await opening {
            () async throws(CofferRegistryError) -> [SessionRow] in
            var sessions: [SessionRow] = []
            for row in try await database.query(query) { sessions.append(try sessionRow(row)) }
            return sessions
        } open: { sessions throws(CofferRegistryError) in
            var opened: [SessionRow] = []
            for var session in sessions {
                if let sealed = session.session.wrappedKey {
                    session.session.wrappedKey = Data(
                        try keys.open(Array(sealed), column: .sessionWrappedKey, rowKey: SealedColumn.sessionWrappedKey.rowKey([session.session.id]))
                    )
                }
                opened.append(session)
            }
            return opened
        }
    }

    func session(_ selector: SessionSelector) async throws(CofferRegistryError) -> SessionRow? {
        switch selector {
        case .tokenHash(let hash): try await sessionRows("\(unescaped: Self.sessionSelect) WHERE s.token_hash = \(ByteBuffer(bytes: hash))").first
        case .id(let id): try await sessionRows("\(unescaped: Self.sessionSelect) WHERE s.id = \(id)").first
        }
    }

    /// A session as stored: its key copy, if any, still sealed.
    private func sessionRow(_ row: PostgresRow) throws(CofferRegistryError) -> SessionRow {
        SessionRow(
            session: try row.record(SessionRecord.self),
            model: try decode(row, String.self, column: "model_name"),
            version: try decode(row, String.self, column: "version_name")
        )
    }

    func sessions(of principal: String) async throws(CofferRegistryError) -> [SessionRow] {
        var sessions: [SessionRow] = []
        for row in try await database.query("\(unescaped: Self.sessionSelect) WHERE s.principal = \(principal)") {
            sessions.append(try sessionRow(row))
        }
        return sessions
    }

    /// `principal`'s sessions, read in the caller's transaction; key copies stay sealed (a check needs only whether
    /// there is one).
    func sessions(of principal: String, on connection: PostgresConnection) async throws -> [SessionRow] {
        var sessions: [SessionRow] = []
        for row in try await connection.rows("\(unescaped: Self.sessionSelect) WHERE s.principal = \(principal)") {
            sessions.append(try sessionRow(row))
        }
        return sessions
    }

    /// Refuses the commit in progress when `check` says so of the rows as they are now (see ``UnitOfWork/HoldingCheck``),
    /// under a lock every check of that principal waits for, to COMMIT: no other limited row is added meanwhile.
    func enforce(_ check: UnitOfWork.HoldingCheck, on connection: PostgresConnection) async throws {
        try await connection.advisoryTransactionLock(PostgresAdvisoryLock.principalLimits, name: check.principal)
        switch check.rows {
        case .sessions(let refusal):
            if let reason = refusal(try await sessions(of: check.principal, on: connection)) { throw CofferRegistryError.sessionRefused(reason) }
        case .uploads(let refusal):
            let uploads = try await connection.fetchAll(UploadRecord.self, "SELECT * FROM uploads WHERE principal = \(check.principal)")
            if let reason = refusal(uploads) { throw CofferRegistryError.tooManyUploads(reason) }
        }
    }

    func sessions() async throws(CofferRegistryError) -> [SessionRow] {
        try await sessionRows("\(unescaped: Self.sessionSelect) ORDER BY s.created_at COLLATE \"C\", s.id")
    }

    func takeSessionUses(id: String, count: Int) async throws(CofferRegistryError) -> Bool {
        // One UPDATE on the shared row: two servers taking the last use at once cannot both succeed (the second waits
        // for the first's row lock, then finds uses = max_uses). The last use clears the key copy in the same
        // statement and marks a rotation due, so no copy of it stays openable.
        let exhausted: Bool? = try await database.transaction { connection in
            let rows = try await connection.rows(
                """
                UPDATE sessions SET uses = uses + \(count),
                    wrapped_key = CASE WHEN max_uses IS NOT NULL AND uses + \(count) >= max_uses THEN NULL ELSE wrapped_key END
                WHERE id = \(id) AND revoked_at IS NULL AND (max_uses IS NULL OR uses + \(count) <= max_uses)
                RETURNING max_uses IS NOT NULL AND uses >= max_uses
                """
            )
            guard let row = rows.first else { return nil }
            let last = try row.decode(Bool.self)
            if last { try await EpochKeys.markRotationDue(on: connection) }
            return last
        }
        guard let exhausted else { return false }
        if exhausted { try await keys.rotateIfDue(database) }
        return true
    }

    func takeRateToken(session: String, rate: Double, burst: Int, now: Double) async throws(CofferRegistryError) -> Double? {
        // The bucket row is locked from its read to its write: replicas take tokens one at a time.
        try await database.transaction { connection in
            try await connection.rows(
                "INSERT INTO session_rates (session_id, tokens, updated_at) VALUES (\(session), \(Double(burst)), \(now)) ON CONFLICT DO NOTHING"
            )
            guard
                let bucket = try await connection.fetchOne(
                    SessionRateRecord.self,
                    "SELECT * FROM session_rates WHERE session_id = \(session) FOR UPDATE"
                )
            else { throw CofferRegistryError.database("the rate bucket of session \(session) vanished") }
            let (after, wait) = bucket.taking(rate: rate, burst: burst, now: now)
            try await connection.rows(
                "UPDATE session_rates SET tokens = \(after.tokens), updated_at = \(after.updatedAt) WHERE session_id = \(session)"
            )
            return wait
        }
    }

    func addWebSession(_ record: WebSessionRecord, keepingAtMost: Int, now: String) async throws(CofferRegistryError) {
        try await database.transaction { connection in
            try await connection.rows("DELETE FROM web_sessions WHERE expires_at COLLATE \"C\" <= \(now)")
            try await connection.rows(
                """
                DELETE FROM web_sessions WHERE id_hash IN (SELECT id_hash FROM web_sessions WHERE principal = \(record.principal)
                ORDER BY created_at COLLATE "C" DESC OFFSET \(max(0, keepingAtMost - 1)))
                """
            )
            try await connection.rows(
                """
                INSERT INTO web_sessions (id_hash, token_hash, principal, created_at, expires_at, binding)
                VALUES (\(ByteBuffer(bytes: record.idHash)), \(ByteBuffer(bytes: record.tokenHash)), \(record.principal), \(record.createdAt),
                \(record.expiresAt), \(ByteBuffer(bytes: record.binding)))
                """
            )
        }
    }

    func webSession(idHash: Data) async throws(CofferRegistryError) -> WebSessionRecord? {
        try await fetchOne(WebSessionRecord.self, "SELECT * FROM web_sessions WHERE id_hash = \(ByteBuffer(bytes: idHash))")
    }

    func removeWebSession(idHash: Data) async throws(CofferRegistryError) {
        try await database.transaction { connection in
            _ = try await connection.rows("DELETE FROM web_sessions WHERE id_hash = \(ByteBuffer(bytes: idHash))")
        }
    }

    func setWebNotice(idHash: Data, notice: String?, status: Int64?, at: String?, binding: Data) async throws(CofferRegistryError) {
        try await database.transaction { connection in
            _ = try await connection.rows(
                """
                UPDATE web_sessions SET notice = \(notice), notice_status = \(status), notice_at = \(at), binding = \(ByteBuffer(bytes: binding))
                WHERE id_hash = \(ByteBuffer(bytes: idHash))
                """
            )
        }
    }

    func upload(id: String) async throws(CofferRegistryError) -> UploadRecord? {
        try await fetchOne(UploadRecord.self, "SELECT * FROM uploads WHERE id = \(id)")
    }

    func uploads(principal: String?) async throws(CofferRegistryError) -> [UploadRecord] {
        try await fetchAll(UploadRecord.self, "SELECT * FROM uploads WHERE \(principal)::text IS NULL OR principal = \(principal) ORDER BY id")
    }

    func pendingBlobs(before time: String) async throws(CofferRegistryError) -> [String] {
        try await column(String.self, "SELECT digest FROM pending_blobs WHERE started_at < \(time) ORDER BY digest")
    }

    // MARK: Audit log

    func lastAuditEntry() async throws(CofferRegistryError) -> (seq: Int64, hash: Data)? {
        guard let row = try await database.query("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").first else { return nil }
        let (seq, hash) = try reading { try row.decode((Int64, Data).self) }
        return (seq, hash)
    }

    func auditEntries(since at: String?) async throws(CofferRegistryError) -> [AuditEntryRecord] {
        try await fetchAll(AuditEntryRecord.self, "SELECT * FROM audit_log WHERE \(at)::text IS NULL OR at >= \(at) ORDER BY seq")
    }

    func auditEntries(before seq: Int64?, principal: String?, action: String?, limit: Int) async throws(CofferRegistryError) -> [AuditEntryRecord] {
        try await fetchAll(
            AuditEntryRecord.self,
            """
            SELECT * FROM audit_log WHERE (\(seq)::bigint IS NULL OR seq < \(seq)) AND (\(principal)::text IS NULL OR principal = \(principal))
            AND (\(action)::text IS NULL OR action = \(action)) ORDER BY seq DESC LIMIT \(limit)
            """
        )
    }

    func lastAuditHead() async throws(CofferRegistryError) -> AuditHeadRecord? {
        try await fetchAll(AuditHeadRecord.self, "SELECT * FROM audit_heads ORDER BY seq DESC LIMIT 1").first
    }

    func forEachAuditEntry(
        after first: Int64,
        through last: Int64?,
        _ body: (_ seq: Int64, _ column: (Int) -> UnsafeRawBufferPointer) throws(CofferRegistryError) -> Bool
    ) async throws(CofferRegistryError) {
        // Rows are pulled from the server as the walk goes (postgres-nio asks for more only when the loop does), and
        // each entry's fields are copied into one reused buffer: memory stays flat however long the chain is.
        var scratch: [UInt8] = []
        var ranges = [Range<Int>](repeating: 0..<0, count: 9)
        try await database.withConnection { connection in
            let through = last ?? Int64.max
            let rows = try await connection.query(
                """
                SELECT seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash FROM audit_log
                WHERE seq > \(first) AND seq <= \(through) ORDER BY seq
                """,
                logger: Self.logger
            )
            for try await row in rows {
                scratch.removeAll(keepingCapacity: true)
                var seq: Int64 = 0
                for (index, cell) in row.enumerated() {
                    if index == 0 {
                        seq = try cell.decode(Int64.self)
                        continue
                    }
                    let start = scratch.count
                    if let bytes = cell.bytes { scratch.append(contentsOf: bytes.readableBytesView) }
                    ranges[index] = start..<scratch.count
                }
                let keepGoing = try scratch.withUnsafeBytes { raw throws(CofferRegistryError) -> Bool in
                    try body(seq) { index in
                        guard (1...8).contains(index) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
                        return UnsafeRawBufferPointer(rebasing: raw[ranges[index]])
                    }
                }
                if !keepGoing { break }
            }
        }
    }

    func auditHeads(after seq: Int64) async throws(CofferRegistryError) -> [AuditHeadRecord] {
        try await fetchAll(AuditHeadRecord.self, "SELECT * FROM audit_heads WHERE seq > \(seq) ORDER BY seq")
    }

    func lastAuditHeadSeq() async throws(CofferRegistryError) -> Int64 {
        try await scalar(Int64.self, "SELECT coalesce(max(seq), 0) FROM audit_heads") ?? 0
    }
}
