import CofferCrypto
import Foundation
import GRDB
import GRDBSQLite
import Synchronization

// Commits: a unit of work in one transaction, the changes it applies and the audit entries chained after it.
extension SQLiteMetadataStore {
    // MARK: - Writing

    func commit(_ work: UnitOfWork) async throws(CofferRegistryError) {
        let (deletedKeys, owed) = try await write { db in
            if let end = work.ledgerEnd {
                let current = try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(seq) FROM ledger")) ?? 0
                guard current == end else { throw CofferRegistryError.ledgerMoved }
            }
            // Inside the write transaction, which holds SQLite's write lock: no other row is added meanwhile.
            if let check = work.holdingCheck { try Self.enforce(check, db) }
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
            let owed = try Bool.fetchOne(
                db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM registry_meta WHERE key = ?)"),
                arguments: [Self.truncationOwedKey]
            )
            return (deletedKeys, owed ?? false)
        }
        // Deleted keys must not linger in the write-ahead log either (secure_delete already overwrites the pages): the
        // log stays between commands, so the frames that carried them would. A truncation owed by an earlier commit
        // (of any process) is retried too.
        if deletedKeys {
            try? await truncateLogIfOwed(waiting: true)
        } else if owed, truncationRetryIsDue {
            try? await truncateLogIfOwed(waiting: false)
        }
    }

    /// Marks, inside the transaction that deletes keys, that the log must be truncated (`truncateLogIfOwed`). The value
    /// is new each time, so that a truncation which read an older mark never removes this one.
    static func oweTruncation(_ db: Database) throws {
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO registry_meta (key, value) VALUES (?, lower(hex(randomblob(16))))")
            .execute(arguments: [Self.truncationOwedKey])
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
}
