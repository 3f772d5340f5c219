import CofferCrypto
import Foundation
import NIOCore
import PostgresNIO

/// Queries: the ledger, versions and their keys.
extension PostgresMetadataStore {
    // MARK: - Reading

    func fetchAll<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> [T] {
        try await database.fetchAll(type, query)
    }

    func fetchOne<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> T? {
        try await database.fetchOne(type, query)
    }

    /// The first column of the first row.
    func scalar<T: PostgresDecodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> T? {
        let rows = try await database.query(query)
        guard let cell = rows.first?.first, cell.bytes != nil else { return nil }
        do { return try cell.decode(T.self) } catch { throw .database("cannot read a \(T.self): \(error)") }
    }

    /// The first column of every row.
    func column<T: PostgresDecodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> [T] {
        let rows = try await database.query(query)
        do { return try rows.map { try $0.decode(T.self) } } catch { throw .database("cannot read a \(T.self): \(error)") }
    }

    /// Decoding a row's columns, its failure as a registry error.
    func reading<T>(_ body: () throws -> T) throws(CofferRegistryError) -> T {
        do { return try body() } catch { throw .database("cannot read a row: \(error)") }
    }

    // MARK: Ledger and registry facts

    func ledgerEnd() async throws(CofferRegistryError) -> Int64 {
        try await scalar(Int64.self, "SELECT coalesce(max(seq), 0) FROM ledger") ?? 0
    }

    func ledgerRecords(after seq: Int64, limit: Int?) async throws(CofferRegistryError) -> [LedgerRow] {
        let limit = Int64(max(0, limit ?? Int(Int64.max)))
        return try await fetchAll(LedgerRow.self, "SELECT * FROM ledger WHERE seq > \(seq) ORDER BY seq LIMIT \(limit)")
    }

    func firstLedgerRecord(kind: String, object: String) async throws(CofferRegistryError) -> LedgerRow? {
        try await fetchOne(LedgerRow.self, "SELECT * FROM ledger WHERE object = \(object) AND kind = \(kind) AND seq >= 1 ORDER BY seq LIMIT 1")
    }

    func meta(_ key: String) async throws(CofferRegistryError) -> String? {
        try await scalar(String.self, "SELECT value FROM registry_meta WHERE key = \(key)")
    }

    // MARK: Versions

    func modelExists(_ name: String) async throws(CofferRegistryError) -> Bool {
        try await scalar(Int64.self, "SELECT id FROM models WHERE name = \(name)") != nil
    }

    func modelOverviews() async throws(CofferRegistryError) -> [ModelOverview] {
        var overviews: [ModelOverview] = []
        for row in try await database.query(
            """
            SELECT m.name, (SELECT count(*) FROM versions c WHERE c.model_id = m.id) AS versions, v.version, v.created_at
            FROM models m JOIN versions v ON v.id = (
                SELECT l.id FROM versions l WHERE l.model_id = m.id ORDER BY l.created_at DESC, l.id DESC LIMIT 1
            )
            ORDER BY v.created_at DESC, v.id DESC
            """
        ) {
            let (name, versions, version, created) = try reading { try row.decode((String, Int64, String, String).self) }
            overviews.append(ModelOverview(name: name, versions: Int(versions), latestVersion: version, latestCreated: created))
        }
        return overviews
    }

    func version(model: String, version: String) async throws(CofferRegistryError) -> (id: Int64, digest: String)? {
        let rows = try await database.query(
            "SELECT v.id, v.digest FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = \(model) AND v.version = \(version)"
        )
        guard let row = rows.first else { return nil }
        let (id, digest) = try reading { try row.decode((Int64, String).self) }
        return (id, digest)
    }

    func versionID(model: String, digest: String) async throws(CofferRegistryError) -> Int64? {
        try await scalar(
            Int64.self,
            "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = \(model) AND v.digest = \(digest)"
        )
    }

    func highestVersionNumber(model: String) async throws(CofferRegistryError) -> Int64? {
        try await scalar(Int64.self, "SELECT max(v.number) FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = \(model)")
    }

    static let headSelect = "SELECT v.id, m.name, v.version, v.digest FROM versions v JOIN models m ON m.id = v.model_id"

    func heads(_ query: PostgresQuery) async throws(CofferRegistryError) -> [VersionHead] {
        var heads: [VersionHead] = []
        for row in try await database.query(query) {
            let (id, model, version, digest) = try reading { try row.decode((Int64, String, String, String).self) }
            heads.append(VersionHead(id: id, model: model, version: version, digest: digest))
        }
        return heads
    }

    func versionHeads(model: String) async throws(CofferRegistryError) -> [VersionHead] {
        try await heads("\(unescaped: Self.headSelect) WHERE m.name = \(model) ORDER BY v.id")
    }

    func versionHeads(ids: [Int64]) async throws(CofferRegistryError) -> [VersionHead] {
        try await heads("\(unescaped: Self.headSelect) WHERE v.id = ANY(\(ids)) ORDER BY v.id")
    }

    func allVersionHeads() async throws(CofferRegistryError) -> [VersionHead] {
        try await heads("\(unescaped: Self.headSelect) ORDER BY v.id")
    }

    func storedVersion(id: Int64) async throws(CofferRegistryError) -> StoredVersionRows? {
        let rows = try await database.query("SELECT v.*, m.name AS model_name FROM versions v JOIN models m ON m.id = v.model_id WHERE v.id = \(id)")
        guard let row = rows.first else { return nil }
        let versionRow = try row.record(VersionRecord.self)
        let model = try decode(row, String.self, column: "model_name")
        let history = try await database.query("SELECT segments, claimed_epsilon FROM version_privacy WHERE version_id = \(id)").first
        let (segments, claimed) =
            try history.map { row throws(CofferRegistryError) in try reading { try row.decode((String?, Double?).self) } } ?? (nil, nil)
        var attestations: [String: Data] = [:]
        for row in try await database.query("SELECT kind, document FROM attestations WHERE version_id = \(id)") {
            let (kind, document) = try reading { try row.decode((String, Data).self) }
            attestations[kind] = document
        }
        let erasure = try await database.query("SELECT erased_at, erased_by FROM erasures WHERE version_id = \(id)").first
        let (erasedAt, erasedBy) =
            try erasure.map { row throws(CofferRegistryError) in try reading { try row.decode((String?, String?).self) } } ?? (nil, nil)
        return StoredVersionRows(
            id: id,
            model: model,
            row: versionRow,
            segments: segments,
            claimedEpsilon: claimed,
            files: try await fetchAll(FileRecord.self, "SELECT * FROM files WHERE version_id = \(id) ORDER BY path COLLATE \"C\""),
            envelope: attestations["dsse"],
            bundle: attestations["model-signing"],
            rekeyAttestation: attestations["rekey"],
            rekeyedFiles: try await fetchAll(
                RekeyedFileRecord.self,
                "SELECT * FROM rekeyed_files WHERE version_id = \(id) ORDER BY path COLLATE \"C\""
            ),
            erasedAt: erasedAt,
            erasedBy: erasedBy
        )
    }

    func decode<T: PostgresDecodable>(_ row: PostgresRow, _ type: T.Type, column: String) throws(CofferRegistryError) -> T {
        do { return try PostgresRandomAccessRow(row)[column].decode(T.self) } catch { throw .database("cannot read column \(column): \(error)") }
    }

    func summaries(_ query: VersionQuery) async throws(CofferRegistryError) -> [VersionSummaryRow] {
        var conditions: [String] = []
        var bindings = PostgresBindings()
        func bind(_ value: some PostgresDynamicTypeEncodable) -> String {
            bindings.append(value)
            return "$\(bindings.count)"
        }
        if let id = query.id { conditions.append("v.id = \(bind(id))") }
        // The model's id as a subquery (an InitPlan), not m.name through the join: the planner then estimates the model's
        // share of versions from versions.model_id alone. Through the join it needs statistics of models, which a table
        // of a few rows never gets from autovacuum (50 changes first), and without them it expected ~40 rows for a model
        // of 100,000 and sorted every --where match (70-120 ms) instead of reading the created_at index to a page (1 ms).
        if let model = query.model { conditions.append("v.model_id = (SELECT id FROM models WHERE name = \(bind(model)))") }
        if let before = query.before {
            let created = bind(before.createdAt)
            // A bound on the indexed column first, as in SQLiteMetadataStore, so the (model, created) index is searched from it.
            conditions.append("v.created_at <= \(created) AND (v.created_at < \(created) OR v.id < \(bind(before.id)))")
        }
        conditions +=
            query.filter?.conditions { value in
                switch value {
                case .number(let n): bind(n)
                case .text(let t): bind(t)
                }
            } ?? []
        let whereSQL = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let limitSQL = query.limit.map { " LIMIT \(max(0, $0))" } ?? ""
        let sql =
            "\(VersionSummaryRow.select(aggregate: "string_agg", character: "chr")) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)"
        var summaries: [VersionSummaryRow] = []
        for row in try await database.query(PostgresQuery(unsafeSQL: sql, binds: bindings)) {
            summaries.append(
                VersionSummaryRow(
                    id: try decode(row, Int64.self, column: "id"),
                    model: try decode(row, String.self, column: "model_name"),
                    row: try row.record(VersionRecord.self),
                    parentModel: try decode(row, String?.self, column: "parent_model"),
                    parentVersion: try decode(row, String?.self, column: "parent_version"),
                    aliasList: try decode(row, String?.self, column: "alias_list"),
                    tagList: try decode(row, String?.self, column: "tag_list"),
                    erasedAt: try decode(row, String?.self, column: "erased_at"),
                    erasedBy: try decode(row, String?.self, column: "erased_by")
                )
            )
        }
        return summaries
    }

    func statements(versionIDs: [Int64]) async throws(CofferRegistryError) -> [Int64: Data] {
        var statements: [Int64: Data] = [:]
        for row in try await database.query("SELECT version_id, document FROM attestations WHERE kind = 'dsse' AND version_id = ANY(\(versionIDs))") {
            let (id, document) = try reading { try row.decode((Int64, Data).self) }
            if statements[id] == nil { statements[id] = document }
        }
        return statements
    }

    func models(holdingBlob digest: String) async throws(CofferRegistryError) -> [String] {
        try await column(
            String.self,
            """
            SELECT DISTINCT m.name FROM models m JOIN versions v ON v.model_id = m.id
            WHERE v.id IN (SELECT version_id FROM files WHERE sealed_sha256 = \(digest)
                UNION SELECT version_id FROM rekeyed_files WHERE sealed_sha256 = \(digest))
            ORDER BY m.name
            """
        )
    }

    func referencedBlobs() async throws(CofferRegistryError) -> [(versionDigest: String, blob: String)] {
        let rows = try await database.query(
            """
            SELECT v.digest, f.sealed_sha256 FROM files f JOIN versions v ON v.id = f.version_id
            WHERE v.id NOT IN (SELECT version_id FROM rekeyed_files)
            UNION ALL SELECT v.digest, r.sealed_sha256 FROM rekeyed_files r JOIN versions v ON v.id = r.version_id
            """
        )
        var blobs: [(versionDigest: String, blob: String)] = []
        for row in rows {
            let (version, blob) = try reading { try row.decode((String, String).self) }
            blobs.append((version, blob))
        }
        return blobs
    }

    // MARK: Keys

    /// Opens sealed values read by `read`; a read that met a value sealed under an epoch another replica has just
    /// destroyed (its rotation committed between the read and the opening) is read again, once.
    func opening<T>(
        _ read: () async throws(CofferRegistryError) -> T,
        open: (T) throws(CofferRegistryError) -> T
    ) async throws(CofferRegistryError) -> T {
        do {
            return try open(try await read())
        } catch .tampered {
            return try open(try await read())
        }
    }

    private func openStanza(_ key: WrappedKeyRecord) throws(CofferRegistryError) -> WrappedKeyRecord {
        var key = key
        key.stanza = Data(try keys.open(Array(key.stanza), column: .wrappedKeyStanza, rowKey: Self.stanzaRow(key.versionID, key.recipientKeyID)))
        return key
    }

    func wrappedKey(version: Int64, recipient: String) async throws(CofferRegistryError) -> Data? {
        try await opening {
            () async throws(CofferRegistryError) -> Data? in
            try await scalar(Data.self, "SELECT stanza FROM wrapped_keys WHERE version_id = \(version) AND recipient_key_id = \(recipient)")
        } open: { sealed throws(CofferRegistryError) -> Data? in
            try sealed.map { sealed throws(CofferRegistryError) in
                Data(try keys.open(Array(sealed), column: .wrappedKeyStanza, rowKey: Self.stanzaRow(version, recipient)))
            }
        }
    }

    func wrappedKeys(version: Int64) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await opening {
            () async throws(CofferRegistryError) -> [WrappedKeyRecord] in
            try await fetchAll(
                WrappedKeyRecord.self,
                "SELECT * FROM wrapped_keys WHERE version_id = \(version) ORDER BY recipient_key_id COLLATE \"C\""
            )
        } open: { rows throws(CofferRegistryError) in
            var opened: [WrappedKeyRecord] = []
            for row in rows { opened.append(try openStanza(row)) }
            return opened
        }
    }

    func wrappedKeys(recipient: String) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await opening {
            () async throws(CofferRegistryError) -> [WrappedKeyRecord] in
            try await fetchAll(WrappedKeyRecord.self, "SELECT * FROM wrapped_keys WHERE recipient_key_id = \(recipient) ORDER BY version_id")
        } open: { rows throws(CofferRegistryError) in
            var opened: [WrappedKeyRecord] = []
            for row in rows { opened.append(try openStanza(row)) }
            return opened
        }
    }

    func wrappedKeys(recipient: String, versions: [Int64]) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        try await opening {
            () async throws(CofferRegistryError) -> [WrappedKeyRecord] in
            try await fetchAll(
                WrappedKeyRecord.self,
                "SELECT * FROM wrapped_keys WHERE recipient_key_id = \(recipient) AND version_id = ANY(\(versions)) ORDER BY version_id"
            )
        } open: { rows throws(CofferRegistryError) in
            var opened: [WrappedKeyRecord] = []
            for row in rows { opened.append(try openStanza(row)) }
            return opened
        }
    }

    func knownIdentity(keyID: String) async throws(CofferRegistryError) -> Data? {
        try await scalar(
            Data.self,
            """
            SELECT public_identity FROM recipient_identities WHERE key_id = \(keyID)
            UNION ALL SELECT public_identity FROM principals WHERE key_id = \(keyID)
            UNION ALL SELECT public_identity FROM trusted_signers WHERE key_id = \(keyID)
            LIMIT 1
            """
        )
    }
}
