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
    let database: RegistryDatabase
    let blobs: BlobDirectory
    /// The session-hash key, read once (a server hashes a token on every request).
    let hashKey = Mutex<KeyBox?>(nil)
    /// The ledger state this process verified (``ledgerState()`` brings it up to date).
    let ledger = Mutex<LedgerState?>(nil)
    let memory: ClientMemory?

    /// The registry's current public key, as its verified ledger names it: every version's data key is wrapped for it.
    public var identity: PublicIdentity {
        get throws(CofferRegistryError) {
            guard let key = try ledgerState().currentKey else { throw .tampered("the ledger names no registry key") }
            return key
        }
    }

    static let databaseName = "registry.sqlite"
    static let identityName = "registry"

    /// Opens the registry at `home`.
    ///
    /// - Parameter memory: where this client remembers the registries it verified (its pins and last states);
    ///   `nil` remembers nothing beyond this process.
    public init(at home: String, busyTimeout: Double = 5, memory: ClientMemory? = .standard()) throws(CofferRegistryError) {
        guard access("\(home)/\(Self.databaseName)", F_OK) == 0 else { throw .notARegistry(home) }
        self.home = home
        self.memory = memory
        database = try RegistryDatabase(path: "\(home)/\(Self.databaseName)", busyTimeout: busyTimeout)
        let committed = try database.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM registry_meta WHERE key = 'identity_key_id'")
        }
        try Self.finishRotation(home: home, committedKeyID: committed)
        blobs = BlobDirectory(root: home)
    }

    /// Creates a registry at `home` with a new identity of its own, encrypted under `passphrase`, and signs its
    /// first ledger record (docs/FORMAT.md, "Signed registry records") naming that key as the registry's root and
    /// `owner`, if any, as its first principal: an admin and a trusted signer. This client pins the new root.
    public static func create(
        at home: String,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters = .default,
        owner: PublicIdentity? = nil,
        memory: ClientMemory? = .standard()
    ) throws(CofferRegistryError)
        -> Registry
    {
        guard access("\(home)/\(databaseName)", F_OK) != 0 else { throw .registryExists(home) }
        if let owner { try ModelReference.validate(name: owner.name) }
        try BlobDirectory.makeDirectory(home)
        try BlobDirectory.makeDirectory("\(home)/tmp")
        try BlobDirectory.makeDirectory("\(home)/blobs/sha256")
        let registryIdentity = try generateRegistryIdentity()
        do {
            try FileBytes.write(try registryIdentity.encrypt(passphrase: passphrase, parameters: kdf), to: "\(home)/\(identityName).key")
            try FileBytes.write(registryIdentity.publicIdentity.jsonBytes, to: "\(home)/\(identityName).pub", mode: 0o644)
        } catch {
            throw .crypto(error)
        }
        let root = registryIdentity.publicIdentity
        // The genesis record goes in before the database file takes its name: its presence makes the directory a registry.
        let staging = "\(home)/tmp/\(databaseName)-\(UUID().uuidString)"
        do {
            let database = try RegistryDatabase(path: staging)
            let genesis = LedgerRecord.sign(
                registry: root.keyID,
                seq: 1,
                prev: LedgerRecord.zeroHash,
                at: now(),
                by: "registry",
                change: .genesis(key: root, owner: owner.map { .init(name: $0.name, identity: $0) }),
                signer: registryIdentity
            )
            var state = LedgerState(registry: root.keyID)
            try state.apply(genesis)
            try database.write { db in
                try db.execute(sql: "INSERT INTO registry_meta (key, value) VALUES ('identity_key_id', ?)", arguments: [root.keyID])
                try db.execute(
                    sql: "INSERT INTO ledger (seq, kind, object, envelope, hash) VALUES (1, ?, ?, ?, ?)",
                    arguments: [genesis.change.kind, genesis.change.object, Data(genesis.envelope), genesis.hash]
                )
                try Self.materialize(genesis, state: state, db: db)
                let reason = owner.map { "owner \($0.name) (\($0.keyID))" } ?? "no owner"
                try Self.appendAudit(db, principal: "registry", action: "init", target: root.keyID, outcome: .ok, reason: reason)
            }
            try database.checkpointAndTruncateLog()
        } catch {
            for suffix in ["", "-wal", "-shm"] { unlink(staging + suffix) }
            throw error as? CofferRegistryError ?? .database("\(error)")
        }
        guard rename(staging, "\(home)/\(databaseName)") == 0 else {
            throw .io(path: "\(home)/\(databaseName)", reason: String(cString: strerror(errno)))
        }
        for suffix in ["-wal", "-shm"] { unlink(staging + suffix) }
        BlobDirectory.syncDirectory(home)
        // Creating a registry here is this user's consent to its root, whatever was pinned at this path before.
        try memory?.setPin(root.keyID, for: ClientMemory.location(home: home))
        let registry = try Registry(at: home, memory: memory)
        _ = try registry.ledgerState()
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
    /// Trusts `signer`'s signatures on pull and verify under `name` (default: the name the identity declares);
    /// a name is bound to one key at a time, so a second key calling itself `alice` is refused.
    /// Returns false when the key was already trusted under that name (nothing is recorded).
    @discardableResult
    public func trust(_ identity: PublicIdentity, name: String? = nil, by signer: Signer) throws(CofferRegistryError) -> Bool {
        let name = name ?? identity.name
        try require(signer, .admin, on: nil, action: "trust.add", target: identity.keyID)
        if try ledgerState().trusted[identity.keyID]?.name == name { return false }
        try record(.trustAdd(name: name, identity: identity), signer: signer, action: "trust.add", target: identity.keyID, reason: name)
        return true
    }

    /// Stops trusting the signer with `keyID` (or trusted name); returns whether one was removed.
    @discardableResult
    public func untrust(_ keyIDOrName: String, by signer: Signer) throws(CofferRegistryError) -> Bool {
        try require(signer, .admin, on: nil, action: "trust.remove", target: keyIDOrName)
        let state = try ledgerState()
        guard let keyID = state.trusted.first(where: { $0.key == keyIDOrName || $0.value.name == keyIDOrName })?.key else { return false }
        try record(.trustRemove(keyID: keyID), signer: signer, action: "trust.remove", target: keyID, reason: keyIDOrName)
        return true
    }

    /// The trusted signers, by name, each under the name the ledger bound to its key (never a self-declared one).
    public func trustedSigners() throws(CofferRegistryError) -> [PublicIdentity] {
        try ledgerState().trustedIdentities
    }

    /// The name the ledger trusts `keyID` under, if it is trusted.
    public func trustedName(_ keyID: String) throws(CofferRegistryError) -> String? { try ledgerState().trusted[keyID]?.name }
}
