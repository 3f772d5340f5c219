import Foundation
import NIOCore
import NIOPosix

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
            guard var buffer = try await source.next() else {
                throw CofferRegistryError.invalidInput("the bytes ended \(remaining) bytes before the length they announced")
            }
            if buffer.readableBytes > remaining {
                // The rest belongs to the next request.
                let head = buffer.readSlice(length: remaining)!
                source.putBack(buffer)
                buffer = head
            }
            remaining -= buffer.readableBytes
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(source: source, remaining: count) }
}

/// One iterator over a ``BlobStream``, read by one request at a time (each `PATCH` finishes before the next starts;
/// that order is what makes the unchecked `Sendable` sound).
final class SharedBlobIterator: @unchecked Sendable {
    private var iterator: BlobStream.AsyncIterator
    private var pending: ByteBuffer?

    init(_ stream: BlobStream) { iterator = stream.makeAsyncIterator() }

    /// The next non-empty buffer, or nil at the end.
    func next() async throws -> ByteBuffer? {
        if let pending {
            self.pending = nil
            return pending
        }
        while let buffer = try await iterator.next() {
            if buffer.readableBytes > 0 { return buffer }
        }
        return nil
    }

    func putBack(_ buffer: ByteBuffer) { pending = buffer }

    /// Up to `limit` bytes gathered in memory, fewer only at the end (an append of unknown length goes in such pieces).
    func collect(upTo limit: Int) async throws -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < limit, var buffer = try await next() {
            let take = min(buffer.readableBytes, limit - bytes.count)
            bytes += buffer.readBytes(length: take)!
            if buffer.readableBytes > 0 { putBack(buffer) }
        }
        return bytes
    }
}
