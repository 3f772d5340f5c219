public import CofferCrypto
import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#endif

extension Registry {
    static let nextSuffix = ".next"

    /// Replaces the registry's identity: a new key pair (encrypted under `passphrase`), every data key wrapped for
    /// the old key re-wrapped for the new one without touching a blob (as Vault's rewrap does), the old key's
    /// stanzas deleted and its key file replaced, so it opens nothing afterwards. An admin's act; `current` is the
    /// registry's own identity, unlocked. Returns the new public identity; reopen the registry to use it.
    ///
    /// Crash safety: the new key files are written as `registry.key.next`/`registry.pub.next` first; the database
    /// commit (re-wrapped keys and `identity_key_id`) decides which key is current, and opening the registry
    /// finishes or discards a rotation that was interrupted.
    public func rotateKey(
        current: borrowing Identity,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters = .default,
        by actor: Principal?
    ) throws(CofferRegistryError) -> PublicIdentity {
        try require(.admin, on: nil, by: actor, action: "key.rotate", target: identity.keyID)
        guard current.publicIdentity.keyID == identity.keyID else {
            throw .refused("key rotation needs the registry's current identity (\(Self.identityName).key, \(identity.keyID))")
        }
        let next = try Self.generateRegistryIdentity()
        do {
            try FileBytes.write(try next.encrypt(passphrase: passphrase, parameters: kdf), to: keyPath + Self.nextSuffix, overwrite: true)
            try FileBytes.write(next.publicIdentity.jsonBytes, to: publicPath + Self.nextSuffix, mode: 0o644, overwrite: true)
        } catch {
            throw .crypto(error)
        }
        let old = identity
        let fresh = next.publicIdentity
        let rewrapped = try database.write { db -> Int in
            let rows = try Row.fetchAll(db, sql: "SELECT version_id, stanza FROM wrapped_keys WHERE recipient_key_id = ?", arguments: [old.keyID])
            for row in rows {
                let dataKey: SecretKey
                do { dataKey = try WrappedKey(encoded: Array(row["stanza"] as Data)).unwrap(with: current) } catch {
                    throw CofferRegistryError.tampered("version \(row["version_id"] as Int64): the registry's wrapped key does not open: \(error)")
                }
                try db.execute(
                    sql: "INSERT OR REPLACE INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (?, ?, ?)",
                    arguments: [row["version_id"], fresh.keyID, Data(dataKey.wrap(for: fresh).encoded)]
                )
            }
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE recipient_key_id = ?", arguments: [old.keyID])
            let now = Self.now()
            try db.execute(
                sql: "INSERT OR IGNORE INTO registry_keys (key_id, public_identity, created_at) VALUES (?, ?, ?)",
                arguments: [old.keyID, Data(old.jsonBytes), now]
            )
            try db.execute(sql: "UPDATE registry_keys SET retired_at = ? WHERE key_id = ?", arguments: [now, old.keyID])
            try db.execute(
                sql: "INSERT INTO registry_keys (key_id, public_identity, created_at) VALUES (?, ?, ?)",
                arguments: [fresh.keyID, Data(fresh.jsonBytes), now]
            )
            try db.execute(sql: "INSERT OR REPLACE INTO registry_meta (key, value) VALUES ('identity_key_id', ?)", arguments: [fresh.keyID])
            return rows.count
        }
        try Self.finishRotation(home: home, committedKeyID: fresh.keyID)
        try database.checkpointAndTruncateLog()
        try audit(
            principal: actor?.name ?? "-",
            action: "key.rotate",
            target: fresh.keyID,
            outcome: .ok,
            reason: "retired \(old.keyID); \(rewrapped) data keys re-wrapped"
        )
        return fresh
    }

    static func generateRegistryIdentity() throws(CofferRegistryError) -> Identity {
        do { return try Identity.generate(name: identityName) } catch { throw .crypto(error) }
    }

    var keyPath: String { "\(home)/\(Self.identityName).key" }
    var publicPath: String { "\(home)/\(Self.identityName).pub" }

    /// Completes an interrupted rotation whose database commit happened (the `.next` key is the committed one),
    /// or discards one that never committed.
    static func finishRotation(home: String, committedKeyID: String?) throws(CofferRegistryError) {
        let key = "\(home)/\(identityName).key"
        let pub = "\(home)/\(identityName).pub"
        guard access(pub + nextSuffix, F_OK) == 0 else { return }
        let next = try? PublicIdentity(contentsOf: pub + nextSuffix)
        if let next, next.keyID == committedKeyID, access(key + nextSuffix, F_OK) == 0 {
            guard rename(key + nextSuffix, key) == 0, rename(pub + nextSuffix, pub) == 0 else {
                throw .io(path: key, reason: "cannot install the rotated registry key: \(String(cString: strerror(errno)))")
            }
            BlobStore.syncDirectory(home)
        } else if next?.keyID != committedKeyID {
            unlink(key + nextSuffix)
            unlink(pub + nextSuffix)
        }
    }

    /// The public identity of a registry key, current or retired, by key ID.
    func registryKey(_ keyID: String) throws(CofferRegistryError) -> PublicIdentity? {
        if keyID == identity.keyID { return identity }
        let data = try database.read { db in
            try Data.fetchOne(db, sql: "SELECT public_identity FROM registry_keys WHERE key_id = ?", arguments: [keyID])
        }
        return data.flatMap { try? PublicIdentity(jsonBytes: Array($0)) }
    }
}
