import CFiles
import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// A file written under a temporary name beside its destination and renamed into place only on ``commit()``.
///
/// If the value is dropped without `commit()` (an error, a failed authentication), the temporary
/// file is removed: a failed write leaves nothing at the destination. If the process is interrupted (Ctrl-C, SIGTERM)
/// first, the interrupt handler removes it (``TemporaryFiles``); if it is killed or crashes, the next Coffer process that
/// makes a temporary file or folder does (``Leftovers``).
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
    private let record: Leftovers.Record?
    private var flushed = false

    /// Creates the temporary file with `mode` (0600 by default: plaintext and keys are private).
    ///
    /// - Parameter durable: fsync the data before the rename and the directory after it, so the file
    ///   survives a power loss once `commit()` returns (keys, registry blobs). Without it the rename is
    ///   still all-or-nothing for errors and interrupts, as with `cp` or `age`.
    /// - Parameter insideRegisteredFolder: the destination is inside a folder already registered with
    ///   ``TemporaryFiles/registerTree(_:)`` (a pull's staging folder), which an interrupt removes whole. Otherwise the
    ///   temporary file takes an entry of its own, and is refused when the table is full: a file the handler does not
    ///   know of would outlive Ctrl-C.
    /// - Parameter sealedOnly: the bytes written are ciphertext (a registry blob), so a durable file's write buffer need
    ///   not be locked sodium memory.
    public init(
        destination: String,
        mode: UInt32 = 0o600,
        durable: Bool = true,
        insideRegisteredFolder: Bool = false,
        sealedOnly: Bool = false
    ) throws(CofferCryptoError) {
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
        // A killed writer's file (a killed unseal's plaintext) is removed by a later process; one inside a registered
        // folder goes with the folder.
        record = registered ? Leftovers.record(entry: path, fd: fd) : nil
        fchmod(fd, mode_t(mode))
        self.temporaryPath = path
        self.stream = FileDescriptorStream(ownedDescriptor: fd, path: destination)
        self.direct = durable ? DirectWriter(stream: stream, locked: !sealedOnly) : nil
    }

    deinit {
        // A file not found at its path (a link on the way changed, a folder moved) is left to the record's sweep.
        if committed || unlink(temporaryPath) == 0 { record?.drop() } else { record?.abandon() }
        if registered { TemporaryFiles.unregister(temporaryPath) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        if let direct {
            try direct.write(bytes)
        } else {
            try stream.write(bytes)
        }
    }

    /// Sets the temporary file's modification time to now: one that waited before its commit (a push's sealed file, while
    /// the push was judged) then looks as fresh as one just written to whatever removes files by age (`coffer gc`).
    public func touch() { _ = futimens(stream.fd, nil) }

    /// Writes out what is buffered and, when durable, fsyncs the data: what ``commit(syncingDirectory:replacing:)``
    /// does first, for a caller that renames several files together and wants the slow part done before.
    public func flush() throws(CofferCryptoError) {
        guard !flushed else { return }
        try direct?.finish()
        if durable { try stream.sync() }
        flushed = true
    }

    /// Renames the file over the destination; when durable, fsyncs the data first and the directory after.
    ///
    /// - Parameter syncingDirectory: false when the caller renames the file again and syncs the directory it ends in
    ///   (a registry blob, named by its digest once written): the first name need not survive a crash.
    /// - Parameter replacing: false to fail, with "already exists", when the destination appeared meanwhile.
    public func commit(syncingDirectory: Bool = true, replacing: Bool = true) throws(CofferCryptoError) {
        try flush()
        let renamed =
            replacing ? (rename(temporaryPath, destination) == 0 ? 0 : errno) : FileBytes.renameWithoutReplacing(temporaryPath, to: destination)
        guard renamed == 0 else {
            throw .io(path: destination, reason: renamed == EEXIST ? "already exists" : String(cString: strerror(renamed)))
        }
        committed = true
        record?.drop()
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
/// system that refuses it (tmpfs) gets ordinary writes. The buffer is sodium memory (a pulled file's plaintext
/// passes through it): locked, wiped when the writer goes, and page-aligned since its size is a page multiple; for
/// ciphertext alone it is ordinary page-aligned memory (locking and filling a block cost a 16 MiB push about 1 ms).
private final class DirectWriter {
    // 1 MiB: with the pipeline's three locked batches (6 MiB) a pull stays within the 8 MiB RLIMIT_MEMLOCK of a normal user.
    static let block = 1 << 20
    /// The buffer of a file whose first write is smaller: most durable files are small (keys, the client's state, a
    /// signature), and a whole block is 256 locked pages to fault in (mlock) for a file of a kilobyte. It grows to a
    /// block when it overflows.
    static let small = 64 << 10
    private let stream: FileDescriptorStream
    private let locked: Bool
    private var memory: SecureBytes?
    private var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var filled = 0
    private var enabled = false
    private var refused = false

    init(stream: FileDescriptorStream, locked: Bool) {
        self.stream = stream
        self.locked = locked
    }

    deinit {
        if !locked { buffer.deallocate() }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        var offset = 0
        // A page-aligned piece of a block or more goes to the disk from where it is, its whole pages, without the copy
        // into the buffer: a pull's batch of plaintext (17 chunks of 64 KiB, in page-aligned sodium memory), whose
        // copy here was a tenth of a remote pull's CPU. The file's offset is a multiple of the page while nothing is
        // buffered, as O_DIRECT needs.
        if filled == 0, !refused, bytes.count >= Self.block, Int(bitPattern: bytes.baseAddress) % 4096 == 0 {
            offset = bytes.count & ~4095
            try writeOut(UnsafeRawBufferPointer(rebasing: bytes[0..<offset]))
        }
        while offset < bytes.count {
            if filled == buffer.count && !refused { try grow(toHold: bytes.count - offset) }
            guard !refused else { return try stream.write(UnsafeRawBufferPointer(rebasing: bytes[offset...])) }
            let n = min(bytes.count - offset, buffer.count - filled)
            (buffer.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
            filled += n
            offset += n
            if filled == Self.block { try flushBlock() }
        }
    }

    /// A larger buffer holding what the full one held: ``small`` for a first write of fewer bytes, else a block.
    private func grow(toHold more: Int) throws(CofferCryptoError) {
        let count = buffer.count == 0 && more < Self.small ? Self.small : Self.block
        if locked {
            let larger = SecureBytes(count: count)
            let bytes = larger.withUnsafeMutableBytes { $0 }
            if filled > 0 { bytes.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: filled) }
            memory = consume larger  // the smaller one is wiped as it goes
            buffer = bytes
        } else {
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
            if filled > 0 { bytes.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: filled) }
            buffer.deallocate()
            buffer = bytes
        }
        guard Int(bitPattern: buffer.baseAddress) % 4096 != 0 else { return }
        // Not aligned for O_DIRECT: ordinary writes from here.
        refused = true
        try stream.write(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<filled]))
        filled = 0
    }

    private func flushBlock() throws(CofferCryptoError) {
        try writeOut(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<filled]))
        filled = 0
    }

    /// Writes whole pages from page-aligned memory, at a page-aligned offset: with O_DIRECT when the file system takes
    /// it, else (and from then on) through the page cache.
    private func writeOut(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        if !enabled && !refused {
            let flags = fcntl(stream.fd, F_GETFL)
            enabled = flags >= 0 && fcntl(stream.fd, F_SETFL, flags | O_DIRECT) == 0
            refused = !enabled
        }
        guard enabled else { return try stream.write(bytes) }
        let n = Glibc.write(stream.fd, bytes.baseAddress!, bytes.count)
        if n == bytes.count { return }
        // EINVAL: the file system took the flag but not the write. A short write: rare, not worth aligning again.
        guard n >= 0 || errno == EINVAL else { throw .io(path: stream.path, reason: FileDescriptorStream.lastError()) }
        try stopDirect()
        try stream.write(UnsafeRawBufferPointer(rebasing: bytes[max(n, 0)...]))
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
