import CofferCrypto
import Foundation
import NIOCore
import PostgresNIO
import Synchronization

/// The scale-out metadata store: the tables of `schema/postgres/` in a PostgreSQL database that several processes and
/// replicas share (docs/FORMAT.md, "Metadata stores"). The same semantics as ``SQLiteMetadataStore``, rebuilt where
/// SQLite gave them by having one writer:
///
/// - a ``UnitOfWork`` is one transaction; its ledger end is checked under the advisory lock
///   ``PostgresAdvisoryLock/ledgerAppend`` (and `ledger.seq`'s key catches any writer that skipped the check), so two
///   writers never both append record `n + 1`: the second gets ``CofferRegistryError/ledgerMoved``;
/// - audit entries are chained under ``PostgresAdvisoryLock/auditAppend``, so the hash chain stays one line across
///   replicas;
/// - a session's use and a rate token are taken by statements on the shared row, never by reading then writing;
/// - wrapped keys and session key copies are sealed under the current epoch key (``EpochKeys``); whatever deletes
///   or clears one marks a rotation due in the same transaction and rotates after it commits, so PostgreSQL's copies
///   of the erased value (dead tuples, WAL, backups) are sealed under a key that no longer exists.
///
/// ```swift
/// let store = try await PostgresMetadataStore.open(url: "postgres://coffer@db:5432/coffer", home: home)
/// try await store.commit(work)
/// await store.close()
/// ```
final class PostgresMetadataStore: MetadataStore {
    let database: PostgresPool
    let keys: EpochKeys
    let name: String
    /// The pool's background work, from ``open(url:home:environment:options:)`` until ``close()`` or deinit.
    private let running: Task<Void, Never>
    /// The audit-head signer's session lock, while this process holds it.
    private let leadership = Mutex<PostgresSessionLock?>(nil)

    private init(database: PostgresPool, keys: EpochKeys, running: Task<Void, Never>) {
        self.database = database
        self.keys = keys
        self.running = running
        name = database.endpoint.engine
    }

    deinit { running.cancel() }

    /// Connects to the database at `url` (password from `PGPASSWORD` or `PGPASSFILE`, never the URL), applies the
    /// migrations it lacks and opens the epoch keys in `HOME/epochs`, finishing a rotation a crash interrupted.
    ///
    /// - Parameters:
    ///   - url: `postgres://USER@HOST:PORT/DB?sslmode=...`.
    ///   - home: the registry's home directory (its `epochs/`).
    ///   - environment: where the password is looked up (the process's environment when nil).
    ///   - creatingDatabase: create the database when the server has none of that name (`init` and `migrate` only).
    /// - Throws: ``CofferRegistryError/unavailable(engine:reason:)`` when the server cannot be reached or logged into;
    ///   ``CofferRegistryError/io(path:reason:)`` for the epoch key files.
    static func open(
        url: String,
        home: String,
        environment: [String: String]? = nil,
        options: PostgresPool.Options = PostgresPool.Options(),
        creatingDatabase: Bool = false
    ) async throws(CofferRegistryError) -> PostgresMetadataStore {
        let endpoint = try PostgresEndpoint(url: url)
        let password = try endpoint.password(environment: environment)
        if creatingDatabase { _ = try await PostgresPool.createDatabaseIfMissing(endpoint, password: password) }
        let database = try PostgresPool(endpoint: endpoint, password: password, options: options)
        let running = Task { await database.run() }
        do {
            // The connection that checks the server is the one the command's queries then use (no second login).
            database.adopt(try await database.openConnection())
            try await PostgresMigrator.migrate(database)
            let keys = try await EpochKeys.open(home: home, database: database)
            return PostgresMetadataStore(database: database, keys: keys, running: running)
        } catch {
            await database.closePrimary()
            running.cancel()
            await running.value
            throw error
        }
    }

    func close() async {
        if let held = leadership.withLock({ held in
            defer { held = nil }
            return held
        }) {
            await held.release()
        }
        await database.closePrimary()
        running.cancel()
        await running.value
    }

    func leadsAuditHeads() async -> Bool {
        if leadership.withLock({ $0?.isHeld ?? false }) { return true }
        // Free when its holder's connection ended (the replica stopped or died): the next to ask takes it.
        guard let taken = try? await PostgresSessionLock.tryAcquire(PostgresAdvisoryLock.auditHeadSigner, on: database) else { return false }
        let previous = leadership.withLock { held in
            defer { held = taken }
            return held
        }
        if let previous { await previous.release() }
        return true
    }

    static let logger = PostgresPool.logger

    // MARK: - Writing

    func commit(_ work: UnitOfWork) async throws(CofferRegistryError) {
        let seals = work.changes.contains(where: Self.seals)
        let outcome: Bool?
        do {
            outcome = try await commitOnce(work, seals: seals)
        } catch .unavailable(let engine, let reason) {
            // The connection was lost with the transaction sent: if it ended during COMMIT, the server may have
            // committed it without the answer reaching us. A unit with a ledger record can tell: the record is there
            // (with its hash) or not, and once the server answers again the outcome is final.
            guard let last = work.records.last else { throw .unavailable(engine: engine, reason: reason) }
            let found = try? await database.query("SELECT hash FROM ledger WHERE seq = \(last.seq)")
            guard let row = found?.first else {
                let known = found == nil ? " (whether it was committed is not known yet: the database does not answer)" : ""
                throw .unavailable(engine: engine, reason: reason + known)
            }
            guard (try? row.decode(String.self)) == last.hash else { throw .ledgerMoved }
            outcome = false
            _ = try? await keys.rotateIfDue(database)
        }
        // Another writer committed record n + 1 between the check and the insert (it cannot under the lock; the key
        // is the last word).
        guard let destroyed = outcome else { throw .ledgerMoved }
        if destroyed { try await keys.rotateIfDue(database) }
    }

    /// One attempt at committing `work`: `nil` when another writer's record took the ledger's next number; whether a
    /// sealed value was destroyed (a key rotation is due) otherwise.
    private func commitOnce(_ work: UnitOfWork, seals: Bool) async throws(CofferRegistryError) -> Bool? {
        try await database.transaction(conflictOn: "ledger_pkey") { connection in
            if let end = work.ledgerEnd {
                try await connection.advisoryTransactionLock(PostgresAdvisoryLock.ledgerAppend)
                let current = try await Self.int(connection, "SELECT coalesce(max(seq), 0) FROM ledger") ?? 0
                guard current == end else { throw CofferRegistryError.ledgerMoved }
            }
            // Every session open asks to drop expired key copies; when none is there (the usual case) it is left out,
            // so that opening a session does not take the epoch row exclusively (pushes and other opens would queue
            // behind it). A copy expiring meanwhile goes at the next open, or when its session is next used.
            var changes = work.changes
            for case .dropExpiredSessionKeys(let now) in work.changes {
                let expired = try await connection.rows(
                    "SELECT 1 FROM sessions WHERE wrapped_key IS NOT NULL AND expires_at <= \(now) LIMIT 1"
                )
                if expired.isEmpty {
                    changes.removeAll { if case .dropExpiredSessionKeys = $0 { true } else { false } }
                }
            }
            let mayDestroy = changes.contains(where: Self.mayDestroyKeys)
            // The epoch row before any row it protects, in one order for every writer: a change that may destroy a
            // sealed value locks it to mark a rotation due; one that only seals shares it (a rotation waits).
            if mayDestroy {
                _ = try await connection.run("SELECT epoch FROM epoch_state FOR NO KEY UPDATE")
            } else if seals {
                _ = try await connection.run("SELECT epoch FROM epoch_state FOR SHARE")
            }
            for record in work.records { try await connection.rows(PostgresRecords.insert(record, into: "ledger")) }
            var destroyed = false
            for change in changes {
                destroyed = try await self.apply(change, on: connection) || destroyed
            }
            if destroyed { try await EpochKeys.markRotationDue(on: connection) }
            try await Self.append(work.audit, on: connection)
            return destroyed
        }
    }

    /// Changes that may delete or clear a sealed value (what a rotation must then put out of reach).
    static func mayDestroyKeys(_ change: MetadataChange) -> Bool {
        switch change {
        case .erase, .rekey, .removeWrappedKeys, .removePrincipal, .dropSessionKeys, .dropExpiredSessionKeys, .revokeSession, .putWrappedKeys:
            true
        default: false
        }
    }

    /// Changes that write a sealed value.
    static func seals(_ change: MetadataChange) -> Bool {
        switch change {
        case .addVersion, .putWrappedKeys, .rekey, .addSession: true
        default: false
        }
    }

    /// Chains `drafts` after the last entry under the audit lock, inside the caller's transaction.
    static func append(_ drafts: [AuditDraft], on connection: PostgresConnection) async throws {
        guard !drafts.isEmpty else { return }
        try await connection.advisoryTransactionLock(PostgresAdvisoryLock.auditAppend)
        var last = try await lastAuditEntry(on: connection)
        var entries: [AuditEntryRecord] = []
        entries.reserveCapacity(drafts.count)
        for draft in drafts {
            let entry = draft.chained(after: last)
            entries.append(entry)
            last = (entry.seq, entry.entryHash)
        }
        // One statement for the whole chain segment: 10,000 entries took 7.5 s as one INSERT each, 0.6 s this way.
        try await connection.rows(
            """
            INSERT INTO audit_log (seq, at, principal, action, target, outcome, reason, prev_hash, entry_hash)
            SELECT * FROM unnest(\(entries.map(\.seq))::bigint[], \(entries.map(\.at))::text[], \(entries.map(\.principal))::text[],
                \(entries.map(\.action))::text[], \(entries.map(\.target))::text[], \(entries.map(\.outcome))::text[],
                \(entries.map(\.reason))::text[], \(entries.map { ByteBuffer(bytes: $0.prevHash) })::bytea[],
                \(entries.map { ByteBuffer(bytes: $0.entryHash) })::bytea[])
            """
        )
    }

    static func lastAuditEntry(on connection: PostgresConnection) async throws -> (seq: Int64, hash: Data)? {
        guard let row = try await connection.rows("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").first else { return nil }
        let (seq, hash) = try row.decode((Int64, Data).self)
        return (seq, hash)
    }

    /// Runs a statement to its end; the number of rows it changed.
    @discardableResult
    static func execute(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> Int {
        try await connection.run(query).metadata.rows ?? 0
    }

    static func int(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> Int64? {
        try await connection.rows(query).first.flatMap { try $0.decode(Int64?.self) }
    }

    /// The row key of a wrapped key (``SealedColumn/wrappedKeyStanza``).
    static func stanzaRow(_ version: Int64, _ recipient: String) -> String { SealedColumn.wrappedKeyStanza.rowKey([String(version), recipient]) }

    func sealStanza(_ stanza: Data, version: Int64, recipient: String, on connection: PostgresConnection) async throws -> Data {
        Data(try await keys.seal(Array(stanza), column: .wrappedKeyStanza, rowKey: Self.stanzaRow(version, recipient), on: connection))
    }

    func putWrappedKey(_ key: WrappedKeyRecord, on connection: PostgresConnection) async throws {
        let sealed = try await sealStanza(key.stanza, version: key.versionID, recipient: key.recipientKeyID, on: connection)
        try await connection.rows(
            """
            INSERT INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (\(key.versionID), \(key.recipientKeyID), \(sealed))
            ON CONFLICT (version_id, recipient_key_id) DO UPDATE SET stanza = EXCLUDED.stanza
            """
        )
    }

    /// Applies one change; true when it deleted or cleared a sealed value.
    func apply(_ change: MetadataChange, on c: PostgresConnection) async throws -> Bool {
        switch change {
        case .setMeta(let key, let value):
            try await c.rows(
                "INSERT INTO registry_meta (key, value) VALUES (\(key), \(value)) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            )
        case .registryKey(let key, let retireOthers):
            if retireOthers {
                try await c.rows("UPDATE registry_keys SET retired_at = \(key.createdAt) WHERE retired_at IS NULL AND key_id <> \(key.keyID)")
            }
            try await c.rows(
                """
                INSERT INTO registry_keys (key_id, public_identity, created_at, retired_at)
                VALUES (\(key.keyID), \(key.publicIdentity), \(key.createdAt), \(key.retiredAt))
                ON CONFLICT (key_id) DO UPDATE SET public_identity = EXCLUDED.public_identity, created_at = EXCLUDED.created_at,
                    retired_at = EXCLUDED.retired_at
                """
            )
        case .addPrincipal(let principal):
            try await c.rows(PostgresRecords.insert(principal, into: "principals"))
        case .removePrincipal(let name, let at):
            try await c.rows("DELETE FROM grants WHERE principal = \(name)")
            try await c.rows("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, \(at)) WHERE principal = \(name)")
            let cleared = try await Self.execute(
                c,
                "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, \(at)) WHERE principal = \(name) AND wrapped_key IS NOT NULL"
            )
            try await c.rows("UPDATE sessions SET revoked_at = coalesce(revoked_at, \(at)) WHERE principal = \(name)")
            try await c.rows("DELETE FROM principals WHERE name = \(name)")
            return cleared > 0
        case .addGrant(let grant):
            // The constraint is UNIQUE NULLS NOT DISTINCT: a grant already held is not written twice.
            try await c.rows(
                """
                INSERT INTO grants (principal, role, scope, alias, granted_at, granted_by)
                VALUES (\(grant.principal), \(grant.role), \(grant.scope), \(grant.alias), \(grant.grantedAt), \(grant.grantedBy))
                ON CONFLICT DO NOTHING
                """
            )
        case .removeGrant(let principal, let role, let scope, let alias):
            try await c.rows(
                "DELETE FROM grants WHERE principal = \(principal) AND role = \(role) AND scope = \(scope) AND alias IS NOT DISTINCT FROM \(alias)"
            )
        case .trustSigner(let signer):
            try await c.rows(
                """
                INSERT INTO trusted_signers (key_id, name, public_identity, added_at)
                VALUES (\(signer.keyID), \(signer.name), \(signer.publicIdentity), \(signer.addedAt))
                ON CONFLICT (key_id) DO UPDATE SET name = EXCLUDED.name, public_identity = EXCLUDED.public_identity, added_at = EXCLUDED.added_at
                """
            )
        case .untrustSigner(let keyID):
            try await c.rows("DELETE FROM trusted_signers WHERE key_id = \(keyID)")
        case .setPolicy(let policy):
            try await c.rows(
                """
                INSERT INTO policies (model, alias, rules, set_at, set_by) VALUES (\(policy.model), \(policy.alias), \(policy.rules), \(policy.setAt), \(policy.setBy))
                ON CONFLICT (model, alias) DO UPDATE SET rules = EXCLUDED.rules, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by
                """
            )
        case .removePolicy(let model, let alias):
            try await c.rows("DELETE FROM policies WHERE model = \(model) AND alias = \(alias)")
        case .setBudget(let budget):
            try await c.rows(
                """
                INSERT INTO budgets (dataset_id, epsilon, delta, set_at, set_by)
                VALUES (\(budget.datasetID), \(budget.epsilon), \(budget.delta), \(budget.setAt), \(budget.setBy))
                ON CONFLICT (dataset_id) DO UPDATE SET epsilon = EXCLUDED.epsilon, delta = EXCLUDED.delta, set_at = EXCLUDED.set_at,
                    set_by = EXCLUDED.set_by
                """
            )
        case .addToken(let token):
            try await c.rows(PostgresRecords.insert(token, into: "api_tokens"))
        case .revokeToken(let id, let at):
            try await c.rows("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, \(at)) WHERE id = \(id)")
        case .setAlias(let model, let alias, let version, let at):
            try await c.rows(
                """
                INSERT INTO aliases (model_id, alias, version_id, updated_at)
                SELECT v.model_id, \(alias), v.id, \(at) FROM versions v JOIN models m ON m.id = v.model_id
                WHERE m.name = \(model) AND v.version = \(version)
                ON CONFLICT (model_id, alias) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = EXCLUDED.updated_at
                """
            )
        case .removeAlias(let model, let alias):
            try await c.rows("DELETE FROM aliases WHERE alias = \(alias) AND model_id = (SELECT id FROM models WHERE name = \(model))")
        case .addVersion(let new):
            try await addVersion(new, on: c)
        case .setTag(let model, let version, let key, let value):
            guard let id = try await Self.versionID(model: model, version: version, on: c) else {
                throw CofferRegistryError.unknownVersion("\(model):\(version)")
            }
            if let value {
                try await c.rows(
                    "INSERT INTO tags (version_id, key, value) VALUES (\(id), \(key), \(value)) ON CONFLICT (version_id, key) DO UPDATE SET value = EXCLUDED.value"
                )
            } else {
                try await c.rows("DELETE FROM tags WHERE version_id = \(id) AND key = \(key)")
            }
        case .putWrappedKeys(let keys):
            // A replaced stanza leaves its old value in a dead tuple: a rotation puts it out of reach.
            var replaced = false
            for key in keys {
                let existed = try await Self.execute(
                    c,
                    "SELECT 1 FROM wrapped_keys WHERE version_id = \(key.versionID) AND recipient_key_id = \(key.recipientKeyID)"
                )
                replaced = replaced || existed > 0
                try await putWrappedKey(key, on: c)
            }
            return replaced
        case .removeWrappedKeys(let version, let recipient):
            let removed = try await Self.execute(
                c,
                """
                DELETE FROM wrapped_keys WHERE (\(version)::bigint IS NULL OR version_id = \(version))
                    AND (\(recipient)::text IS NULL OR recipient_key_id = \(recipient))
                """
            )
            return removed > 0
        case .erase(let ids, let at, let by):
            var destroyed = false
            for id in ids {
                try await c.rows(
                    """
                    INSERT INTO erasures (version_id, erased_at, erased_by) VALUES (\(id), \(at), \(by))
                    ON CONFLICT (version_id) DO UPDATE SET erased_at = EXCLUDED.erased_at, erased_by = EXCLUDED.erased_by
                    """
                )
                let keys = try await Self.execute(c, "DELETE FROM wrapped_keys WHERE version_id = \(id)")
                let sessions = try await Self.execute(
                    c,
                    "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, \(at)) WHERE version_id = \(id) AND wrapped_key IS NOT NULL"
                )
                try await c.rows("UPDATE sessions SET revoked_at = coalesce(revoked_at, \(at)) WHERE version_id = \(id) AND revoked_at IS NULL")
                try await c.rows("DELETE FROM aliases WHERE version_id = \(id)")
                destroyed = destroyed || keys + sessions > 0
            }
            return destroyed
        case .rekey(let id, let files, let keys, let attestation, let at):
            let removed = try await Self.execute(c, "DELETE FROM wrapped_keys WHERE version_id = \(id)")
            for key in keys { try await putWrappedKey(key, on: c) }
            try await c.rows("DELETE FROM rekeyed_files WHERE version_id = \(id)")
            for file in files { try await c.rows(PostgresRecords.insert(file, into: "rekeyed_files")) }
            try await c.rows("DELETE FROM attestations WHERE version_id = \(id) AND kind = 'rekey'")
            try await c.rows("INSERT INTO attestations (version_id, kind, document) VALUES (\(id), 'rekey', \(attestation))")
            let cleared = try await Self.execute(
                c,
                "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, \(at)) WHERE version_id = \(id) AND wrapped_key IS NOT NULL"
            )
            try await c.rows("UPDATE sessions SET revoked_at = coalesce(revoked_at, \(at)) WHERE version_id = \(id) AND revoked_at IS NULL")
            return removed + cleared > 0
        case .rememberIdentities(let identities):
            for identity in identities {
                try await c.rows(
                    "INSERT INTO recipient_identities (key_id, public_identity) VALUES (\(identity.keyID), \(identity.publicIdentity)) ON CONFLICT DO NOTHING"
                )
            }
        case .addSession(let session):
            var row = session
            if let copy = session.wrappedKey {
                row.wrappedKey = Data(
                    try await keys.seal(Array(copy), column: .sessionWrappedKey, rowKey: SealedColumn.sessionWrappedKey.rowKey([session.id]), on: c)
                )
            }
            try await c.rows(PostgresRecords.insert(row, into: "sessions"))
        case .revokeSession(let id, let at):
            let cleared = try await Self.execute(
                c,
                "UPDATE sessions SET revoked_at = coalesce(revoked_at, \(at)), wrapped_key = NULL WHERE id = \(id) AND wrapped_key IS NOT NULL"
            )
            try await c.rows("UPDATE sessions SET revoked_at = coalesce(revoked_at, \(at)) WHERE id = \(id)")
            return cleared > 0
        case .dropSessionKeys(let ids):
            let cleared = try await Self.execute(c, "UPDATE sessions SET wrapped_key = NULL WHERE id = ANY(\(ids)) AND wrapped_key IS NOT NULL")
            return cleared > 0
        case .dropExpiredSessionKeys(let now):
            let cleared = try await Self.execute(c, "UPDATE sessions SET wrapped_key = NULL WHERE wrapped_key IS NOT NULL AND expires_at <= \(now)")
            return cleared > 0
        case .addAuditHead(let head):
            try await c.rows(
                """
                INSERT INTO audit_heads (seq, entry_hash, signed_at, signature, key_id)
                VALUES (\(head.seq), \(head.entryHash), \(head.signedAt), \(head.signature), \(head.keyID)) ON CONFLICT DO NOTHING
                """
            )
        case .putUpload(let upload):
            try await c.rows(
                """
                INSERT INTO uploads (id, principal, location, received, created_at, expires_at)
                VALUES (\(upload.id), \(upload.principal), \(upload.location), \(Int64(upload.received)), \(upload.createdAt), \(upload.expiresAt))
                ON CONFLICT (id) DO UPDATE SET principal = EXCLUDED.principal, location = EXCLUDED.location, received = EXCLUDED.received,
                    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
                """
            )
        case .removeUpload(let id):
            try await c.rows("DELETE FROM uploads WHERE id = \(id)")
        case .addPendingBlobs(let digests, let at):
            for digest in digests {
                try await c.rows("INSERT INTO pending_blobs (digest, started_at) VALUES (\(digest), \(at)) ON CONFLICT DO NOTHING")
            }
        case .removePendingBlobs(let digests):
            try await c.rows("DELETE FROM pending_blobs WHERE digest = ANY(\(digests))")
        }
        return false
    }

    static func versionID(model: String, version: String, on c: PostgresConnection) async throws -> Int64? {
        try await int(c, "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = \(model) AND v.version = \(version)")
    }

    private func addVersion(_ new: NewVersion, on c: PostgresConnection) async throws {
        try await c.rows("INSERT INTO models (name, created_at) VALUES (\(new.model), \(new.row.createdAt)) ON CONFLICT (name) DO NOTHING")
        guard let modelID = try await Self.int(c, "SELECT id FROM models WHERE name = \(new.model)") else {
            throw CofferRegistryError.database("model \(new.model) was not created")
        }
        if try await Self.versionID(model: new.model, version: new.row.version, on: c) != nil {
            throw CofferRegistryError.versionExists("\(new.model):\(new.row.version)")
        }
        var row = new.row
        row.id = nil
        row.modelID = modelID
        guard let inserted = try await c.rows(PostgresRecords.insert(row, into: "versions", returning: ["id"])).first else {
            throw CofferRegistryError.database("version \(new.model):\(row.version) got no row id")
        }
        let id = try inserted.decode(Int64.self)
        if let dataset = new.chargedDataset {
            try await c.rows(
                "INSERT INTO budget_charges (version_id, dataset_id, charged_at, override_by) VALUES (\(id), \(dataset), \(row.createdAt), \(new.overrideBy))"
            )
        }
        if let segments = new.segments {
            try await c.rows("INSERT INTO version_privacy (version_id, segments, claimed_epsilon) VALUES (\(id), \(segments), \(new.claimedEpsilon))")
        }
        for var file in new.files {
            file.versionID = id
            try await c.rows(PostgresRecords.insert(file, into: "files"))
        }
        for (recipient, stanza) in new.keys {
            try await putWrappedKey(WrappedKeyRecord(versionID: id, recipientKeyID: recipient, stanza: stanza), on: c)
        }
        try await c.rows(
            "INSERT INTO attestations (version_id, kind, document) VALUES (\(id), 'dsse', \(new.envelope)), (\(id), 'model-signing', \(new.bundle))"
        )
        for (key, value) in new.tags {
            try await c.rows("INSERT INTO tags (version_id, key, value) VALUES (\(id), \(key), \(value))")
        }
        if !new.files.isEmpty { try await c.rows("DELETE FROM pending_blobs WHERE digest = ANY(\(new.files.map(\.sealedSHA256)))") }
    }

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

    func lastLedgerRecord(kind: String) async throws(CofferRegistryError) -> LedgerRow? {
        try await fetchOne(LedgerRow.self, "SELECT * FROM ledger WHERE kind = \(kind) ORDER BY seq DESC LIMIT 1")
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

    private static let headSelect = "SELECT v.id, m.name, v.version, v.digest FROM versions v JOIN models m ON m.id = v.model_id"

    private func heads(_ query: PostgresQuery) async throws(CofferRegistryError) -> [VersionHead] {
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

    /// A version row with its model name, parent, aliases and tags (unit and record separators join the lists).
    private static let summarySelect = """
        SELECT v.*, m.name AS model_name, p.version AS parent_version, pm.name AS parent_model,
            (SELECT string_agg(alias, chr(31)) FROM aliases a WHERE a.version_id = v.id) AS alias_list,
            (SELECT string_agg(key || chr(30) || value, chr(31)) FROM tags t WHERE t.version_id = v.id) AS tag_list,
            (SELECT erased_at FROM erasures e WHERE e.version_id = v.id) AS erased_at,
            (SELECT erased_by FROM erasures e WHERE e.version_id = v.id) AS erased_by
        FROM versions v JOIN models m ON m.id = v.model_id
        LEFT JOIN versions p ON p.id = v.parent_version_id LEFT JOIN models pm ON pm.id = p.model_id
        """

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
        let sql = "\(Self.summarySelect) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)"
        var summaries: [VersionSummaryRow] = []
        for row in try await database.query(PostgresQuery(unsafeSQL: sql, binds: bindings)) {
            var tags: [String: String] = [:]
            for pair in try decode(row, String?.self, column: "tag_list")?.split(separator: "\u{1F}") ?? [] {
                let parts = pair.split(separator: "\u{1E}", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2 { tags[String(parts[0])] = String(parts[1]) }
            }
            let parentModel = try decode(row, String?.self, column: "parent_model")
            let parentVersion = try decode(row, String?.self, column: "parent_version")
            summaries.append(
                VersionSummaryRow(
                    id: try decode(row, Int64.self, column: "id"),
                    model: try decode(row, String.self, column: "model_name"),
                    row: try row.record(VersionRecord.self),
                    parent: parentModel.flatMap { m in parentVersion.map { "\(m):\($0)" } },
                    aliases: try decode(row, String?.self, column: "alias_list")?.split(separator: "\u{1F}").map(String.init).sorted() ?? [],
                    tags: tags,
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
    private func opening<T>(
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
            for row in try await database.query(query) {
                sessions.append(
                    SessionRow(
                        session: try row.record(SessionRecord.self),
                        model: try decode(row, String.self, column: "model_name"),
                        version: try decode(row, String.self, column: "version_name")
                    )
                )
            }
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

    // MARK: - Maintenance

    /// What PostgreSQL's own checks cannot say about a Coffer database: the migrations recorded are exactly the ones
    /// this build embeds, every immutability trigger of `schema/postgres/` is there and enabled, the epoch row
    /// exists, its key file is present and no sealed value is under another epoch.
    func integrityProblems() async throws(CofferRegistryError) -> [String] {
        var problems: [String] = []
        let applied = try await PostgresMigrator.appliedMigrations(database)
        let embedded = EmbeddedSchema.postgresMigrations.map(\.name)
        if applied != embedded {
            problems.append(
                "PostgreSQL migrations recorded \(applied.joined(separator: ", ")), this Coffer's are \(embedded.joined(separator: ", "))"
            )
        }
        var present: [String: String] = [:]
        for row in try await database.query(
            "SELECT tgname::text, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'pg_%'"
        ) {
            let (name, enabled) = try reading { try row.decode((String, String).self) }
            present[name] = enabled
        }
        for trigger in Self.expectedTriggers {
            switch present[trigger] {
            case nil: problems.append("PostgreSQL trigger \(trigger) is missing (its immutability rule is not enforced)")
            case "D": problems.append("PostgreSQL trigger \(trigger) is disabled (its immutability rule is not enforced)")
            default: break
            }
        }
        let epoch = try await scalar(Int64.self, "SELECT epoch FROM epoch_state")
        if let epoch {
            if !keys.keyFileExists(UInt32(truncatingIfNeeded: epoch)) {
                problems.append("the key file of the current epoch \(epoch) is missing from \(keys.directory)")
            }
            for column in keys.columns {
                let stale = try await scalar(
                    Int64.self,
                    PostgresQuery(
                        unsafeSQL: """
                            SELECT count(*) FROM \(try PostgresRecords.identifier(column.table))
                            WHERE \(try PostgresRecords.identifier(column.column)) IS NOT NULL
                              AND (substring(\(column.column) FROM 1 FOR 4) <> 'cfe1'::bytea
                                   OR get_byte(\(column.column), 4)::bigint * 16777216 + get_byte(\(column.column), 5) * 65536
                                      + get_byte(\(column.column), 6) * 256 + get_byte(\(column.column), 7) <> \(epoch))
                            """
                    )
                )
                if let stale, stale > 0 { problems.append("\(stale) values of \(column) are not sealed under the current epoch \(epoch)") }
            }
        } else {
            problems.append("the epoch_state row is missing")
        }
        return problems
    }

    /// The triggers `schema/postgres/` creates, by name.
    static let expectedTriggers: [String] = EmbeddedSchema.postgresMigrations.flatMap { migration in
        migration.sql.split(separator: "\n").compactMap { line -> String? in
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count > 2, words[0] == "CREATE", words[1] == "TRIGGER" else { return nil }
            return String(words[2])
        }
    }

    func materializedTables() async throws(CofferRegistryError) -> MaterializedTables {
        var tables = MaterializedTables()
        tables.principals = try await fetchAll(PrincipalRecord.self, "SELECT * FROM principals")
        tables.grants = try await fetchAll(GrantRecord.self, "SELECT principal, role, scope, alias, granted_at, granted_by FROM grants")
        tables.trusted = try await fetchAll(TrustedSignerRecord.self, "SELECT * FROM trusted_signers")
        for row in try await database.query(
            "SELECT m.name, a.alias, v.version FROM aliases a JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id"
        ) {
            let (model, alias, version) = try reading { try row.decode((String, String, String).self) }
            tables.aliases.append(.init(model: model, alias: alias, version: version))
        }
        tables.policies = try await fetchAll(PolicyRecord.self, "SELECT * FROM policies")
        tables.budgets = try await fetchAll(BudgetRecord.self, "SELECT * FROM budgets")
        for row in try await database.query(
            "SELECT c.dataset_id, m.name, v.version FROM budget_charges c JOIN versions v ON v.id = c.version_id JOIN models m ON m.id = v.model_id"
        ) {
            let (dataset, model, version) = try reading { try row.decode((String, String, String).self) }
            tables.charges.append(.init(dataset: dataset, model: model, version: version))
        }
        tables.erasures = try await heads("\(unescaped: Self.headSelect) WHERE v.id IN (SELECT version_id FROM erasures)")
        tables.keys = try await fetchAll(RegistryKeyRecord.self, "SELECT * FROM registry_keys")
        tables.tokens = try await fetchAll(APITokenRecord.self, "SELECT * FROM api_tokens")
        tables.versions = try await heads("\(unescaped: Self.headSelect)")
        return tables
    }
}
