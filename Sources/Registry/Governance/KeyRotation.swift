public import CofferCrypto
import Foundation
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
    ) async throws(CofferRegistryError) -> PublicIdentity {
        let old = try await identity
        try await require(signer, .admin, on: nil, action: "key.rotate", target: old.keyID)
        guard current.publicIdentity.keyID == old.keyID else {
            throw .refused("key rotation needs the registry's current identity (\(Self.identityName).key, \(old.keyID))")
        }
        let principal = try acting(signer, in: try await ledgerState()).principal
        let recordSigner = principal.name == "registry" ? Signer(current) : Signer.registry(current, for: principal)
        // In a registry with principals the admin approves the rotation with their own key.
        let approver = principal.name == "registry" ? nil : signer.key
        let next = UnlockedIdentity(try Self.generateRegistryIdentity())
        do {
            try FileBytes.write(try next.identity.encrypt(passphrase: passphrase, parameters: kdf), to: keyPath + Self.nextSuffix, overwrite: true)
            try FileBytes.write(next.publicIdentity.jsonBytes, to: publicPath + Self.nextSuffix, mode: 0o644, overwrite: true)
        } catch {
            throw .crypto(error)
        }
        let fresh = next.publicIdentity
        try await commitOnLedger { (head, work) async throws(CofferRegistryError) in
            // Read inside the prepared unit: a version committed meanwhile moves the ledger, and its key is re-wrapped too.
            let held = try await metadata.wrappedKeys(recipient: old.keyID)
            var rewrapped: [WrappedKeyRecord] = []
            for row in held {
                let dataKey: SecretKey
                do { dataKey = try WrappedKey(encoded: Array(row.stanza)).unwrap(with: current.identity) } catch {
                    throw CofferRegistryError.tampered("version \(row.versionID): the registry's wrapped key does not open: \(error)")
                }
                rewrapped.append(
                    WrappedKeyRecord(versionID: row.versionID, recipientKeyID: fresh.keyID, stanza: Data(dataKey.wrap(for: fresh).encoded))
                )
            }
            work.changes += [.putWrappedKeys(rewrapped), .removeWrappedKeys(version: nil, recipient: old.keyID)]
            // The new key signs its own rotation: a chain of keys can only be extended by whoever holds both ends.
            let proof = next.identity.signEd25519(
                LedgerState.rotationMessage(registry: head.registry, seq: head.seq + 1, old: old.keyID, new: fresh.keyID)
            )
            let approval = approver?.identity.signEd25519(
                LedgerState.approvalMessage(registry: head.registry, seq: head.seq + 1, old: old.keyID, new: fresh.keyID)
            )
            let change = LedgerChange.keyRotate(key: fresh, proof: proof, approval: approval)
            let (_, actor) = try append(change, signer: recordSigner, to: head, work: &work)
            work.audit.append(
                AuditDraft(
                    principal: actor,
                    action: "key.rotate",
                    target: fresh.keyID,
                    outcome: .ok,
                    reason: "retired \(old.keyID); \(held.count) data keys re-wrapped"
                )
            )
        }
        try Self.finishRotation(home: home, committedKeyID: fresh.keyID)
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
            Directories.sync(home)
        } else if next?.keyID != committedKeyID {
            unlink(key + nextSuffix)
            unlink(pub + nextSuffix)
        }
    }

    /// The public identity of a registry key, current or retired, by key ID: only keys of the verified chain count.
    func registryKey(_ keyID: String) async throws(CofferRegistryError) -> PublicIdentity? { try await ledgerState().key(keyID)?.identity }
}
