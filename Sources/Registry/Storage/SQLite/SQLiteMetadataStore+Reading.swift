import CofferCrypto
import Foundation
import GRDB
import GRDBSQLite

// Reads of the ledger, versions and wrapped keys.
extension SQLiteMetadataStore {
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

    static let headSelect = "SELECT v.id, m.name, v.version, v.digest FROM versions v JOIN models m ON m.id = v.model_id"

    static func heads(_ rows: [Row]) -> [VersionHead] {
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
    static func rows<T>(_ statement: Statement, _ arguments: StatementArguments = [], _ make: (Row) throws -> T) throws -> [T] {
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        var made: [T] = []
        while let row = try cursor.next() { made.append(try make(row)) }
        return withExtendedLifetime(cursor) { made }
    }

    /// The first row of `statement`, made into a `T` as ``rows(_:_:_:)`` does.
    static func firstRow<T>(_ statement: Statement, _ arguments: StatementArguments, _ make: (Row) throws -> T) throws -> T? {
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
        let sql =
            "\(VersionSummaryRow.select(aggregate: "group_concat", character: "char")) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)"
        let frozen = arguments
        // One version's row (every `show` and version page) comes from a cached statement; a listing's SQL varies with
        // its filters and limit, and is compiled each time rather than fill the cache.
        let single = query.id != nil
        return try await read { db in
            let statement = single ? try db.cachedStatement(sql: sql) : try db.makeStatement(sql: sql)
            return try Self.rows(statement, frozen) { row in
                VersionSummaryRow(
                    id: row["id"],
                    model: row["model_name"],
                    row: try VersionRecord(row: row),
                    parentModel: row["parent_model"],
                    parentVersion: row["parent_version"],
                    aliasList: row["alias_list"],
                    tagList: row["tag_list"],
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
}
