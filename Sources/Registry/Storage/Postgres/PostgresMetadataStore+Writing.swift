import CofferCrypto
import Foundation
import NIOCore
import PostgresNIO

/// Units of work, each one PostgreSQL transaction (see ``PostgresMetadataStore``).
extension PostgresMetadataStore {
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
            if let check = work.holdingCheck { try await enforce(check, on: connection) }
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
}
