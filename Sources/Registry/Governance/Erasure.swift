import Foundation
import GRDB

extension Registry {
    /// Crypto-shreds `model` (every version) or one version of it: destroys every wrapped copy of the data key
    /// (recipients' and sessions'), removes the aliases that point at it, then deletes the blobs. The version's rows
    /// and attestation stay as a tombstone; `show` reports who erased it and when. An admin's act. Returns the
    /// versions erased.
    ///
    /// The database runs with `secure_delete` and its write-ahead log is checkpointed and truncated afterwards,
    /// so the deleted key stanzas do not linger in free pages or in the log.
    @discardableResult
    public func erase(model: String, version: String? = nil, by signer: Signer) throws(CofferRegistryError) -> [String] {
        let target = version.map { "\(model):\($0)" } ?? model
        try require(signer, .admin, on: model, action: "erase", target: target)
        guard try modelExists(model) else { throw .unknownModel(model) }
        var ids: [Int64] = []
        if let version {
            ids = [try resolve(try ModelReference(name: model, selector: .version(version))).id]
        } else {
            ids = try database.read { db in
                try Int64.fetchAll(db, sql: "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?", arguments: [model])
            }
        }
        let state = try ledgerState()
        let who = try acting(signer, in: state).principal.name
        let pending = try database.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT id, version, digest FROM versions WHERE id IN (\(ids.map(String.init).joined(separator: ","))) ORDER BY id"
            )
        }.filter { state.erased[$0["digest"] as String] == nil }
        guard !pending.isEmpty else { throw .erased("\(target) was already erased") }
        let (erased, digests, after) = try database.write { db -> ([String], [String], LedgerState) in
            let list = pending.map { String($0["id"] as Int64) }.joined(separator: ",")
            let now = Self.now()
            var state = state
            for row in pending {
                (state, _, _) = try append(.erase(model: model, version: row["version"], digest: row["digest"]), signer: signer, db: db)
                try db.execute(
                    sql: "INSERT OR REPLACE INTO erasures (version_id, erased_at, erased_by) VALUES (?, ?, ?)",
                    arguments: [row["id"] as Int64, now, who]
                )
            }
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE version_id IN (\(list))")
            try db.execute(
                sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE version_id IN (\(list))",
                arguments: [now]
            )
            try db.execute(sql: "DELETE FROM aliases WHERE version_id IN (\(list))")
            let digests = try String.fetchAll(
                db,
                sql:
                    "SELECT sealed_sha256 FROM files WHERE version_id IN (\(list)) UNION SELECT sealed_sha256 FROM rekeyed_files WHERE version_id IN (\(list))"
            )
            try Self.appendAudit(
                db,
                principal: who,
                action: "erase",
                target: target,
                outcome: .ok,
                reason: pending.map { "\(model):\($0["version"] as String)" }.joined(separator: ", ")
            )
            return (pending.map { "\(model):\($0["version"] as String)" }, digests, state)
        }
        try adopt(after)
        // The keys are gone; the blobs go next (a crash in between leaves undecryptable blobs, which gc reclaims).
        for digest in digests { blobs.remove(digest) }
        try database.checkpointAndTruncateLog()
        return erased
    }
}
