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
        return UnsafeMutableRawBufferPointer(rebasing: region[written..<(written + count)])
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
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) != S_IFREG, (info.st_mode & S_IFMT) != S_IFDIR else { return nil }
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, reason: Self.lastError()) }
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

/// A file written under a temporary name beside its destination and renamed into place only on ``commit()``.
///
/// If the value is dropped without `commit()` (an error, a failed authentication), the temporary
/// file is removed: a failed write leaves nothing at the destination. If the process is interrupted (Ctrl-C, SIGTERM)
/// first, the interrupt handler removes it (``TemporaryFiles``).
public final class AtomicOutputFile: ByteSink {
    public let destination: String
    let temporaryPath: String
    private let stream: FileDescriptorStream
    private let durable: Bool
    /// Whether the temporary file has an entry of its own in the interrupt handler's table.
    private let registered: Bool
    /// Durable files go to the disk without the page cache: they are fsynced before use anyway, and on a virtual
    /// machine copying gigabytes into fresh page-cache pages cost a third of a push's CPU.
    private let direct: DirectWriter?
    private var committed = false

    /// Creates the temporary file with `mode` (0600 by default: plaintext and keys are private).
    ///
    /// - Parameter durable: fsync the data before the rename and the directory after it, so the file
    ///   survives a power loss once `commit()` returns (keys, registry blobs). Without it the rename is
    ///   still all-or-nothing for errors and interrupts, as with `cp` or `age`.
    /// - Parameter insideRegisteredFolder: the destination is inside a folder already registered with
    ///   ``TemporaryFiles/registerTree(_:)`` (a pull's staging folder), which an interrupt removes whole. Otherwise the
    ///   temporary file takes an entry of its own, and is refused when the table is full: a file the handler does not
    ///   know of would outlive Ctrl-C.
    public init(destination: String, mode: UInt32 = 0o600, durable: Bool = true, insideRegisteredFolder: Bool = false) throws(CofferCryptoError) {
        self.destination = destination
        self.durable = durable
        self.registered = !insideRegisteredFolder
        let slash = destination.lastIndex(of: "/")
        let directory = slash.map { String(destination[...$0]) } ?? ""
        let base = slash.map { String(destination[destination.index(after: $0)...]) } ?? destination
        // The name is registered before the file exists (so an interrupt between the two leaves nothing), which mkstemp,
        // choosing the name as it creates the file, cannot do; O_EXCL keeps its guarantee that the file is new.
        var path = ""
        var fd: Int32 = -1
        while fd < 0 {
            path = "\(directory).\(base).coffer-tmp-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
            if registered, !TemporaryFiles.register(path) {
                throw .io(path: destination, reason: "more files are being written than an interrupt could remove; try again")
            }
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd < 0 else { break }
            let code = errno
            if registered { TemporaryFiles.unregister(path) }
            guard code == EEXIST else { throw .io(path: destination, reason: String(cString: strerror(code))) }
        }
        fchmod(fd, mode_t(mode))
        self.temporaryPath = path
        self.stream = FileDescriptorStream(ownedDescriptor: fd, path: destination)
        self.direct = durable ? DirectWriter(stream: stream) : nil
    }

    deinit {
        if !committed { unlink(temporaryPath) }
        if registered { TemporaryFiles.unregister(temporaryPath) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        if let direct {
            try direct.write(bytes)
        } else {
            try stream.write(bytes)
        }
    }

    /// Renames the file over the destination; when durable, fsyncs the data first and the directory after.
    ///
    /// - Parameter syncingDirectory: false when the caller renames the file again and syncs the directory it ends in
    ///   (a registry blob, named by its digest once written): the first name need not survive a crash.
    public func commit(syncingDirectory: Bool = true) throws(CofferCryptoError) {
        try direct?.finish()
        if durable { try stream.sync() }
        guard rename(temporaryPath, destination) == 0 else {
            throw .io(path: destination, reason: FileDescriptorStream.lastError())
        }
        committed = true
        guard durable, syncingDirectory else { return }
        let slash = destination.lastIndex(of: "/")
        let directory = slash.map { String(destination[...$0]) } ?? "."
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            fsync(dirFD)
            close(dirFD)
        }
    }
}

/// Writes a file in aligned blocks with `O_DIRECT`, bypassing the page cache; the tail that does not fill a block
/// is written through the cache at ``finish()``. A file smaller than one block never uses `O_DIRECT`, and a file
/// system that refuses it (tmpfs) gets ordinary writes. The block is sodium memory (a pulled file's plaintext
/// passes through it): locked, wiped when the writer goes, and page-aligned since its size is a page multiple.
private final class DirectWriter {
    // 1 MiB: with the pipeline's three locked batches (6 MiB) a pull stays within the 8 MiB RLIMIT_MEMLOCK of a normal user.
    static let block = 1 << 20
    private let stream: FileDescriptorStream
    private let memory = SecureBytes(count: block)
    private let buffer: UnsafeMutableRawBufferPointer
    private var filled = 0
    private var enabled = false
    private var refused = false

    init(stream: FileDescriptorStream) {
        self.stream = stream
        buffer = memory.withUnsafeMutableBytes { $0 }
        refused = Int(bitPattern: buffer.baseAddress) % 4096 != 0
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        guard !refused else { return try stream.write(bytes) }
        var offset = 0
        while offset < bytes.count {
            let n = min(bytes.count - offset, buffer.count - filled)
            (buffer.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
            filled += n
            offset += n
            if filled == buffer.count { try flushBlock() }
        }
    }

    private func flushBlock() throws(CofferCryptoError) {
        if !enabled && !refused {
            let flags = fcntl(stream.fd, F_GETFL)
            enabled = flags >= 0 && fcntl(stream.fd, F_SETFL, flags | O_DIRECT) == 0
            refused = !enabled
        }
        if enabled {
            let n = Glibc.write(stream.fd, buffer.baseAddress!, filled)
            if n == filled {
                filled = 0
                return
            }
            // EINVAL: the file system took the flag but not the write. A short write: rare, not worth aligning again.
            guard n >= 0 || errno == EINVAL else { throw .io(path: stream.path, reason: FileDescriptorStream.lastError()) }
            try stopDirect()
            try stream.write(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[max(n, 0)..<filled]))
        } else {
            try stream.write(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<filled]))
        }
        filled = 0
    }

    private func stopDirect() throws(CofferCryptoError) {
        refused = true
        guard enabled else { return }
        enabled = false
        let flags = fcntl(stream.fd, F_GETFL)
        guard flags >= 0, fcntl(stream.fd, F_SETFL, flags & ~O_DIRECT) == 0 else {
            throw .io(path: stream.path, reason: FileDescriptorStream.lastError())
        }
    }

    /// Writes what is left through the page cache.
    func finish() throws(CofferCryptoError) {
        try stopDirect()
        try stream.write(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<filled]))
        filled = 0
    }
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
