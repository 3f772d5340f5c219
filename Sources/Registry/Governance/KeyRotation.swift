public import CofferCrypto
import Foundation
import GRDB
import Synchronization

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
        current: UnlockedIdentity,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters = .default,
        by signer: Signer
    ) throws(CofferRegistryError) -> PublicIdentity {
        let old = try identity
        try require(signer, .admin, on: nil, action: "key.rotate", target: old.keyID)
        guard current.publicIdentity.keyID == old.keyID else {
            throw .refused("key rotation needs the registry's current identity (\(Self.identityName).key, \(old.keyID))")
        }
        let principal = try acting(signer, in: try ledgerState()).principal
        let recordSigner = principal.name == "registry" ? Signer(current) : Signer.registry(current, for: principal)
        // In a registry with principals the admin approves the rotation with their own key.
        let approver = principal.name == "registry" ? nil : signer.key
        let next = try Self.generateRegistryIdentity()
        do {
            try FileBytes.write(try next.encrypt(passphrase: passphrase, parameters: kdf), to: keyPath + Self.nextSuffix, overwrite: true)
            try FileBytes.write(next.publicIdentity.jsonBytes, to: publicPath + Self.nextSuffix, mode: 0o644, overwrite: true)
        } catch {
            throw .crypto(error)
        }
        let fresh = next.publicIdentity
        let state = try database.write { db -> LedgerState in
            let rows = try Row.fetchAll(db, sql: "SELECT version_id, stanza FROM wrapped_keys WHERE recipient_key_id = ?", arguments: [old.keyID])
            for row in rows {
                let dataKey: SecretKey
                do { dataKey = try WrappedKey(encoded: Array(row["stanza"] as Data)).unwrap(with: current.identity) } catch {
                    throw CofferRegistryError.tampered("version \(row["version_id"] as Int64): the registry's wrapped key does not open: \(error)")
                }
                try db.execute(
                    sql: "INSERT OR REPLACE INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (?, ?, ?)",
                    arguments: [row["version_id"], fresh.keyID, Data(dataKey.wrap(for: fresh).encoded)]
                )
            }
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE recipient_key_id = ?", arguments: [old.keyID])
            // The new key signs its own rotation: a chain of keys can only be extended by whoever holds both ends.
            let head = try refreshed(ledger.withLock { $0 }, db: db)
            let proof = next.signEd25519(LedgerState.rotationMessage(registry: head.registry, seq: head.seq + 1, old: old.keyID, new: fresh.keyID))
            let approval = approver?.identity.signEd25519(
                LedgerState.approvalMessage(registry: head.registry, seq: head.seq + 1, old: old.keyID, new: fresh.keyID)
            )
            let change = LedgerChange.keyRotate(key: fresh, proof: proof, approval: approval)
            let (state, _, actor) = try append(change, signer: recordSigner, db: db)
            try Self.appendAudit(
                db,
                principal: actor,
                action: "key.rotate",
                target: fresh.keyID,
                outcome: .ok,
                reason: "retired \(old.keyID); \(rows.count) data keys re-wrapped"
            )
            return state
        }
        try adopt(state)
        try Self.finishRotation(home: home, committedKeyID: fresh.keyID)
        try database.checkpointAndTruncateLog()
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
            BlobDirectory.syncDirectory(home)
        } else if next?.keyID != committedKeyID {
            unlink(key + nextSuffix)
            unlink(pub + nextSuffix)
        }
    }

    /// The public identity of a registry key, current or retired, by key ID: only keys of the verified chain count.
    func registryKey(_ keyID: String) throws(CofferRegistryError) -> PublicIdentity? { try ledgerState().key(keyID)?.identity }
}
