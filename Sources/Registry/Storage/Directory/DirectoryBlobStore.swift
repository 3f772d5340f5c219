public import CofferCrypto
import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Sealed files in the registry's home directory: `blobs/sha256/ab/abcdef...` (docs/FORMAT.md, "Registry").
///
/// A blob is written under a temporary name in `tmp/`, fsynced, renamed into place and its directory
/// fsynced: once `store` returns it is durable, and it is never modified afterwards.
public struct DirectoryBlobStore: BlobStore {
    public let root: String
    public var name: String { "blob directory \(root)/blobs" }
    var temporaryDirectory: String { root + "/tmp" }

    public init(root: String) { self.root = root }

    /// Creates the folders a new store needs, the 256 fan-out folders among them, so that no pusher makes one: a
    /// pusher that found a folder another had just made could commit a blob whose folder's own entry was not yet durable.
    static func create(at root: String) throws(CofferRegistryError) {
        try Directories.make("\(root)/tmp")
        try Directories.make("\(root)/blobs/sha256")
        try makeFanOut(in: "\(root)/blobs/sha256")
    }

    /// Makes the fan-out folders `00` to `ff` that `base` lacks, then syncs `base`.
    private static func makeFanOut(in base: String) throws(CofferRegistryError) {
        for byte in 0...255 {
            let folder = "\(base)/\(String(format: "%02x", byte))"
            guard mkdir(folder, 0o700) == 0 || errno == EEXIST else {
                throw .io(path: folder, reason: "cannot create directory: \(String(cString: strerror(errno)))")
            }
        }
        Directories.sync(base)
    }

    func path(of digest: String) -> String { "\(root)/blobs/sha256/\(digest.prefix(2))/\(digest)" }

    public func localPath(of digest: String) -> String? { path(of: digest) }

    public func makeTemporary() throws(CofferRegistryError) -> AtomicOutputFile {
        do {
            // Read-only from the start: a blob is never modified once written.
            return try AtomicOutputFile(destination: "\(temporaryDirectory)/blob-\(UUID().uuidString)", mode: 0o400, durable: true, sealedOnly: true)
        } catch {
            throw .crypto(error)
        }
    }

    public func store(_ file: AtomicOutputFile, digest: String, size: Int) async throws(CofferRegistryError) {
        do {
            try file.commit(syncingDirectory: false)  // fsync + rename within tmp/; place() syncs the blob's directory
        } catch {
            throw .crypto(error)
        }
        try place(file.destination, digest: digest)
    }

    /// Renames a finished file in `tmp/` to the blob's content address and syncs the directory.
    private func place(_ temporary: String, digest: String) throws(CofferRegistryError) {
        let destination = path(of: digest)
        let directory = String(destination[..<destination.lastIndex(of: "/")!])
        if access(directory, F_OK) != 0 {
            // A store created before `create` made the fan-out folders: all of them now, once.
            do throws(CofferRegistryError) {
                try Self.makeFanOut(in: String(directory[..<directory.lastIndex(of: "/")!]))
            } catch {
                // A full disk can refuse a folder after the blob itself was written: nothing stays in tmp/.
                unlink(temporary)
                throw error
            }
        }
        guard rename(temporary, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw .io(path: destination, reason: reason)
        }
        Directories.sync(directory)
        // The fan-out folder's own entry too: in a store older than `create`'s folders, another pusher may have just made
        // it and not yet synced it. With nothing to write (any store `create` made) this sync costs about 40 µs on ext4 here.
        Directories.sync(String(directory[..<directory.lastIndex(of: "/")!]))
    }

    public func size(of digest: String) async throws(CofferRegistryError) -> Int? {
        var info = stat()
        guard stat(path(of: digest), &info) == 0 else { return nil }
        return Int(info.st_size)
    }

    public func read(_ digest: String, range: Range<Int>?) async throws(CofferRegistryError) -> BlobStream {
        guard let total = try await size(of: digest) else { throw .tampered("blob sha256:\(digest) is missing from the \(name)") }
        let bounds = range ?? 0..<total
        guard bounds.lowerBound >= 0, bounds.upperBound <= total else {
            throw .invalidInput("bytes \(bounds.lowerBound)-\(bounds.upperBound) lie outside blob sha256:\(digest) (\(total) bytes)")
        }
        return BlobStream(length: bounds.count, FileRegion(path: path(of: digest), range: bounds))
    }

    public func remove(_ digest: String) async throws(CofferRegistryError) {
        let file = path(of: digest)
        unlink(file)
        Directories.sync(String(file[..<file.lastIndex(of: "/")!]))
    }

    public var listsBlobs: Bool { true }

    public func digests() async throws(CofferRegistryError) -> [String]? {
        let base = root + "/blobs/sha256"
        let fm = FileManager.default
        return ((try? fm.contentsOfDirectory(atPath: base)) ?? []).flatMap { prefix in
            (try? fm.contentsOfDirectory(atPath: "\(base)/\(prefix)")) ?? []
        }
    }

    /// Files in `tmp/` (interrupted pushes and uploads), for `fsck` and `gc`.
    func temporaryFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: temporaryDirectory)) ?? []).sorted()
    }

    // MARK: Uploads: a file `tmp/upload-ID`, appended to, then hashed and renamed.

    public func startUpload() async throws(CofferRegistryError) -> BlobUpload {
        let id = UUID().uuidString.lowercased()
        let location = "upload-\(id)"
        let fd = open("\(temporaryDirectory)/\(location)", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: "\(temporaryDirectory)/\(location)", reason: String(cString: strerror(errno))) }
        close(fd)
        return BlobUpload(id: id, location: location, offset: 0)
    }

    public func append(to upload: BlobUpload, _ bytes: BlobStream) async throws(CofferRegistryError) -> BlobUpload {
        let file = try uploadPath(upload)
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: file, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        // Whatever a failed request left after the recorded offset is cut off: the next append starts there.
        guard ftruncate(fd, off_t(upload.offset)) == 0 else { throw .io(path: file, reason: String(cString: strerror(errno))) }
        var offset = upload.offset
        do {
            for try await buffer in bytes {
                let written = buffer.withUnsafeReadableBytes { raw in Directories.writeAll(fd, raw, at: offset) }
                guard written else { throw CofferRegistryError.io(path: file, reason: String(cString: strerror(errno))) }
                offset += buffer.readableBytes
            }
        } catch {
            throw error as? CofferRegistryError ?? .io(path: file, reason: "\(error)")
        }
        var next = upload
        next.offset = offset
        return next
    }

    public func finish(_ upload: BlobUpload, digest: String) async throws(CofferRegistryError) -> Int {
        let file = try uploadPath(upload)
        let actual: String
        do {
            actual = Digest.hex(try await Offload.run { () throws(CofferCryptoError) -> [UInt8] in try Digest.sha256(file: file) })
        } catch {
            throw .crypto(error)
        }
        guard actual == digest else { throw .invalidInput("the uploaded bytes hash to sha256:\(actual), not sha256:\(digest)") }
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        chmod(file, 0o400)
        try place(file, digest: digest)
        return upload.offset
    }

    public func abandon(_ upload: BlobUpload) async {
        if let file = try? uploadPath(upload) { unlink(file) }
    }

    private func uploadPath(_ upload: BlobUpload) throws(CofferRegistryError) -> String {
        guard upload.location.hasPrefix("upload-"), !upload.location.contains("/") else {
            throw .invalidInput("upload \(upload.id) has no file in \(temporaryDirectory)")
        }
        return "\(temporaryDirectory)/\(upload.location)"
    }

    public func publish(_ version: PublishedVersion) async throws(CofferRegistryError) {}

    public func publicationProblem(_ version: PublishedVersion) async throws(CofferRegistryError) -> PublicationProblem? { nil }
}

/// Bytes `range` of a file, read in pieces of 256 KiB as they are asked for, each `pread` on NIO's thread pool (never
/// on the cooperative pool). The file is opened at the first read and closed when the last iterator goes.
struct FileRegion: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    static let piece = 256 << 10
    let path: String
    let range: Range<Int>

    final class Descriptor: Sendable {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        var offset: Int
        let end: Int
        var descriptor: Descriptor?

        mutating func next() async throws -> ByteBuffer? {
            guard offset < end else { return nil }
            if descriptor == nil {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw CofferRegistryError.tampered("blob \(path) cannot be opened: \(String(cString: strerror(errno)))") }
                descriptor = Descriptor(fd)
            }
            let file = descriptor!
            let (start, want, path) = (offset, Swift.min(end - offset, FileRegion.piece), path)
            let piece = try await NIOThreadPool.singleton.runIfActive { () throws -> ByteBuffer in
                var piece = ByteBufferAllocator().buffer(capacity: want)
                let read = piece.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { buffer in
                    Swift.max(0, pread(file.fd, buffer.baseAddress, want, off_t(start)))
                }
                guard read > 0 else { throw CofferRegistryError.tampered("blob \(path) is shorter than it was") }
                return piece
            }
            offset += piece.readableBytes
            return piece
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path, offset: range.lowerBound, end: range.upperBound) }
}

/// Folders on local disk: made private, and synced so that renames in them survive a crash.
enum Directories {
    /// `path` made absolute with every link resolved (realpath); nil when it cannot be (missing, unreadable).
    static func resolved(_ path: String) -> String? {
        guard let real = realpath(path, nil) else { return nil }
        defer { free(real) }
        return String(cString: real)
    }

    static func make(_ path: String) throws(CofferRegistryError) {
        do {
            try FileBytes.makePrivateDirectory(path)
        } catch {
            throw .crypto(error)
        }
    }

    /// Makes the folder `relative` inside `root` (each missing level of it, mode 0700), and never `root` itself: when
    /// `root` has gone (an interrupt renamed a pull's staging folder to remove it), this fails instead of making it
    /// again, where the files that follow would outlive the interrupt.
    static func make(_ relative: String, inside root: String) throws(CofferRegistryError) {
        var folder = root
        // Bytes, as FileBytes.parentDirectory splits: a slash and a combining mark after it are one Character.
        for component in relative.utf8.split(separator: UInt8(ascii: "/")) where !component.elementsEqual(".".utf8) {
            folder += "/" + String(decoding: component, as: UTF8.self)
            guard mkdir(folder, 0o700) == 0 || errno == EEXIST else {
                throw .io(path: folder, reason: "cannot create directory: \(String(cString: strerror(errno)))")
            }
        }
        var status = stat()
        guard stat(folder, &status) == 0 else { throw .io(path: folder, reason: String(cString: strerror(errno))) }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw .io(path: folder, reason: "exists and is not a directory") }
    }

    /// Whether `a` and `b` name the same folder (one file system's same inode), however each is spelled; false when
    /// either cannot be read.
    static func sameDirectory(_ a: String, _ b: String) -> Bool {
        var first = stat()
        var second = stat()
        guard stat(a, &first) == 0, stat(b, &second) == 0 else { return false }
        return first.st_dev == second.st_dev && first.st_ino == second.st_ino
    }

    /// Makes `path` and the folders above it that are missing, and syncs the folder above each one made, so that
    /// its entry survives a crash.
    static func makeDurably(_ path: String) throws(CofferRegistryError) {
        var missing: [String] = []
        var folder = path
        while access(folder, F_OK) != 0, folder != parent(of: folder) {
            missing.append(folder)
            folder = parent(of: folder)
        }
        try make(path)
        for folder in missing.reversed() { sync(parent(of: folder)) }
    }

    static func parent(of path: String) -> String { FileBytes.parentDirectory(of: path) }

    static func sync(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    /// `pwrite`s all of `bytes` at `offset`, retrying short writes.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            done += n
        }
        return true
    }
}
