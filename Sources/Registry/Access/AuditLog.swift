public import CofferCrypto
public import Foundation
import GRDB
import GRDBSQLite
import Synchronization

/// One entry of the audit log.
public struct AuditEntry: Sendable, Equatable, Codable {
    public enum Outcome: String, Sendable, Codable { case ok, refused, failed }

    public var seq: Int64
    public var at: String
    public var principal: String
    public var action: String
    public var target: String
    public var outcome: Outcome
    public var reason: String

    func hash(previous: [UInt8]) -> [UInt8] {
        var message = AuditMessage()
        message.start(seq: seq)
        for field in [at, principal, action, target, outcome.rawValue, reason] { message.field(field.utf8) }
        return message.hash(previous: previous)
    }
}

/// The bytes an entry's hash covers: "coffer/v1/audit" || u64be(seq) || each field as u32be(length) || UTF-8 ||
/// prev_hash (docs/FORMAT.md), fields in the order at, principal, action, target, outcome, reason. One buffer,
/// reused from entry to entry.
struct AuditMessage {
    private var bytes: [UInt8] = []

    mutating func start(seq: Int64) {
        bytes.removeAll(keepingCapacity: true)
        bytes.append(contentsOf: "coffer/v1/audit".utf8)
        Self.appendBigEndian(UInt64(seq), to: &bytes)
    }

    mutating func field(_ content: some Collection<UInt8>) {
        Self.appendBigEndian(UInt32(content.count), to: &bytes)
        bytes.append(contentsOf: content)
    }

    mutating func hash(previous: some Collection<UInt8>) -> [UInt8] {
        bytes.append(contentsOf: previous)
        return Digest.sha256(bytes)
    }

    static func appendBigEndian(_ value: some FixedWidthInteger, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// What `audit verify` found.
public struct AuditReport: Sendable, Equatable {
    public var entries: Int
    /// The highest sequence number covered by a valid registry signature (0: none).
    public var signedThrough: Int64
    /// Entries after the last signed head: chained, but not yet signed.
    public var unsigned: Int
}

extension Registry {
    static let genesisHash = [UInt8](repeating: 0, count: 32)

    /// Appends an entry, chained to the last one, in its own write transaction.
    func audit(principal: String, action: String, target: String, outcome: AuditEntry.Outcome, reason: String) throws(CofferRegistryError) {
        try database.write { db in
            try Self.appendAudit(db, principal: principal, action: action, target: target, outcome: outcome, reason: reason)
        }
    }

    /// Appends an entry inside the caller's write transaction, so that it commits (or not) with what it records.
    static func appendAudit(
        _ db: Database,
        principal: String,
        action: String,
        target: String,
        outcome: AuditEntry.Outcome,
        reason: String
    ) throws {
        let last = try Row.fetchOne(db.cachedStatement(sql: "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1"))
        let previous: [UInt8] = last.map { Array(($0["entry_hash"] as Data)) } ?? genesisHash
        let entry = AuditEntry(
            seq: (last?["seq"] ?? 0) + 1,
            at: now(),
            principal: principal,
            action: action,
            target: target,
            outcome: outcome,
            reason: reason
        )
        try db.cachedStatement(
            sql: """
                INSERT INTO audit_log (seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(
            arguments: [
                entry.seq, entry.at, entry.principal, entry.action, entry.target, entry.outcome.rawValue, entry.reason, Data(previous),
                Data(entry.hash(previous: previous)),
            ]
        )
    }

    /// Entries at or after `since` (RFC 3339), oldest first.
    ///
    /// - Parameter since: an RFC 3339 time (any offset, fractional seconds optional); anything else is refused.
    public func auditEntries(since text: String? = nil) throws(CofferRegistryError) -> [AuditEntry] {
        // Entries store UTC with milliseconds, so the comparison is between strings of the same shape.
        let since = try text.map { text throws(CofferRegistryError) in Self.timestamp(try Self.parseTime(text, field: "since")) }
        return try database.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT seq, at, principal, action, target, outcome, reason FROM audit_log WHERE ? IS NULL OR at >= ? ORDER BY seq",
                arguments: [since, since]
            ).map { row in
                AuditEntry(
                    seq: row["seq"],
                    at: row["at"],
                    principal: row["principal"],
                    action: row["action"],
                    target: row["target"],
                    outcome: AuditEntry.Outcome(rawValue: row["outcome"]) ?? .failed,
                    reason: row["reason"]
                )
            }
        }
    }

    /// The message the registry signs for a chain head.
    static func headMessage(seq: Int64, hash: [UInt8]) -> [UInt8] {
        var message = Array("coffer/v1/audit-head".utf8)
        AuditMessage.appendBigEndian(UInt64(seq), to: &message)
        return message + hash
    }

    /// Signs the current chain head with the registry's current key (which the caller unlocked), and a fresh state
    /// head; with `checkpoint`, also marks the audit head in the ledger (an `audit.head` record), so that truncating
    /// the log below it breaks the ledger's chain too. Returns the entry signed through (0 for an empty log).
    @discardableResult
    public func signAuditHead(
        with key: UnlockedIdentity,
        checkpoint: Bool = true,
        headLifetime: TimeInterval = 3600
    ) throws(CofferRegistryError)
        -> Int64
    {
        let current = try identity
        guard key.publicIdentity.keyID == current.keyID else {
            throw .refused("audit heads are signed with the registry's current key (\(Self.identityName).key, \(current.keyID))")
        }
        let state = try database.write { db -> LedgerState in
            var state = try refreshed(ledger.withLock { $0 }, db: db)
            if let (seq, hash) = try Self.lastAuditEntry(db) {
                if try Int64.fetchOne(db, sql: "SELECT 1 FROM audit_heads WHERE seq = ?", arguments: [seq]) == nil {
                    let signature = key.identity.signEd25519(Self.headMessage(seq: seq, hash: hash))
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO audit_heads (seq, entry_hash, signed_at, signature, key_id) VALUES (?, ?, ?, ?, ?)",
                        arguments: [seq, Data(hash), Self.now(), Data(signature), current.keyID]
                    )
                }
                if checkpoint, state.auditHead?.seq != seq {
                    (state, _, _) = try append(.auditHead(seq: seq, hash: Digest.hex(hash)), signer: Signer(key), db: db)
                }
            }
            try Self.storeStateHead(StateHead.sign(state: state, audit: try Self.lastAuditEntry(db), lifetime: headLifetime, key: key), db: db)
            return state
        }
        try adopt(state)
        return try database.read { db in try Self.lastAuditEntry(db)?.seq } ?? 0
    }

    /// What a server calls every few seconds: signs the audit head when entries were appended since the last signed
    /// head, re-signs the state head when the ledger or log grew or half its lifetime passed, and marks the audit head
    /// in the ledger when the last mark is older than `checkpointInterval`. Returns the entry signed through, if any.
    @discardableResult
    public func signAuditHeadIfUnsigned(
        with key: UnlockedIdentity,
        headLifetime: TimeInterval = 3600,
        checkpointInterval: TimeInterval = 300,
        now: Date = Date()
    ) throws(CofferRegistryError) -> Int64? {
        let (latest, signed, head) = try database.read { db in
            (
                try Int64.fetchOne(db, sql: "SELECT max(seq) FROM audit_log") ?? 0,
                try Int64.fetchOne(db, sql: "SELECT max(seq) FROM audit_heads") ?? 0,
                try Self.storedStateHead(db)
            )
        }
        let state = try ledgerState()
        let stale =
            head.map { head in
                head.ledgerSeq != state.seq || head.auditSeq != latest
                    || (Self.date(head.at).map { now.timeIntervalSince($0) > headLifetime / 2 } ?? true)
            } ?? true
        guard latest > signed || stale else { return nil }
        let lastMark = try database.read { db in
            try Data.fetchOne(db, sql: "SELECT envelope FROM ledger WHERE kind = 'audit.head' ORDER BY seq DESC LIMIT 1")
        }
        let markAge = lastMark.flatMap { try? Self.parse(Array($0)) }.flatMap { Self.date($0.at) }.map { now.timeIntervalSince($0) }
        let checkpoint = latest > (state.auditHead?.seq ?? 0) && (markAge ?? .infinity) >= checkpointInterval
        return try signAuditHead(with: key, checkpoint: checkpoint, headLifetime: headLifetime)
    }

    /// The audit entry the stored state head names, when the head verifies under the key chain at its ledger record
    /// and names that record's hash (a head that does not is reported: it was forged or edited).
    func signedHeadAuditMark(state: LedgerState) throws(CofferRegistryError) -> (Int64, [UInt8])? {
        guard let envelope = try database.read({ db in try Self.storedStateHeadEnvelope(db) }) else { return nil }
        let head = try StateHead.verify(
            envelope,
            state: state,
            hashAt: { seq in self.storedRecordHash(seq) },
            currentKeyAt: { seq in state.keys.last { $0.since <= seq }?.identity },
            remembered: nil,
            now: .distantPast
        )
        guard head.auditSeq > 0, let hash = Digest.bytes(fromHex: head.auditHash) else { return nil }
        return (head.auditSeq, hash)
    }

    /// The hash of the record stored at `seq`, or nil.
    func storedRecordHash(_ seq: Int64) -> String? {
        let stored: Data?? = try? database.read { db in try Data.fetchOne(db, sql: "SELECT envelope FROM ledger WHERE seq = ?", arguments: [seq]) }
        guard let envelope = stored ?? nil else { return nil }
        return try? Self.parse(Array(envelope)).hash
    }

    static func lastAuditEntry(_ db: Database) throws -> (seq: Int64, hash: [UInt8])? {
        try Row.fetchOne(db, sql: "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").map {
            ($0["seq"], Array($0["entry_hash"] as Data))
        }
    }

    /// An RFC 3339 time as a query gives it (any offset, fractional seconds optional); anything else is refused,
    /// naming the `field`.
    public static func parseTime(_ text: String, field: String) throws(CofferRegistryError) -> Date {
        guard text.utf8.count <= 64, let date = Self.date(text) else {
            throw .invalidInput("\(field): '\(text.prefix(64))' is not an RFC 3339 time such as 2026-11-27T12:00:00Z")
        }
        return date
    }

    static func date(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text)
    }

    /// Recomputes the chain from the first entry and checks every signed head against the registry's key.
    ///
    /// - Throws: ``CofferRegistryError/tampered(_:)`` naming the first bad entry: an edited entry (its hash no longer
    ///   matches), a deleted, inserted or reordered one (a gap in the sequence or a broken link), or a chain rewritten
    ///   under a signed head.
    public func verifyAudit() throws(CofferRegistryError) -> AuditReport {
        let heads = try database.read { db in
            try Row.fetchAll(db, sql: "SELECT seq, entry_hash, signature, key_id, signed_at FROM audit_heads ORDER BY seq").map {
                (
                    seq: $0["seq"] as Int64, hash: Array($0["entry_hash"] as Data), signature: Array($0["signature"] as Data),
                    keyID: $0["key_id"] as String?, signedAt: $0["signed_at"] as String
                )
            }
        }
        // Only keys of the verified chain count; a retired key's heads count only up to its retirement.
        let state = try ledgerState()
        for head in heads {
            let message = Self.headMessage(seq: head.seq, hash: head.hash)
            guard let key = state.key(head.keyID ?? state.keys[0].identity.keyID),
                SignatureVerifier.verifyEd25519(signature: head.signature, message: message, publicKey: key.identity.ed25519)
            else {
                throw .tampered("audit head at entry \(head.seq) is not signed by a key of the registry's chain")
            }
            if let retired = key.retiredAt, head.signedAt > retired {
                throw .tampered("audit head at entry \(head.seq) is signed by key \(key.identity.keyID) after it was retired at \(retired)")
            }
        }
        var headsBySeq = Dictionary(uniqueKeysWithValues: heads.map { ($0.seq, $0.hash) })
        // Entries the ledger marked, and the last one this client saw, must still be there unchanged.
        var marks: [Int64: (hash: [UInt8], what: String)] = [:]
        if let mark = state.auditHead, let hash = Digest.bytes(fromHex: mark.hash) { marks[mark.seq] = (hash, "marked in the ledger") }
        if let seen = memory?.remembered(state.registry)?.audit, let hash = Digest.bytes(fromHex: seen.hash), marks[seen.seq] == nil {
            marks[seen.seq] = (hash, "verified before by this client")
        }
        // The newest state head the registry's key signed names an audit entry too (a server signs one every few
        // seconds): a log cut or rewritten after the ledger's last mark is caught by it.
        if let (seq, hash) = try signedHeadAuditMark(state: state), marks[seq] == nil {
            marks[seq] = (hash, "named by the registry's signed state head")
        }
        var pendingMarks = marks
        var count = 0
        var lastSeq: Int64 = 0
        var lastHash = Self.genesisHash
        let problem: String? = try database.read { db in
            var previous = Self.genesisHash
            // SQLite's own row loop, with each entry's fields hashed from where SQLite holds them: GRDB's rows
            // (a Data or String per column) made verifying a million entries take 4-7 s instead of about 2.
            let statement = try db.makeStatement(
                sql: "SELECT seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash FROM audit_log ORDER BY seq"
            )
            let handle = statement.sqliteStatement
            func column(_ index: Int32) -> UnsafeRawBufferPointer {
                let start = sqlite3_column_blob(handle, index)
                return UnsafeRawBufferPointer(start: start, count: start == nil ? 0 : Int(sqlite3_column_bytes(handle, index)))
            }
            var message = AuditMessage()
            while true {
                let step = sqlite3_step(handle)
                if step == SQLITE_DONE { break }
                guard step == SQLITE_ROW else { throw DatabaseError(resultCode: ResultCode(rawValue: step), message: db.lastErrorMessage) }
                let seq = sqlite3_column_int64(handle, 0)
                guard seq == lastSeq + 1 else { return "entry \(lastSeq + 1) is missing (deleted, or entries reordered)" }
                guard column(7).elementsEqual(previous) else {
                    return "entry \(seq) does not link to entry \(seq - 1) (inserted, deleted or reordered)"
                }
                message.start(seq: seq)
                for index in Int32(1)...6 { message.field(column(index)) }
                let hash = message.hash(previous: previous)
                guard column(8).elementsEqual(hash) else { return "entry \(seq) was edited (its hash does not match)" }
                if let signed = headsBySeq.removeValue(forKey: seq), signed != hash {
                    return "entries up to \(seq) were rewritten under a signed head"
                }
                if let mark = pendingMarks.removeValue(forKey: seq), mark.hash != hash {
                    return "entries up to \(seq) were rewritten (entry \(seq) was \(mark.what))"
                }
                previous = hash
                lastHash = hash
                lastSeq = seq
                count += 1
            }
            return nil
        }
        if let problem { throw .tampered("audit log: \(problem)") }
        if let missing = headsBySeq.keys.min() { throw .tampered("audit log: entry \(missing), covered by a signed head, is gone (truncated)") }
        if let (seq, mark) = pendingMarks.min(by: { $0.key < $1.key }) {
            throw .tampered("audit log: entry \(seq), \(mark.what), is gone (truncated or rolled back)")
        }
        if lastSeq > 0 {
            try memory?.remember(state.registry) { remembered in
                guard remembered != nil, (remembered!.audit?.seq ?? 0) < lastSeq else { return }
                remembered!.audit = .init(seq: lastSeq, hash: Digest.hex(lastHash))
            }
        }
        let signedThrough = heads.last?.seq ?? 0
        return AuditReport(entries: count, signedThrough: signedThrough, unsigned: Int(lastSeq - signedThrough))
    }
}

extension Registry {
    /// Audits a refusal decided outside the registry's own checks (the HTTP server's authentication).
    public func recordRefusal(action: String, target: String, reason: String, principal: String = "-") throws(CofferRegistryError) {
        try audit(principal: principal, action: action, target: target, outcome: .refused, reason: reason)
    }
}
