import CofferCrypto
import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#endif

/// What `coffer migrate --to` copied.
public struct MigrationReport: Sendable, Equatable {
    /// Rows copied, by table.
    public var rows: [String: Int]
    /// Blobs streamed into the target store, and those it held already.
    public var blobsSent: Int
    public var blobsPresent: Int
    /// Versions published in the target store's own terms (OCI manifests; none for a directory).
    public var published: Int
    /// Unfinished remote pushes left behind.
    public var uploadsLeft: Int
}

extension Registry {
    /// Copies the registry at `source`, whose metadata is SQLite, into a new home directory `destination` on the stores
    /// `backends` names (PostgreSQL metadata; blobs in an OCI registry or the new directory), as docs/FORMAT.md, "Moving
    /// an embedded registry", describes: the same registry (root key, ledger, audit chain, ids), the source untouched.
    /// A failure leaves no `destination` behind and the database empty.
    ///
    /// - Throws: ``CofferRegistryError/registryExists(_:)`` when `destination` is not empty or the database holds rows;
    ///   ``CofferRegistryError/refused(_:)`` for a source that is not SQLite or has tables the target lacks;
    ///   ``CofferRegistryError/tampered(_:)`` when the source's ledger or a blob does not verify.
    public static func migrate(
        from source: String,
        to destination: String,
        backends: Backends,
        memory: ClientMemory? = .standard()
    ) async throws(CofferRegistryError) -> MigrationReport {
        try backends.validate()
        guard backends.metadata != "sqlite" else {
            throw .invalidInput("--metadata must be a postgres:// URL: migrate --to moves a registry onto PostgreSQL")
        }
        let from = try await Registry(at: source, memory: memory)
        defer { Task { [from] in await from.close() } }
        guard let sqlite = from.metadata as? SQLiteMetadataStore else {
            throw .refused("\(source) keeps its metadata in \(from.metadata.name): only a SQLite registry is migrated")
        }
        // Every record's signature, from the root this client pinned: a tampered source is not copied.
        let root = try await from.ledgerState().registry
        try await PostgresTableCopy.requireNoLedger(url: backends.metadata)
        let made = try makeEmptyDirectory(destination)
        do {
            let report = try await copy(from, snapshot: try sqlite.snapshot(), to: destination, backends: backends)
            try backends.write(home: destination)
            try await memory?.setPin(root, for: ClientMemory.location(home: destination))
            return report
        } catch {
            if made {
                try? FileManager.default.removeItem(atPath: destination)
            } else {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: destination)) ?? [] {
                    try? FileManager.default.removeItem(atPath: "\(destination)/\(name)")
                }
            }
            throw error
        }
    }

    /// Makes `path` (mode 0700) unless it is an empty directory already; true when made here.
    private static func makeEmptyDirectory(_ path: String) throws(CofferRegistryError) -> Bool {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            try Directories.make(path)
            return true
        }
        guard isDirectory.boolValue, (try? FileManager.default.contentsOfDirectory(atPath: path))?.isEmpty == true else {
            throw .registryExists("\(path) (the destination must be a new or empty directory)")
        }
        return false
    }

    private static func copy(
        _ from: Registry,
        snapshot: any DatabaseReader,
        to destination: String,
        backends: Backends
    ) async throws(CofferRegistryError) -> MigrationReport {
        for name in ["\(identityName).key", "\(identityName).pub", sessionHashKeyName] where access("\(from.home)/\(name)", F_OK) == 0 {
            try copyFile("\(from.home)/\(name)", to: "\(destination)/\(name)")
        }
        Directories.sync(destination)
        let metadata = try await PostgresMetadataStore.open(url: backends.metadata, home: destination, creatingDatabase: true)
        do {
            let tables = try await PostgresTableCopy.plan(from: snapshot, into: metadata)
            if backends.blobs == "directory" { try DirectoryBlobStore.create(at: destination) }
            let blobs = try await backends.openBlobs(home: destination)
            var report = MigrationReport(rows: [:], blobsSent: 0, blobsPresent: 0, published: 0, uploadsLeft: 0)
            try await copyBlobs(from, into: blobs, report: &report)
            report.published = try await publish(from, versions: try await PostgresTableCopy.versionIDs(in: snapshot), into: blobs)
            report.uploadsLeft = try await from.metadata.uploads(principal: nil).count
            let counts = "\(from.home): \(try await from.metadata.ledgerEnd()) ledger records, \(report.blobsSent + report.blobsPresent) blobs"
            report.rows = try await tables.run(
                audit: AuditDraft(
                    at: now(),
                    principal: "registry",
                    action: "migrate",
                    target: try await from.identity.keyID,
                    outcome: .ok,
                    reason: "copied from \(counts)"
                )
            )
            await metadata.close()
            return report
        } catch {
            await metadata.close()
            throw error
        }
    }

    /// Every blob a version names, into `target`, checked on the way; a blob already there with its size is skipped.
    private static func copyBlobs(_ from: Registry, into target: any BlobStore, report: inout MigrationReport) async throws(CofferRegistryError) {
        for digest in try await from.referencedBlobs().sorted() {
            guard let size = try await from.blobs.size(of: digest) else {
                throw .tampered("blob sha256:\(digest) is missing from the \(from.blobs.name): run coffer fsck")
            }
            if try await target.size(of: digest) == size {
                report.blobsPresent += 1
                continue
            }
            let source = from.blobs
            try await copyBlob(digest, size: size, what: "blob sha256:\(digest)", into: target) { try await source.read(digest, range: nil) }
            report.blobsSent += 1
        }
    }

    /// Publishes each version that is neither erased nor re-encrypted in `target`'s own terms; returns how many.
    private static func publish(_ from: Registry, versions: [Int64], into target: any BlobStore) async throws(CofferRegistryError) -> Int {
        guard !(target is DirectoryBlobStore) else { return 0 }
        let state = try await from.ledgerState()
        var published = 0
        for id in versions {
            guard let version = try await from.publishedVersion(try await from.loadVersion(id), state: state) else { continue }
            try await target.publish(version)
            published += 1
        }
        return published
    }

    /// Copies a key file byte for byte with its mode, in the kernel (a secret never passes through this process's
    /// memory), and syncs it.
    private static func copyFile(_ path: String, to target: String) throws(CofferRegistryError) {
        let input = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        defer { Glibc.close(input) }
        var status = stat()
        guard fstat(input, &status) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        let output = Glibc.open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, status.st_mode & 0o777)
        guard output >= 0 else { throw .io(path: target, reason: String(cString: strerror(errno))) }
        defer { Glibc.close(output) }
        var left = Int(status.st_size)
        while left > 0 {
            let n = sendfile(output, input, nil, left)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .io(path: target, reason: n < 0 ? String(cString: strerror(errno)) : "the file shrank while it was copied") }
            left -= n
        }
        guard fsync(output) == 0 else { throw .io(path: target, reason: String(cString: strerror(errno))) }
    }
}

extension PublishedVersion {
    /// A version as its signed statement describes it.
    init(_ statement: ModelStatement, digest: String, envelope: Data, bundle: Data) {
        self.init(
            model: statement.model,
            version: statement.version,
            digest: digest,
            created: statement.created,
            publisherKeyID: statement.publisherKeyID,
            files: statement.files.map {
                .init(path: $0.path, size: $0.size, plaintextSHA256: $0.plaintextSHA256, sealedSHA256: $0.sealedSHA256, sealedSize: $0.sealedSize)
            },
            envelope: Array(envelope),
            modelSigningBundle: Array(bundle)
        )
    }
}
