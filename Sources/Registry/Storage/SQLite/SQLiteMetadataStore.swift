import CSQLiteShim
import CofferCrypto
import Foundation
import GRDB
import GRDBSQLite
import Synchronization

/// The embedded metadata store: `registry.sqlite` in the home directory (WAL, a busy timeout, one writer at a time,
/// the migrations of `schema/` applied on open). Every call runs on GRDB's own queues, never on the cooperative pool.
///
/// Queries that run on every request (token, grants, resolving a reference, loading a version, the audit append)
/// go through `db.cachedStatement(sql:)`: GRDB otherwise compiles each statement anew and runs its authorizer
/// on it, which was 13% of the server's CPU under a metadata load.
final class SQLiteMetadataStore: MetadataStore {
    let writer: any DatabaseWriter
    let name: String
    let busyTimeout: Double
    /// A truncation of the log failed since the last that succeeded: the next commit tries again, without waiting.
    let truncationOwed = Atomic<Bool>(false)

    /// Opens (creating if needed) the database at `path`; `nil` for an in-memory database (tests).
    init(path: String?, busyTimeout: Double = 5) throws(CofferRegistryError) {
        name = "SQLite database \(path ?? ":memory:")"
        self.busyTimeout = busyTimeout
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        // GRDB 7 opens write transactions with BEGIN IMMEDIATE by itself.
        configuration.foreignKeysEnabled = true
        // Deleted rows (wrapped keys after an erasure or a rotation) are overwritten, not left in free pages.
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA secure_delete = ON")
            // The log stays when a command's connections close; SQLite's automatic checkpoint (1,000 pages) still copies
            // it into the database, and deletions are checkpointed at once (`commit`). A 1 MiB push went from 9 syncs
            // to 5: the checkpoint at close (2) and the new log the next command made (2) were per command.
            // An SQLite without the setting checkpoints at close, as before: the same data, only slower.
            _ = coffer_sqlite_keep_log_on_close(db.sqliteConnection)
        }
        do {
            if let path {
                let pool = try DatabasePool(path: path, configuration: configuration)
                // GRDB sets synchronous = NORMAL in WAL mode, where a commit reaches the disk only at the next
                // checkpoint: a push that printed "pushed" could vanish in a power cut. FULL syncs the log on
                // every commit (on the one writer connection; readers never write).
                try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
                writer = pool
            } else {
                writer = try DatabaseQueue(configuration: configuration)
            }
            try Self.migrator.migrate(writer)
        } catch {
            throw Self.translate(error)
        }
        // A truncation a reader blocked (`truncateLogIfOwed`), tried again without waiting for readers, so that a
        // command run beside a busy server is not slowed.
        if let pool = writer as? DatabasePool {
            try? pool.writeWithoutTransaction { db in try Self.truncateLogIfOwed(db, waitingFor: 0) }
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        for migration in EmbeddedSchema.migrations {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        return migrator
    }

    func close() async {}

    func leadsAuditHeads() async -> Bool { true }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(CofferRegistryError) -> T {
        do { return try await writer.read(body) } catch { throw Self.translate(error) }
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(CofferRegistryError) -> T {
        do { return try await writer.write(body) } catch { throw Self.translate(error) }
    }

    /// A read-only view of the database as it is now, which later commits do not change: `coffer migrate --to` copies
    /// every table from one, so the copy is one state of the registry even while it is in use.
    func snapshot() throws(CofferRegistryError) -> any DatabaseReader {
        guard let pool = writer as? DatabasePool else { return writer }
        do { return try pool.makeSnapshot() } catch { throw Self.translate(error) }
    }

    /// Copies the write-ahead log into the database and truncates it, so deleted content does not linger in the log.
    func checkpointAndTruncateLog() async throws(CofferRegistryError) {
        guard let pool = writer as? DatabasePool else { return }
        do { try await pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) } } catch { throw Self.translate(error) }
    }

    /// The `registry_meta` key a commit that deleted keys sets (a count), in its own transaction, and a truncation of
    /// the log removes: while it is there, frames of the log may still carry the deleted keys.
    static let truncationOwedKey = "log_truncation_owed"

    /// Truncates the log if a commit that deleted keys marked it so. A reader that holds an older snapshot (a server's,
    /// another command's) blocks the truncation: the deletion stands, and the mark makes the next open or commit try
    /// again. Only the commit that deleted keys waits for readers (the busy timeout), as its own write did.
    func truncateLogIfOwed(waiting: Bool) async throws(CofferRegistryError) {
        guard let pool = writer as? DatabasePool else { return }
        let busyTimeout = busyTimeout
        do {
            try await pool.writeWithoutTransaction { db in try Self.truncateLogIfOwed(db, waitingFor: waiting ? busyTimeout : 0) }
            truncationOwed.store(false, ordering: .relaxed)
        } catch {
            truncationOwed.store(true, ordering: .relaxed)
            throw Self.translate(error)
        }
    }

    /// The truncation on `db`, the writer connection outside a transaction. A mark a newer commit set meanwhile (another
    /// process's) stays: its value changed.
    static func truncateLogIfOwed(_ db: Database, waitingFor timeout: Double) throws {
        let sql = "SELECT value FROM registry_meta WHERE key = ?"
        guard let mark = try String.fetchOne(db.cachedStatement(sql: sql), arguments: [truncationOwedKey]) else { return }
        let configured = db.configuration.busyMode
        sqlite3_busy_timeout(db.sqliteConnection, Int32(timeout * 1000))
        defer { if case .timeout(let seconds) = configured { sqlite3_busy_timeout(db.sqliteConnection, Int32(seconds * 1000)) } }
        _ = try db.checkpoint(.truncate)
        try db.execute(sql: "DELETE FROM registry_meta WHERE key = ? AND value = ?", arguments: [truncationOwedKey, mark])
    }

    /// Maps SQLite's errors to the registry's: a busy database, a registry error thrown inside a transaction, the rest.
    static func translate(_ error: any Error) -> CofferRegistryError {
        if let registryError = error as? CofferRegistryError { return registryError }
        if let sqlite = error as? DatabaseError {
            if sqlite.resultCode == .SQLITE_BUSY || sqlite.resultCode == .SQLITE_LOCKED { return .databaseBusy }
            if sqlite.resultCode == .SQLITE_FULL { return .io(path: "registry database", reason: "disk full") }
            return .database(sqlite.message ?? "\(sqlite.resultCode)")
        }
        return .database("\(error)")
    }

    // MARK: - Writing

    func commit(_ work: UnitOfWork) async throws(CofferRegistryError) {
        let deletedKeys = try await write { db in
            if let end = work.ledgerEnd {
                let current = try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(seq) FROM ledger")) ?? 0
                guard current == end else { throw CofferRegistryError.ledgerMoved }
            }
            for record in work.records { try record.insert(db) }
            var deletedKeys = false
            for change in work.changes {
                try Self.apply(change, db: db)
                switch change {
                case .revokeSession, .dropExpiredSessionKeys: deletedKeys = deletedKeys || db.changesCount > 0
                default: deletedKeys = deletedKeys || Self.destroysKeys(change)
                }
            }
            try Self.append(work.audit, db: db)
            if deletedKeys { try Self.oweTruncation(db) }
            return deletedKeys
        }
        // Deleted keys must not linger in the write-ahead log either (secure_delete already overwrites the pages): the
        // log stays between commands, so the frames that carried them would.
        if deletedKeys || truncationOwed.load(ordering: .relaxed) { try? await truncateLogIfOwed(waiting: deletedKeys) }
    }

    /// Marks, inside the transaction that deletes keys, that the log must be truncated (`truncateLogIfOwed`).
    static func oweTruncation(_ db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO registry_meta (key, value) VALUES (?1, '1')
                ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
                """
        ).execute(arguments: [Self.truncationOwedKey])
    }

    /// Changes that delete wrapped keys or session key copies for good: erasure, rekey, key rotation, a recipient,
    /// principal or grant removed.
    static func destroysKeys(_ change: MetadataChange) -> Bool {
        switch change {
        case .erase, .rekey, .removeWrappedKeys, .removePrincipal, .dropSessionKeys: true
        default: false
        }
    }

    /// Chains `drafts` after the last entry, inside the caller's transaction.
    static func append(_ drafts: [AuditDraft], db: Database) throws {
        guard !drafts.isEmpty else { return }
        var last = try lastAuditEntry(db)
        for draft in drafts {
            let entry = draft.chained(after: last)
            try db.cachedStatement(
                sql: """
                    INSERT INTO audit_log (seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(
                arguments: [
                    entry.seq, entry.at, entry.principal, entry.action, entry.target, entry.outcome, entry.reason, entry.prevHash, entry.entryHash,
                ]
            )
            last = (entry.seq, entry.entryHash)
        }
    }

    static func lastAuditEntry(_ db: Database) throws -> (seq: Int64, hash: Data)? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")).map {
            ($0["seq"], $0["entry_hash"])
        }
    }

    static func modelID(_ name: String, db: Database) throws -> Int64? {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT id FROM models WHERE name = ?"), arguments: [name])
    }

    static func versionID(model: String, version: String, db: Database) throws -> Int64? {
        try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?"),
            arguments: [model, version]
        )
    }

    static func apply(_ change: MetadataChange, db: Database) throws {
        switch change {
        case .setMeta(let key, let value):
            try db.execute(sql: "INSERT OR REPLACE INTO registry_meta (key, value) VALUES (?, ?)", arguments: [key, value])
        case .registryKey(let key, let retireOthers):
            if retireOthers {
                try db.execute(
                    sql: "UPDATE registry_keys SET retired_at = ? WHERE retired_at IS NULL AND key_id != ?",
                    arguments: [key.createdAt, key.keyID]
                )
            }
            try key.save(db)
        case .addPrincipal(let principal):
            try principal.insert(db)
        case .removePrincipal(let name, let at):
            try db.execute(sql: "DELETE FROM grants WHERE principal = ?", arguments: [name])
            try db.execute(sql: "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE principal = ?", arguments: [at, name])
            try db.execute(
                sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE principal = ?",
                arguments: [at, name]
            )
            try db.execute(sql: "DELETE FROM principals WHERE name = ?", arguments: [name])
        case .addGrant(let grant):
            // SQLite's UNIQUE lets NULL aliases repeat: a grant already held is not written twice.
            try db.execute(
                sql: """
                    INSERT INTO grants (principal, role, scope, alias, granted_at, granted_by)
                    SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS
                        (SELECT 1 FROM grants WHERE principal = ?1 AND role = ?2 AND scope = ?3 AND alias IS ?4)
                    """,
                arguments: [grant.principal, grant.role, grant.scope, grant.alias, grant.grantedAt, grant.grantedBy]
            )
        case .removeGrant(let principal, let role, let scope, let alias):
            try db.execute(
                sql: "DELETE FROM grants WHERE principal = ? AND role = ? AND scope = ? AND alias IS ?",
                arguments: [principal, role, scope, alias]
            )
        case .trustSigner(let signer):
            try signer.save(db)
        case .untrustSigner(let keyID):
            try db.execute(sql: "DELETE FROM trusted_signers WHERE key_id = ?", arguments: [keyID])
        case .setPolicy(let policy):
            try policy.save(db)
        case .removePolicy(let model, let alias):
            try db.execute(sql: "DELETE FROM policies WHERE model = ? AND alias = ?", arguments: [model, alias])
        case .setBudget(let budget):
            try budget.save(db)
        case .addToken(let token):
            try token.insert(db)
        case .revokeToken(let id, let at):
            try db.execute(sql: "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?", arguments: [at, id])
        case .setAlias(let model, let alias, let version, let at):
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO aliases (model_id, alias, version_id, updated_at)
                    SELECT v.model_id, ?, v.id, ? FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?
                    """,
                arguments: [alias, at, model, version]
            )
        case .removeAlias(let model, let alias):
            try db.execute(
                sql: "DELETE FROM aliases WHERE alias = ? AND model_id = (SELECT id FROM models WHERE name = ?)",
                arguments: [alias, model]
            )
        case .addVersion(let new):
            try addVersion(new, db: db)
        case .setTag(let model, let version, let key, let value):
            guard let id = try versionID(model: model, version: version, db: db) else {
                throw CofferRegistryError.unknownVersion("\(model):\(version)")
            }
            if let value {
                try db.execute(sql: "INSERT OR REPLACE INTO tags (version_id, key, value) VALUES (?, ?, ?)", arguments: [id, key, value])
            } else {
                try db.execute(sql: "DELETE FROM tags WHERE version_id = ? AND key = ?", arguments: [id, key])
            }
        case .putWrappedKeys(let keys):
            for key in keys { try key.save(db) }
        case .removeWrappedKeys(let version, let recipient):
            try db.execute(
                sql: "DELETE FROM wrapped_keys WHERE (?1 IS NULL OR version_id = ?1) AND (?2 IS NULL OR recipient_key_id = ?2)",
                arguments: [version, recipient]
            )
        case .erase(let ids, let at, let by):
            for id in ids {
                try db.execute(sql: "INSERT OR REPLACE INTO erasures (version_id, erased_at, erased_by) VALUES (?, ?, ?)", arguments: [id, at, by])
                try db.execute(sql: "DELETE FROM wrapped_keys WHERE version_id = ?", arguments: [id])
                try db.execute(
                    sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE version_id = ?",
                    arguments: [at, id]
                )
                try db.execute(sql: "DELETE FROM aliases WHERE version_id = ?", arguments: [id])
            }
        case .rekey(let id, let files, let keys, let attestation, let at):
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE version_id = ?", arguments: [id])
            for key in keys { try key.insert(db) }
            try db.execute(sql: "DELETE FROM rekeyed_files WHERE version_id = ?", arguments: [id])
            for file in files { try file.insert(db) }
            try db.execute(sql: "DELETE FROM attestations WHERE version_id = ? AND kind = 'rekey'", arguments: [id])
            try db.execute(sql: "INSERT INTO attestations (version_id, kind, document) VALUES (?, 'rekey', ?)", arguments: [id, attestation])
            try db.execute(
                sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE version_id = ?",
                arguments: [at, id]
            )
        case .rememberIdentities(let identities):
            for identity in identities {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO recipient_identities (key_id, public_identity) VALUES (?, ?)",
                    arguments: [identity.keyID, identity.publicIdentity]
                )
            }
        case .addSession(let session):
            try session.insert(db)
        case .revokeSession(let id, let at):
            try db.execute(sql: "UPDATE sessions SET revoked_at = coalesce(revoked_at, ?), wrapped_key = NULL WHERE id = ?", arguments: [at, id])
        case .dropSessionKeys(let ids):
            for id in ids { try db.execute(sql: "UPDATE sessions SET wrapped_key = NULL WHERE id = ?", arguments: [id]) }
        case .dropExpiredSessionKeys(let now):
            try db.cachedStatement(sql: "UPDATE sessions SET wrapped_key = NULL WHERE wrapped_key IS NOT NULL AND expires_at <= ?")
                .execute(arguments: [now])
        case .addAuditHead(let head):
            try db.execute(
                sql: "INSERT OR IGNORE INTO audit_heads (seq, entry_hash, signed_at, signature, key_id) VALUES (?, ?, ?, ?, ?)",
                arguments: [head.seq, head.entryHash, head.signedAt, head.signature, head.keyID]
            )
        case .putUpload(let upload):
            try upload.save(db)
        case .removeUpload(let id):
            try db.execute(sql: "DELETE FROM uploads WHERE id = ?", arguments: [id])
        case .addPendingBlobs(let digests, let at):
            for digest in digests {
                try db.execute(sql: "INSERT OR IGNORE INTO pending_blobs (digest, started_at) VALUES (?, ?)", arguments: [digest, at])
            }
        case .removePendingBlobs(let digests):
            for digest in digests { try db.execute(sql: "DELETE FROM pending_blobs WHERE digest = ?", arguments: [digest]) }
        }
    }

    private static func addVersion(_ new: NewVersion, db: Database) throws {
        try db.execute(sql: "INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)", arguments: [new.model, new.row.createdAt])
        guard let modelID = try modelID(new.model, db: db) else { throw CofferRegistryError.database("model \(new.model) was not created") }
        if try versionID(model: new.model, version: new.row.version, db: db) != nil {
            throw CofferRegistryError.versionExists("\(new.model):\(new.row.version)")
        }
        var row = new.row
        row.id = nil
        row.modelID = modelID
        try row.insert(db)
        guard let id = row.id else { throw CofferRegistryError.database("version \(new.model):\(row.version) got no row id") }
        if let dataset = new.chargedDataset {
            try db.execute(
                sql: "INSERT INTO budget_charges (version_id, dataset_id, charged_at, override_by) VALUES (?, ?, ?, ?)",
                arguments: [id, dataset, row.createdAt, new.overrideBy]
            )
        }
        if let segments = new.segments {
            try db.execute(
                sql: "INSERT INTO version_privacy (version_id, segments, claimed_epsilon) VALUES (?, ?, ?)",
                arguments: [id, segments, new.claimedEpsilon]
            )
        }
        for var file in new.files {
            file.versionID = id
            try file.insert(db)
        }
        for (recipient, stanza) in new.keys {
            try WrappedKeyRecord(versionID: id, recipientKeyID: recipient, stanza: stanza).insert(db)
        }
        try db.execute(
            sql: "INSERT INTO attestations (version_id, kind, document) VALUES (?, 'dsse', ?), (?, 'model-signing', ?)",
            arguments: [id, new.envelope, id, new.bundle]
        )
        for (key, value) in new.tags {
            try db.execute(sql: "INSERT INTO tags (version_id, key, value) VALUES (?, ?, ?)", arguments: [id, key, value])
        }
        for file in new.files { try db.execute(sql: "DELETE FROM pending_blobs WHERE digest = ?", arguments: [file.sealedSHA256]) }
    }

    // MARK: - Ledger and registry facts

    func ledgerEnd() async throws(CofferRegistryError) -> Int64 {
        try await read { db in try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(seq) FROM ledger")) ?? 0 }
    }

    func ledgerRecords(after seq: Int64, limit: Int?) async throws(CofferRegistryError) -> [LedgerRow] {
        // Every request a server answers reads here (ledgerState), as do the two below for a version and a token: cached
        // statements, not SQL generated and compiled on each call (together about a tenth of a metadata GET's CPU).
        try await read { db in
            try SQLRequest<LedgerRow>(
                literal:
                    "SELECT * FROM \(LedgerRow.self) WHERE \(LedgerRow.Columns.seq) > \(seq) ORDER BY \(LedgerRow.Columns.seq) LIMIT \(limit ?? -1)",
                cached: true
            ).fetchAll(db)
        }
    }

    func firstLedgerRecord(kind: String, object: String) async throws(CofferRegistryError) -> LedgerRow? {
        try await read { db in
            try SQLRequest<LedgerRow>(
                literal: """
                    SELECT * FROM \(LedgerRow.self) WHERE \(LedgerRow.Columns.object) = \(object) AND \(LedgerRow.Columns.kind) = \(kind)
                    AND \(LedgerRow.Columns.seq) >= 1 ORDER BY \(LedgerRow.Columns.seq) LIMIT 1
                    """,
                cached: true
            ).fetchOne(db)
        }
    }

    func lastLedgerRecord(kind: String) async throws(CofferRegistryError) -> LedgerRow? {
        try await read { db in try LedgerRow.filter(LedgerRow.Columns.kind == kind).order(LedgerRow.Columns.seq.desc).fetchOne(db) }
    }

    func meta(_ key: String) async throws(CofferRegistryError) -> String? {
        try await read { db in try String.fetchOne(db.cachedStatement(sql: "SELECT value FROM registry_meta WHERE key = ?"), arguments: [key]) }
    }

    // MARK: - Versions

    func modelExists(_ name: String) async throws(CofferRegistryError) -> Bool {
        try await read { db in try Self.modelID(name, db: db) != nil }
    }

    func modelOverviews() async throws(CofferRegistryError) -> [ModelOverview] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT m.name, (SELECT count(*) FROM versions c WHERE c.model_id = m.id) AS versions, v.version, v.created_at
                    FROM models m JOIN versions v ON v.id = (
                        SELECT l.id FROM versions l WHERE l.model_id = m.id ORDER BY l.created_at DESC, l.id DESC LIMIT 1
                    )
                    ORDER BY v.created_at DESC, v.id DESC
                    """
            ).map { ModelOverview(name: $0[0], versions: $0[1], latestVersion: $0[2], latestCreated: $0[3]) }
        }
    }

    func version(model: String, version: String) async throws(CofferRegistryError) -> (id: Int64, digest: String)? {
        try await read { db in
            try Row.fetchOne(
                db.cachedStatement(
                    sql: "SELECT v.id, v.digest FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?"
                ),
                arguments: [model, version]
            ).map { (id: $0["id"] as Int64, digest: $0["digest"] as String) }
        }
    }

    func versionID(model: String, digest: String) async throws(CofferRegistryError) -> Int64? {
        try await read { db in
            try Int64.fetchOne(
                db.cachedStatement(sql: "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.digest = ?"),
                arguments: [model, digest]
            )
        }
    }

    func highestVersionNumber(model: String) async throws(CofferRegistryError) -> Int64? {
        try await read { db in
            try Int64.fetchOne(
                db,
                sql: "SELECT MAX(v.number) FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?",
                arguments: [model]
            )
        }
    }

    private static let headSelect = "SELECT v.id, m.name, v.version, v.digest FROM versions v JOIN models m ON m.id = v.model_id"

    private static func heads(_ rows: [Row]) -> [VersionHead] {
        rows.map { VersionHead(id: $0[0], model: $0[1], version: $0[2], digest: $0[3]) }
    }

    func versionHeads(model: String) async throws(CofferRegistryError) -> [VersionHead] {
        try await read { db in Self.heads(try Row.fetchAll(db, sql: "\(Self.headSelect) WHERE m.name = ? ORDER BY v.id", arguments: [model])) }
    }

    func versionHeads(ids: [Int64]) async throws(CofferRegistryError) -> [VersionHead] {
        try await read { db in
            Self.heads(
                try Row.fetchAll(
                    db,
                    sql: "\(Self.headSelect) WHERE v.id IN (SELECT value FROM json_each(?)) ORDER BY v.id",
                    arguments: [Self.json(ids)]
                )
            )
        }
    }

    func allVersionHeads() async throws(CofferRegistryError) -> [VersionHead] {
        try await read { db in Self.heads(try Row.fetchAll(db, sql: "\(Self.headSelect) ORDER BY v.id")) }
    }

    /// A list of ids as one JSON argument, for `IN (SELECT value FROM json_each(?))`: one statement whatever the count.
    private static func json(_ ids: [Int64]) -> String { "[" + ids.map(String.init).joined(separator: ",") + "]" }

    /// Each row of `statement` made into a `T` while it is still the statement's own row. GRDB finds a column by name in
    /// such a row through a dictionary, but in a copied one (`Row.fetchAll`, `Row.fetchOne`) by lower-casing every column
    /// name in turn; decoding a 20-column version record from copied rows, Codable looking each column up two or three
    /// times, was 3% of a server's CPU for each `GET /v1/version`.
    private static func rows<T>(_ statement: Statement, _ arguments: StatementArguments = [], _ make: (Row) throws -> T) throws -> [T] {
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        var made: [T] = []
        while let row = try cursor.next() { made.append(try make(row)) }
        return withExtendedLifetime(cursor) { made }
    }

    /// The first row of `statement`, made into a `T` as ``rows(_:_:_:)`` does.
    private static func firstRow<T>(_ statement: Statement, _ arguments: StatementArguments, _ make: (Row) throws -> T) throws -> T? {
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        guard let row = try cursor.next() else { return nil }
        // The row is the statement's: its values are gone once the cursor ends (a release build ended it right after
        // `next()`, and every column read NULL).
        return try withExtendedLifetime(cursor) { try make(row) }
    }

    func storedVersion(id: Int64) async throws(CofferRegistryError) -> StoredVersionRows? {
        try await read { db in
            guard
                let (model, record) = try Self.firstRow(
                    db.cachedStatement(sql: "SELECT v.*, m.name AS model_name FROM versions v JOIN models m ON m.id = v.model_id WHERE v.id = ?"),
                    [id],
                    { row in (row["model_name"] as String, try VersionRecord(row: row)) }
                )
            else { return nil }
            let history = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT segments, claimed_epsilon FROM version_privacy WHERE version_id = ?"),
                arguments: [id]
            )
            func attestation(_ kind: String) throws -> Data? {
                try Data.fetchOne(
                    db.cachedStatement(sql: "SELECT document FROM attestations WHERE version_id = ? AND kind = ?"),
                    arguments: [id, kind]
                )
            }
            let erasure = try Row.fetchOne(db.cachedStatement(sql: "SELECT erased_at, erased_by FROM erasures WHERE version_id = ?"), arguments: [id])
            return StoredVersionRows(
                id: id,
                model: model,
                row: record,
                segments: history?["segments"],
                claimedEpsilon: history?["claimed_epsilon"],
                files: try SQLRequest<FileRecord>(
                    literal: "SELECT * FROM \(FileRecord.self) WHERE \(FileRecord.Columns.versionID) = \(id) ORDER BY \(FileRecord.Columns.path)",
                    cached: true
                ).fetchAll(db),
                envelope: try attestation("dsse"),
                bundle: try attestation("model-signing"),
                rekeyAttestation: try attestation("rekey"),
                rekeyedFiles: try SQLRequest<RekeyedFileRecord>(
                    literal: """
                        SELECT * FROM \(RekeyedFileRecord.self) WHERE \(RekeyedFileRecord.Columns.versionID) = \(id)
                        ORDER BY \(RekeyedFileRecord.Columns.path)
                        """,
                    cached: true
                ).fetchAll(db),
                erasedAt: erasure?["erased_at"],
                erasedBy: erasure?["erased_by"]
            )
        }
    }

    /// A version row with its model name, parent, aliases and tags (unit and record separators join the lists).
    private static let summarySelect = """
        SELECT v.*, m.name AS model_name, p.version AS parent_version, pm.name AS parent_model,
            (SELECT group_concat(alias, char(31)) FROM aliases a WHERE a.version_id = v.id) AS alias_list,
            (SELECT group_concat(key || char(30) || value, char(31)) FROM tags t WHERE t.version_id = v.id) AS tag_list,
            (SELECT erased_at FROM erasures e WHERE e.version_id = v.id) AS erased_at,
            (SELECT erased_by FROM erasures e WHERE e.version_id = v.id) AS erased_by
        FROM versions v JOIN models m ON m.id = v.model_id
        LEFT JOIN versions p ON p.id = v.parent_version_id LEFT JOIN models pm ON pm.id = p.model_id
        """

    func summaries(_ query: VersionQuery) async throws(CofferRegistryError) -> [VersionSummaryRow] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let id = query.id {
            conditions.append("v.id = ?")
            arguments += [id]
        }
        if let model = query.model {
            conditions.append("m.name = ?")
            arguments += [model]
        }
        if let before = query.before {
            // The bound `created_at <= ?` first: SQLite searches the (model, created) index from it. Written as
            // `created_at < ? OR (created_at = ? AND id < ?)` alone, it walked the index from the newest (5 ms at the
            // 50,000th of 100,000 versions against 0.2 ms).
            conditions.append("v.created_at <= ? AND (v.created_at < ? OR v.id < ?)")
            arguments += [before.createdAt, before.createdAt, before.id]
        }
        conditions +=
            query.filter?.conditions { value in
                switch value {
                case .number(let n): arguments += [n]
                case .text(let t): arguments += [t]
                }
                return "?"
            } ?? []
        let whereSQL = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let limitSQL = query.limit.map { " LIMIT \(max(0, $0))" } ?? ""
        let sql = "\(Self.summarySelect) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)"
        let frozen = arguments
        // One version's row (every `show` and version page) comes from a cached statement; a listing's SQL varies with
        // its filters and limit, and is compiled each time rather than fill the cache.
        let single = query.id != nil
        return try await read { db in
            let statement = single ? try db.cachedStatement(sql: sql) : try db.makeStatement(sql: sql)
            return try Self.rows(statement, frozen) { row in
                var tags: [String: String] = [:]
                for pair in (row["tag_list"] as String?)?.split(separator: "\u{1F}") ?? [] {
                    let parts = pair.split(separator: "\u{1E}", maxSplits: 1, omittingEmptySubsequences: false)
                    if parts.count == 2 { tags[String(parts[0])] = String(parts[1]) }
                }
                let parentModel: String? = row["parent_model"]
                let parentVersion: String? = row["parent_version"]
                return VersionSummaryRow(
                    id: row["id"],
                    model: row["model_name"],
                    row: try VersionRecord(row: row),
                    parent: parentModel.flatMap { m in parentVersion.map { "\(m):\($0)" } },
                    aliases: (row["alias_list"] as String?)?.split(separator: "\u{1F}").map(String.init).sorted() ?? [],
                    tags: tags,
                    erasedAt: row["erased_at"],
                    erasedBy: row["erased_by"]
                )
            }
        }
    }

    func statements(versionIDs: [Int64]) async throws(CofferRegistryError) -> [Int64: Data] {
        try await read { db in
            Dictionary(
                try Row.fetchAll(
                    db,
                    sql: "SELECT version_id, document FROM attestations WHERE kind = 'dsse' AND version_id IN (SELECT value FROM json_each(?))",
                    arguments: [Self.json(versionIDs)]
                ).map { ($0[0] as Int64, $0[1] as Data) },
                uniquingKeysWith: { a, _ in a }
            )
        }
    }

    func models(holdingBlob digest: String) async throws(CofferRegistryError) -> [String] {
        try await read { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT DISTINCT m.name FROM models m JOIN versions v ON v.model_id = m.id
                    WHERE v.id IN (SELECT version_id FROM files WHERE sealed_sha256 = ?1 UNION SELECT version_id FROM rekeyed_files WHERE sealed_sha256 = ?1)
                    ORDER BY m.name
                    """,
                arguments: [digest]
            )
        }
    }

    func referencedBlobs() async throws(CofferRegistryError) -> [(versionDigest: String, blob: String)] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT v.digest, f.sealed_sha256 FROM files f JOIN versions v ON v.id = f.version_id
                    WHERE v.id NOT IN (SELECT version_id FROM rekeyed_files)
                    UNION ALL SELECT v.digest, r.sealed_sha256 FROM rekeyed_files r JOIN versions v ON v.id = r.version_id
                    """
            ).map { (versionDigest: $0[0] as String, blob: $0[1] as String) }
        }
    }

    // MARK: - Keys

    func wrappedKey(version: Int64, recipient: String) async throws(CofferRegistryError) -> Data? {
        try await read { db in
            try Data.fetchOne(
                db.cachedStatement(sql: "SELECT stanza FROM wrapped_keys WHERE version_id = ? AND recipient_key_id = ?"),
                arguments: [version, recipient]
            )
        }
    }

    func wrappedKeys(version: Int64) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await read { db in
            try WrappedKeyRecord.filter(WrappedKeyRecord.Columns.versionID == version).order(WrappedKeyRecord.Columns.recipientKeyID).fetchAll(db)
        }
    }

    func wrappedKeys(recipient: String) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await read { db in
            try WrappedKeyRecord.filter(WrappedKeyRecord.Columns.recipientKeyID == recipient).order(WrappedKeyRecord.Columns.versionID).fetchAll(db)
        }
    }

    func wrappedKeys(recipient: String, versions: [Int64]) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await read { db in
            try WrappedKeyRecord.filter(WrappedKeyRecord.Columns.recipientKeyID == recipient && versions.contains(WrappedKeyRecord.Columns.versionID))
                .order(WrappedKeyRecord.Columns.versionID).fetchAll(db)
        }
    }

    func knownIdentity(keyID: String) async throws(CofferRegistryError) -> Data? {
        try await read { db in
            try Data.fetchOne(
                db,
                sql: """
                    SELECT public_identity FROM recipient_identities WHERE key_id = ?1
                    UNION ALL SELECT public_identity FROM principals WHERE key_id = ?1
                    UNION ALL SELECT public_identity FROM trusted_signers WHERE key_id = ?1
                    LIMIT 1
                    """,
                arguments: [keyID]
            )
        }
    }

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
