public import CofferCrypto
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A registry: a home directory holding its identity, and two stores (docs/FORMAT.md, "Storage backends"): its metadata
/// (SQLite in the directory, or PostgreSQL) and its sealed blobs (a directory beside it, or an OCI registry).
///
/// ```swift
/// let registry = try await Registry.create(at: home, passphrase: passphrase)
/// try await registry.trust(alice.publicIdentity, by: Signer(registryKey))
/// let pushed = try await registry.push(PushRequest(model: "fraud", paths: ["model/"]), publisher: alice)
/// ```
///
/// Every method is `async` and none blocks Swift's cooperative pool: the stores are asynchronous, and hashing,
/// sealing and decrypting run on threads of their own (``Offload``, the chunk pipeline's lanes).
public final class Registry: Sendable {
    public let home: String
    public let backends: Backends
    let metadata: any MetadataStore
    let blobs: any BlobStore
    /// The session-hash key, read once (a server hashes a token on every request).
    let hashKey = Mutex<KeyBox?>(nil)
    /// The ledger state this process verified (``ledgerState()`` brings it up to date).
    let ledger = Mutex<LedgerState?>(nil)
    /// The stored bytes of the last ledger record this process verified, with its number and hash: while the store
    /// holds the same bytes for the state being checked (same number, same hash), the record is unchanged without
    /// decoding and hashing it again (each server request makes that check).
    let verifiedTail = Mutex<(seq: Int64, hash: String, envelope: Data)?>(nil)
    /// The state this process read from this user's memory, its pin there already: adopting that state again would
    /// write nothing, and reading the memory again to find so took 0.8 ms of each command.
    let rememberedHere = Mutex<LedgerState?>(nil)
    /// What a signed statement's check concluded, and the parse of a version's ledger record (``DigestMemo``); a few
    /// thousand versions' worth (a few KiB each), 16 MiB of inputs at most each.
    let verifiedStatements = DigestMemo<(ModelStatement, PublicIdentity)>(capacity: 2048, byteLimit: 16 << 20)
    let parsedVersionRecords = DigestMemo<LedgerRecord>(capacity: 2048, byteLimit: 16 << 20)
    /// Hashes of version records confirmed to be on the chain this process verified (a chain only grows, so they stay
    /// so): a few MiB at most.
    let replayedVersionRecords = Mutex<Set<String>>([])
    let memory: ClientMemory?
    /// Where refusals go instead of the audit log, once a server installs a counter (``countRefusals(with:)``).
    let refusalCounter = Mutex<(@Sendable (RefusalKey) -> Void)?>(nil)

    /// The registry's current public key, as its verified ledger names it: every version's data key is wrapped for it.
    public var identity: PublicIdentity {
        get async throws(CofferRegistryError) {
            try Self.currentKey(of: try await ledgerState())
        }
    }

    /// The registry's current public key in `state`.
    static func currentKey(of state: LedgerState) throws(CofferRegistryError) -> PublicIdentity {
        guard let key = state.currentKey else { throw .tampered("the ledger names no registry key") }
        return key
    }

    static let databaseName = "registry.sqlite"
    static let identityName = "registry"

    /// Opens the registry at `home`, on the stores its `backends.json` names (SQLite and a blob directory when it has none).
    /// `home` is used as given each time a file in it is named (a blob placed, a key rotated): a caller that changes its
    /// working directory while the registry is open must give an absolute path (the CLI does).
    ///
    /// - Parameters:
    ///   - memory: where this client remembers the registries it verified (its pins and last states); `nil` remembers
    ///     nothing beyond this process.
    ///   - environment: where the stores' credentials are looked up (`PGPASSWORD`, `PGPASSFILE`, `REGISTRY_AUTH_FILE`...);
    ///     the process's environment when nil.
    ///   - sqlite: the connections an embedded (SQLite) store opens: `.one` for a command that does one thing at a time.
    public init(
        at home: String,
        busyTimeout: Double = 5,
        memory: ClientMemory? = .standard(),
        environment: [String: String]? = nil,
        sqlite: SQLiteConnections = .pool
    ) async throws(CofferRegistryError) {
        self.home = home
        self.memory = memory
        backends = try Backends.of(home: home)
        metadata = try await backends.openMetadata(home: home, busyTimeout: busyTimeout, sqlite: sqlite, environment: environment)
        do {
            blobs = try await backends.openBlobs(home: home, environment: environment)
            try Self.finishRotation(home: home, committedKeyID: try await metadata.meta("identity_key_id"))
        } catch {
            await metadata.close()
            throw error
        }
    }

    /// Closes the stores' connections (a PostgreSQL client's). The registry is unusable afterwards.
    public func close() async { await metadata.close() }

    /// Creates a registry at `home` with a new identity of its own, encrypted under `passphrase`, and signs its
    /// first ledger record (docs/FORMAT.md, "Signed registry records") naming that key as the registry's root and
    /// `owner`, if any, as its first principal: an admin and a trusted signer. This client pins the new root.
    /// `backends` chooses the stores; the default keeps everything in `home`.
    public static func create(
        at home: String,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters = .default,
        owner: PublicIdentity? = nil,
        backends: Backends = .embedded,
        memory: ClientMemory? = .standard(),
        environment: [String: String]? = nil
    ) async throws(CofferRegistryError)
        -> Registry
    {
        guard access("\(home)/\(databaseName)", F_OK) != 0, access("\(home)/\(Backends.fileName)", F_OK) != 0 else {
            throw .registryExists(home)
        }
        if let owner { try ModelReference.validate(name: owner.name) }
        try backends.validate()
        let existed = access(home, F_OK) == 0
        let present = Set((try? FileManager.default.contentsOfDirectory(atPath: home)) ?? [])
        do {
            try await createFiles(
                at: home,
                passphrase: passphrase,
                kdf: kdf,
                owner: owner,
                backends: backends,
                memory: memory,
                environment: environment
            )
        } catch {
            // Nothing half made stays: a refused init leaves the directory as it found it.
            if existed {
                for name in ["\(identityName).key", "\(identityName).pub", Backends.fileName, "tmp", "blobs"] where !present.contains(name) {
                    try? FileManager.default.removeItem(atPath: "\(home)/\(name)")
                }
            } else {
                try? FileManager.default.removeItem(atPath: home)
            }
            throw error
        }
        let registry = try await Registry(at: home, memory: memory, environment: environment)
        _ = try await registry.ledgerState()
        return registry
    }

    private static func createFiles(
        at home: String,
        passphrase: borrowing SecureBytes,
        kdf: KDFParameters,
        owner: PublicIdentity?,
        backends: Backends,
        memory: ClientMemory?,
        environment: [String: String]?
    ) async throws(CofferRegistryError) {
        try Directories.make(home)
        try Directories.make("\(home)/tmp")
        // The remote stores answer before anything is written: an unreachable or refusing engine is one line, at init.
        if backends.blobs != "directory" {
            let blobs = try await backends.openBlobs(home: home, environment: environment)
            _ = try await blobs.size(of: Digest.hex(Digest.sha256([UInt8]())))
        }
        let registryIdentity = try generateRegistryIdentity()
        let root = registryIdentity.publicIdentity
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
        do throws(LedgerError) { try state.apply(genesis) } catch { throw .tampered(error.description) }
        var work = UnitOfWork(ledgerEnd: 0, records: [LedgerRow(genesis)], changes: [.setMeta(key: "identity_key_id", value: root.keyID)])
        work.changes += changes(for: genesis, state: state)
        let reason = owner.map { "owner \($0.name) (\($0.keyID))" } ?? "no owner"
        work.audit = [AuditDraft(principal: "registry", action: "init", target: root.keyID, outcome: .ok, reason: reason)]
        if backends.blobs == "directory" { try DirectoryBlobStore.create(at: home) }
        do {
            try FileBytes.write(try registryIdentity.encrypt(passphrase: passphrase, parameters: kdf), to: "\(home)/\(identityName).key")
            try FileBytes.write(registryIdentity.publicIdentity.jsonBytes, to: "\(home)/\(identityName).pub", mode: 0o644)
        } catch {
            throw .crypto(error)
        }
        if backends.metadata == "sqlite" {
            // The genesis record goes in before the database file takes its name: its presence makes the directory a registry.
            let staging = "\(home)/tmp/\(databaseName)-\(UUID().uuidString)"
            do throws(CofferRegistryError) {
                let store = try SQLiteMetadataStore(path: staging)
                try await store.commit(work)
                try await store.checkpointAndTruncateLog()
            } catch {
                for suffix in ["", "-wal", "-shm"] { unlink(staging + suffix) }
                throw error
            }
            // A log beside no database is another database's (one deleted without it): SQLite would replay its pages
            // into the new one, as it does not check whose a log is.
            for suffix in ["-wal", "-shm"] { unlink("\(home)/\(databaseName)\(suffix)") }
            guard rename(staging, "\(home)/\(databaseName)") == 0 else {
                throw .io(path: "\(home)/\(databaseName)", reason: String(cString: strerror(errno)))
            }
            for suffix in ["-wal", "-shm"] { unlink(staging + suffix) }
            Directories.sync(home)
            if !backends.isEmbedded { try backends.write(home: home) }
        } else {
            // A database that already holds a ledger is another registry's: never written over. One that does not
            // exist yet is created (only here, by init).
            let store = try await PostgresMetadataStore.open(url: backends.metadata, home: home, environment: environment, creatingDatabase: true)
            do throws(CofferRegistryError) {
                guard try await store.ledgerEnd() == 0 else {
                    throw CofferRegistryError.registryExists("\(store.name) (it already holds a registry's ledger)")
                }
                try await store.commit(work)
            } catch {
                await store.close()
                throw error
            }
            await store.close()
            try backends.write(home: home)
        }
        // Creating a registry here is this user's consent to its root, whatever was pinned at this path before.
        try await memory?.setPin(root.keyID, for: ClientMemory.location(home: home))
    }

    static func now() -> String { Timestamp.now }
}

// MARK: - Trusted signers

extension Registry {
    /// Trusts `signer`'s signatures on pull and verify under `name` (default: the name the identity declares);
    /// a name is bound to one key at a time, so a second key calling itself `alice` is refused.
    /// Returns false when the key was already trusted under that name (nothing is recorded).
    @discardableResult
    public func trust(_ identity: PublicIdentity, name: String? = nil, by signer: Signer) async throws(CofferRegistryError) -> Bool {
        let name = name ?? identity.name
        try await require(signer, .admin, on: nil, action: "trust.add", target: identity.keyID)
        if try await ledgerState().trusted[identity.keyID]?.name == name { return false }
        try await record(.trustAdd(name: name, identity: identity), signer: signer, action: "trust.add", target: identity.keyID, reason: name)
        return true
    }

    /// Stops trusting the signer with `keyID` (or trusted name); returns whether one was removed.
    @discardableResult
    public func untrust(_ keyIDOrName: String, by signer: Signer) async throws(CofferRegistryError) -> Bool {
        try await require(signer, .admin, on: nil, action: "trust.remove", target: keyIDOrName)
        let state = try await ledgerState()
        guard let keyID = state.trusted.first(where: { $0.key == keyIDOrName || $0.value.name == keyIDOrName })?.key else { return false }
        try await record(.trustRemove(keyID: keyID), signer: signer, action: "trust.remove", target: keyID, reason: keyIDOrName)
        return true
    }

    /// The trusted signers, by name, each under the name the ledger bound to its key (never a self-declared one).
    public func trustedSigners() async throws(CofferRegistryError) -> [PublicIdentity] {
        try await ledgerState().trustedIdentities
    }

    /// The name the ledger trusts `keyID` under, if it is trusted.
    public func trustedName(_ keyID: String) async throws(CofferRegistryError) -> String? { try await ledgerState().trusted[keyID]?.name }
}
