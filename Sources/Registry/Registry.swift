public import CofferCrypto
import Foundation
import GRDB
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A registry: one directory holding `registry.sqlite`, the blob store and the registry's own identity.
///
/// ```swift
/// let registry = try Registry.create(at: home, passphrase: passphrase)
/// try registry.trust(alice.publicIdentity)
/// let pushed = try registry.push(PushRequest(model: "fraud", paths: ["model/"]), publisher: alice)
/// ```
public final class Registry: Sendable {
    public let home: String
    /// The registry's own public identity: every version's data key is wrapped for it.
    public let identity: PublicIdentity
    let database: RegistryDatabase
    let blobs: BlobStore
    /// The session-hash key, read once (a server hashes a token on every request).
    let hashKey = Mutex<KeyBox?>(nil)

    static let databaseName = "registry.sqlite"
    static let identityName = "registry"

    /// Opens the registry at `home`.
    public init(at home: String, busyTimeout: Double = 5) throws(CofferRegistryError) {
        guard access("\(home)/\(Self.databaseName)", F_OK) == 0 else { throw .notARegistry(home) }
        self.home = home
        database = try RegistryDatabase(path: "\(home)/\(Self.databaseName)", busyTimeout: busyTimeout)
        let committed = try database.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM registry_meta WHERE key = 'identity_key_id'")
        }
        try Self.finishRotation(home: home, committedKeyID: committed)
        do {
            identity = try PublicIdentity(contentsOf: "\(home)/\(Self.identityName).pub")
        } catch {
            throw .notARegistry(home)
        }
        blobs = BlobStore(root: home)
    }

    /// Creates a registry at `home` with a new identity of its own, encrypted under `passphrase`.
    public static func create(
        at home: String,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters = .default
    ) throws(CofferRegistryError)
        -> Registry
    {
        guard access("\(home)/\(databaseName)", F_OK) != 0 else { throw .registryExists(home) }
        try BlobStore.makeDirectory(home)
        try BlobStore.makeDirectory("\(home)/tmp")
        try BlobStore.makeDirectory("\(home)/blobs/sha256")
        do {
            let registryIdentity = try Identity.generate(name: identityName)
            try FileBytes.write(try registryIdentity.encrypt(passphrase: passphrase, parameters: kdf), to: "\(home)/\(identityName).key")
            try FileBytes.write(registryIdentity.publicIdentity.jsonBytes, to: "\(home)/\(identityName).pub", mode: 0o644)
        } catch {
            throw .crypto(error)
        }
        // The database file is created last: its presence is what makes the directory a registry.
        let database = try RegistryDatabase(path: "\(home)/\(databaseName)")
        let registry = try Registry(at: home)
        try database.write { db in
            try db.execute(sql: "INSERT INTO registry_meta (key, value) VALUES ('identity_key_id', ?)", arguments: [registry.identity.keyID])
        }
        return registry
    }

    static func now() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }
}

// MARK: - Trusted signers

extension Registry {
    /// Trusts `signer`'s signatures on pull and verify (an admin's act in a registry with principals).
    public func trust(_ signer: PublicIdentity, by actor: Principal? = nil) throws(CofferRegistryError) {
        try require(.admin, on: nil, by: actor, action: "trust.add", target: signer.keyID)
        try database.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO trusted_signers (key_id, name, public_identity, added_at) VALUES (?, ?, ?, ?)",
                arguments: [signer.keyID, signer.name, Data(signer.jsonBytes), Self.now()]
            )
        }
        try audit(principal: actor?.name ?? "-", action: "trust.add", target: signer.keyID, outcome: .ok, reason: signer.name)
    }

    /// Stops trusting the signer with `keyID` (or name); returns whether one was removed.
    @discardableResult
    public func untrust(_ keyIDOrName: String, by actor: Principal? = nil) throws(CofferRegistryError) -> Bool {
        try require(.admin, on: nil, by: actor, action: "trust.remove", target: keyIDOrName)
        let removed = try database.write { db in
            try db.execute(sql: "DELETE FROM trusted_signers WHERE key_id = ? OR name = ?", arguments: [keyIDOrName, keyIDOrName])
            return db.changesCount > 0
        }
        try audit(principal: actor?.name ?? "-", action: "trust.remove", target: keyIDOrName, outcome: removed ? .ok : .failed, reason: "")
        return removed
    }

    public func trustedSigners() throws(CofferRegistryError) -> [PublicIdentity] {
        let blobs: [Data] = try database.read { db in try Data.fetchAll(db, sql: "SELECT public_identity FROM trusted_signers ORDER BY name") }
        var result: [PublicIdentity] = []
        for blob in blobs {
            do { result.append(try PublicIdentity(jsonBytes: Array(blob))) } catch { throw .tampered("a trusted signer row: \(error)") }
        }
        return result
    }
}
