import CofferCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Sealed files stored by the SHA-256 of their bytes: `blobs/sha256/ab/abcdef...`.
///
/// A blob is written under a temporary name in `tmp/`, fsynced, renamed into place and its directory
/// fsynced: once `store` returns it is durable, and it is never modified afterwards.
struct BlobDirectory: Sendable {
    let root: String
    var temporaryDirectory: String { root + "/tmp" }

    func path(of digest: String) -> String {
        "\(root)/blobs/sha256/\(digest.prefix(2))/\(digest)"
    }

    /// Creates a temporary file for a blob being written; the caller seals into it, then calls `commit`.
    func makeTemporary() throws(CofferRegistryError) -> AtomicOutputFile {
        do {
            // Read-only from the start: a blob is never modified once written.
            return try AtomicOutputFile(destination: "\(temporaryDirectory)/blob-\(UUID().uuidString)", mode: 0o400, durable: true)
        } catch {
            throw .crypto(error)
        }
    }

    /// Moves a finished temporary blob to its content address, durably.
    func commit(_ file: AtomicOutputFile, digest: String) throws(CofferRegistryError) {
        let destination = path(of: digest)
        let directory = String(destination[..<destination.lastIndex(of: "/")!])
        try Self.makeDirectory(directory)
        do {
            try file.commit()  // fsync + rename within tmp/
        } catch {
            throw .crypto(error)
        }
        guard rename(file.destination, destination) == 0 else {
            throw .io(path: destination, reason: String(cString: strerror(errno)))
        }
        Self.syncDirectory(directory)
    }

    func exists(_ digest: String) -> Bool { access(path(of: digest), F_OK) == 0 }

    /// Deletes a blob (erasure, or one written by a push that was then refused) and syncs its directory.
    func remove(_ digest: String) {
        let file = path(of: digest)
        unlink(file)
        Self.syncDirectory(String(file[..<file.lastIndex(of: "/")!]))
    }

    /// Every blob digest on disk (for gc and fsck).
    func allDigests() -> [String] {
        let base = root + "/blobs/sha256"
        let fm = FileManager.default
        return ((try? fm.contentsOfDirectory(atPath: base)) ?? []).flatMap { prefix in
            (try? fm.contentsOfDirectory(atPath: "\(base)/\(prefix)")) ?? []
        }
    }

    static func makeDirectory(_ path: String) throws(CofferRegistryError) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw .io(path: path, reason: "cannot create directory")
        }
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}
