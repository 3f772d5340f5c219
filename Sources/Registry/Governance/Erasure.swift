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
    public func erase(model: String, version: String? = nil, by actor: Principal?) throws(CofferRegistryError) -> [String] {
        let target = version.map { "\(model):\($0)" } ?? model
        try require(.admin, on: model, by: actor, action: "erase", target: target)
        guard try modelExists(model) else { throw .unknownModel(model) }
        var ids: [Int64] = []
        if let version {
            ids = [try resolve(try ModelReference(name: model, selector: .version(version))).id]
        } else {
            ids = try database.read { db in
                try Int64.fetchAll(db, sql: "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?", arguments: [model])
            }
        }
        let who = actor?.name ?? "-"
        let (erased, digests) = try database.write { db -> ([String], [String]) in
            let pending = try Int64.fetchAll(
                db,
                sql:
                    "SELECT id FROM versions WHERE id IN (\(ids.map(String.init).joined(separator: ","))) AND id NOT IN (SELECT version_id FROM erasures)"
            )
            guard !pending.isEmpty else { return ([], []) }
            let list = pending.map(String.init).joined(separator: ",")
            let now = Self.now()
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE version_id IN (\(list))")
            try db.execute(
                sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE version_id IN (\(list))",
                arguments: [now]
            )
            try db.execute(sql: "DELETE FROM aliases WHERE version_id IN (\(list))")
            for id in pending {
                try db.execute(sql: "INSERT INTO erasures (version_id, erased_at, erased_by) VALUES (?, ?, ?)", arguments: [id, now, who])
            }
            let names = try String.fetchAll(db, sql: "SELECT version FROM versions WHERE id IN (\(list)) ORDER BY id")
            let digests = try String.fetchAll(db, sql: "SELECT DISTINCT sealed_sha256 FROM files WHERE version_id IN (\(list))")
            return (names.map { "\(model):\($0)" }, digests)
        }
        guard !erased.isEmpty else { throw .erased("\(target) was already erased") }
        // The keys are gone; the blobs go next (a crash in between leaves undecryptable blobs, which gc reclaims).
        for digest in digests { blobs.remove(digest) }
        try database.checkpointAndTruncateLog()
        try audit(principal: who, action: "erase", target: target, outcome: .ok, reason: erased.joined(separator: ", "))
        return erased
    }
}
