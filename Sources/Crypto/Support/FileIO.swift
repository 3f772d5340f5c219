import CFiles
import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Sequential input for the sealing pipeline.
public protocol ByteSource: AnyObject {
    /// Reads up to `buffer.count` bytes; returns fewer only at end of input, 0 at end of input.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int
    /// The number of bytes left, when known; lets small inputs use small buffers.
    var remainingHint: Int? { get }
}

extension ByteSource {
    public var remainingHint: Int? { nil }
}

/// Sequential output for the sealing pipeline.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError)
}

/// Output into a span of memory the caller owns (sodium memory, for plaintext). The sealing pipeline
/// transforms chunks straight into it instead of into a batch buffer it then copies; bytes past its end
/// are refused.
public final class MemoryRegionSink: ByteSink {
    private let region: UnsafeMutableRawBufferPointer
    /// Bytes written (or, inside the pipeline, handed out to be written) so far.
    public private(set) var written = 0

    public init(_ region: UnsafeMutableRawBufferPointer) { self.region = region }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        guard bytes.count > 0 else { return }
        try reserve(bytes.count).copyMemory(from: bytes)
    }

    /// The next `count` bytes of the region, counted as written.
    func reserve(_ count: Int) throws(CofferCryptoError) -> UnsafeMutableRawBufferPointer {
        guard count <= region.count - written else {
            throw .malformedChunk("the output runs past the \(region.count) bytes expected")
        }
        defer { written += count }
        let reserved = UnsafeMutableRawBufferPointer(rebasing: region[written..<(written + count)])
        Self.prefault(reserved)
        return reserved
    }

    /// The pipeline reserves each batch's output on its reading thread one batch ahead of the workers, so faulting
    /// the pages in here takes a fresh buffer's page faults (a decrypted model's: 25,000 for 100 MB) off the threads
    /// that decrypt, in one call per batch. First touch of 100 MB: 50-53 ms by writing, 25-31 ms populated (a C loop);
    /// `coffer infer` on a 100 MB model: 165 -> 150 ms (median of 21, same run), 26,168 -> 1,675 page faults. A failure
    /// (an older kernel) leaves the faults to the writers, as before.
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    private static func prefault(_ span: UnsafeMutableRawBufferPointer) {
        guard let base = span.baseAddress, span.count > 0 else { return }
        let start = Int(bitPattern: base) / pageSize * pageSize
        let end = Int(bitPattern: base) + span.count
        _ = coffer_prefault_write(UnsafeMutableRawPointer(bitPattern: start), end - start)
    }
}

/// Bytes already in memory, read as a stream (parsers fed from a buffer, tests, fuzzing).
public final class MemorySource: ByteSource {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remainingHint: Int? { bytes.count - offset }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        let n = min(buffer.count, bytes.count - offset)
        if n > 0 {
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
        }
        offset += n
        return n
    }
}

/// A file descriptor read or written with POSIX calls, so streaming never copies through `Data`.
public final class FileDescriptorStream: ByteSource, ByteSink, Sendable {
    public let fd: Int32
    /// The path used in error messages.
    public let path: String
    private let ownsDescriptor: Bool

    /// Opens `path` for reading.
    public init(readingFrom path: String) throws(CofferCryptoError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, reason: Self.lastError()) }
        var info = stat()
        if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw .io(path: path, reason: "is a directory")
        }
        self.fd = fd
        self.path = path
        self.ownsDescriptor = true
    }

    /// Opens an existing device, FIFO or socket at `path` for writing; `nil` when `path` is a regular file or absent.
    public convenience init?(writingToSpecialFile path: String) throws(CofferCryptoError) {
        func isSpecial(_ info: stat) -> Bool { (info.st_mode & S_IFMT) != S_IFREG && (info.st_mode & S_IFMT) != S_IFDIR }
        var info = stat()
        guard stat(path, &info) == 0, isSpecial(info) else { return nil }
        let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { throw .io(path: path, reason: Self.lastError()) }
        // What was opened is checked too: a regular file put at `path` since the stat is written through a temporary
        // file like any other, never in place.
        guard fstat(fd, &info) == 0, isSpecial(info) else {
            close(fd)
            return nil
        }
        self.init(ownedDescriptor: fd, path: path)
    }

    /// Wraps an already open descriptor (stdin, stdout) without taking ownership.
    public init(descriptor: Int32, path: String) {
        self.fd = descriptor
        self.path = path
        self.ownsDescriptor = false
    }

    /// Takes ownership of `ownedDescriptor`: it is closed when the stream is released.
    public init(ownedDescriptor: Int32, path: String) {
        self.fd = ownedDescriptor
        self.path = path
        self.ownsDescriptor = true
    }

    deinit {
        if ownsDescriptor { close(fd) }
    }

    public static let standardInput = FileDescriptorStream(descriptor: 0, path: "stdin")
    public static let standardOutput = FileDescriptorStream(descriptor: 1, path: "stdout")
    public static let standardError = FileDescriptorStream(descriptor: 2, path: "stderr")

    public var remainingHint: Int? {
        guard let size = regularFileSize else { return nil }
        let position = lseek(fd, 0, SEEK_CUR)
        return position < 0 ? nil : max(0, size - Int(position))
    }

    /// The size of a regular file, or `nil` for pipes and terminals.
    public var regularFileSize: Int? {
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int(info.st_size)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        var total = 0
        while total < buffer.count {
            let n = Glibc.read(fd, buffer.baseAddress! + total, buffer.count - total)
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, reason: Self.lastError())
            }
            if n == 0 { break }
            total += n
        }
        return total
    }

    /// Reads exactly `buffer.count` bytes at `offset`, or fewer only at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(CofferCryptoError) -> Int {
        var total = 0
        while total < buffer.count {
            let n = pread(fd, buffer.baseAddress! + total, buffer.count - total, off_t(offset + total))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, reason: Self.lastError())
            }
            if n == 0 { break }
            total += n
        }
        return total
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, reason: Self.lastError())
            }
            done += n
        }
    }

    /// Flushes the file's data to stable storage.
    public func sync() throws(CofferCryptoError) {
        guard fsync(fd) == 0 else { throw .io(path: path, reason: Self.lastError()) }
    }

    static func lastError() -> String { String(cString: strerror(errno)) }
}

/// Small whole-file reads and atomic writes (key files, identities, envelopes).
public enum FileBytes {
    /// Largest file read whole, to keep a wrong argument from loading gigabytes.
    static let maximumSize = 64 << 20

    public static func read(_ path: String) throws(CofferCryptoError) -> [UInt8] {
        let stream = try FileDescriptorStream(readingFrom: path)
        var bytes: [UInt8] = []
        var block = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = try block.withMutableBytes { buffer throws(CofferCryptoError) in try stream.read(into: buffer) }
            bytes += block[0..<n]
            guard bytes.count <= maximumSize else { throw .io(path: path, reason: "file larger than \(maximumSize >> 20) MiB") }
            if n < block.count { return bytes }
        }
    }

    /// The directory holding `path`: `.` for a bare name, `/` for a top-level one. Coffer never calls Foundation's
    /// `deletingLastPathComponent`, which traps on some paths without a slash (`o`, `.`, `o/`; Swift 6.3.1 on Linux).
    public static func parentDirectory(of path: String) -> String {
        // Bytes, not Characters: a slash followed by a combining mark is one Character, which a search for "/" misses.
        let slash = UInt8(ascii: "/")
        var path = Array(path.utf8)[...]
        while path.count > 1, path.last == slash { path = path.dropLast() }
        guard let index = path.lastIndex(of: slash) else { return "." }
        var parent = path[..<index]
        while parent.last == slash { parent = parent.dropLast() }
        return parent.isEmpty ? "/" : String(decoding: parent, as: UTF8.self)
    }

    /// Renames `from` to `to` unless something is at `to`: 0, or the errno (EEXIST when something is). A check before a
    /// plain rename leaves a window in which a file another process puts there is replaced; renameat2's
    /// RENAME_NOREPLACE has none (a filesystem without it gets the check and the rename).
    public static func renameWithoutReplacing(_ from: String, to: String) -> Int32 {
        coffer_rename_noreplace(from, to) == 0 ? 0 : errno
    }

    /// Creates `path` and any missing parents with mode 0700; a directory that already exists is left as it is.
    ///
    /// Each new directory gets its mode in the `mkdir` (0700 less the umask, never more) and then exactly 0700 by
    /// `chmod`, as FileManager's `.posixPermissions` did, so a umask such as 0177 cannot leave it without its search
    /// bit. FileManager did only the chmod after a `mkdir` with the default mode, and a concurrent process looking in
    /// between saw mode 755 (CI: three pushes refused each other's outbox).
    public static func makePrivateDirectory(_ path: String) throws(CofferCryptoError) {
        guard !path.isEmpty else { throw .io(path: path, reason: "cannot create a directory with an empty name") }
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/\(component)"
            if mkdir(prefix, 0o700) == 0 {
                chmod(prefix, 0o700)
            } else if errno != EEXIST {
                throw .io(path: prefix, reason: "cannot create directory: \(String(cString: strerror(errno)))")
            }
        }
        guard stat(path, &status) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw .io(path: path, reason: "exists and is not a directory") }
    }

    /// Writes files that belong together (an identity's three files, a checkpoint's model and privacy claim) all or
    /// none: each to a synced temporary file first, then all renamed into place with interrupts held off, then their
    /// folders synced. Without `overwrite`, refuses if any exists, and a rename that finds its target taken meanwhile
    /// takes back those done. A kill or a power loss during the renames (microseconds) can still leave some of them.
    public static func writeTogether(_ files: [(path: String, bytes: [UInt8], mode: UInt32)], overwrite: Bool) throws(CofferCryptoError) {
        if !overwrite, let taken = files.first(where: { access($0.path, F_OK) == 0 }) { throw .io(path: taken.path, reason: "already exists") }
        var staged: [AtomicOutputFile] = []
        for file in files {
            let output = try AtomicOutputFile(destination: file.path, mode: file.mode)
            try file.bytes.withBytes { buffer throws(CofferCryptoError) in try output.write(buffer) }
            try output.flush()
            staged.append(output)
        }
        try TemporaryFiles.holdingInterrupts { () throws(CofferCryptoError) in
            var placed: [String] = []
            do throws(CofferCryptoError) {
                for output in staged {
                    try output.commit(syncingDirectory: false, replacing: overwrite)
                    placed.append(output.destination)
                }
            } catch {
                if !overwrite { for path in placed { unlink(path) } }
                throw error
            }
        }
        for folder in Set(files.map { parentDirectory(of: $0.path) }) {
            let fd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 {
                fsync(fd)
                close(fd)
            }
        }
    }

    /// Writes `bytes` atomically with `mode`; refuses to replace an existing file unless `overwrite`.
    public static func write(
        _ bytes: [UInt8],
        to path: String,
        mode: UInt32 = 0o600,
        overwrite: Bool = false,
        syncingDirectory: Bool = true
    ) throws(CofferCryptoError) {
        if !overwrite, access(path, F_OK) == 0 { throw .io(path: path, reason: "already exists") }
        let file = try AtomicOutputFile(destination: path, mode: mode)
        try bytes.withBytes { buffer throws(CofferCryptoError) in try file.write(buffer) }
        try file.commit(syncingDirectory: syncingDirectory)
    }
}
