import Foundation
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Bytes `range` of a local file as a request body, read 1 MiB at a time on NIO's thread pool: memory stays at one
/// buffer whatever the file's size, and the cooperative pool never waits on the disk.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    static let piece = 1 << 20

    let path: String
    let range: Range<Int>

    struct AsyncIterator: AsyncIteratorProtocol {
        let file: OpenFile
        var offset: Int
        let end: Int

        mutating func next() async throws -> ByteBuffer? {
            guard offset < end else { return nil }
            let count = Swift.min(FileChunks.piece, end - offset)
            let at = offset
            let file = self.file
            let buffer = try await NIOThreadPool.singleton.runIfActive { () throws -> ByteBuffer in
                var buffer = ByteBufferAllocator().buffer(capacity: count)
                let read = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
                    try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[..<count]), at: at)
                }
                guard read == count else { throw CofferRegistryError.io(path: file.path, reason: "the file is shorter than the blob it holds") }
                return buffer
            }
            offset += count
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(file: OpenFile(path: path), offset: range.lowerBound, end: range.upperBound)
    }

    /// A descriptor opened on first read and closed when the last iterator over it goes.
    final class OpenFile: @unchecked Sendable {
        let path: String
        private var fd: Int32 = -1
        private let lock = NSLock()

        init(path: String) { self.path = path }

        deinit { if fd >= 0 { close(fd) } }

        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws -> Int {
            let fd = try descriptor()
            var total = 0
            while total < buffer.count {
                let n = pread(fd, buffer.baseAddress! + total, buffer.count - total, off_t(offset + total))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CofferRegistryError.io(path: path, reason: String(cString: strerror(errno)))
                }
                if n == 0 { break }
                total += n
            }
            return total
        }

        private func descriptor() throws -> Int32 {
            try lock.withLock {
                if fd < 0 {
                    fd = open(path, O_RDONLY | O_CLOEXEC)
                    guard fd >= 0 else { throw CofferRegistryError.io(path: path, reason: String(cString: strerror(errno))) }
                }
                return fd
            }
        }
    }
}

/// The next `count` bytes of a ``BlobStream`` shared by several requests in turn (the `PATCH`es of one append), pulled
/// as the request body is sent: nothing is buffered beyond the buffer in flight.
struct BlobSlice: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let source: SharedBlobIterator
    let count: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        let source: SharedBlobIterator
        var remaining: Int

        mutating func next() async throws -> ByteBuffer? {
            guard remaining > 0 else { return nil }
            guard let buffer = try await source.next(upTo: remaining) else {
                throw CofferRegistryError.invalidInput("the bytes ended \(remaining) bytes before the length they announced")
            }
            remaining -= buffer.readableBytes
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(source: source, remaining: count) }
}

/// One iterator over a ``BlobStream``, read by the requests of one append in turn, behind a gate.
///
/// AsyncHTTPClient sends a streamed request body from a task of its own, and when the answer comes back before the body
/// is sent (a registry refusing a stale upload answers at once) it returns while that task may still wait in `next()`.
/// The stream is often a server's request body, whose iterator NIO traps on when entered twice at once, and which the
/// server drains itself once the handler returns: a crash of `coffer serve` that a crash campaign found. So one read
/// at a time passes the gate (a second is refused), and ``close()`` waits for the read in flight and refuses every
/// later one; the append calls it before it returns.
final class SharedBlobIterator: @unchecked Sendable {
    // Touched only by the one reader the gate lets in.
    private var iterator: BlobStream.AsyncIterator
    private var pending: ByteBuffer?
    private let gate = Mutex(Gate())

    private struct Gate {
        var reading = false
        var closed = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    init(_ stream: BlobStream) { iterator = stream.makeAsyncIterator() }

    /// The next non-empty bytes, at most `limit` of them (the rest is kept for the next read), or nil at the end.
    func next(upTo limit: Int) async throws -> ByteBuffer? {
        let refusal: String? = gate.withLock { gate in
            if gate.closed { return "the upload's bytes were read after it ended" }
            if gate.reading { return "the upload's bytes were read by two requests at once" }
            gate.reading = true
            return nil
        }
        if let refusal { throw CofferRegistryError.invalidInput(refusal) }
        defer {
            let waiters = gate.withLock { gate in
                gate.reading = false
                defer { gate.waiters = [] }
                return gate.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        var buffer: ByteBuffer
        if let pending {
            buffer = pending
            self.pending = nil
        } else {
            repeat {
                guard let next = try await iterator.next() else { return nil }
                buffer = next
            } while buffer.readableBytes == 0
        }
        if buffer.readableBytes > limit {
            let head = buffer.readSlice(length: limit)!
            pending = buffer
            return head
        }
        return buffer
    }

    /// Up to `limit` bytes gathered in memory, fewer only at the end (an append of unknown length goes in such pieces).
    func collect(upTo limit: Int) async throws -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < limit, var buffer = try await next(upTo: limit - bytes.count) {
            bytes += buffer.readBytes(length: buffer.readableBytes)!
        }
        return bytes
    }

    /// Refuses every later read, and returns once no read is in flight.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = gate.withLock { gate in
                gate.closed = true
                if gate.reading { gate.waiters.append(continuation) }
                return gate.reading
            }
            if !wait { continuation.resume() }
        }
    }
}
