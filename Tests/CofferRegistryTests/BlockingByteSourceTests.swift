import CofferCrypto
import Foundation
import NIOCore
import Synchronization
import Testing

@testable import CofferRegistry

/// The blocking adapter a pipeline thread reads a remote blob through: bounded, in order, errors and cancellation passed on.
@Suite("BlockingByteSource")
struct BlockingByteSourceTests {
    @Test("a blob read from the registry on a plain thread, in odd-sized reads, through a queue smaller than one buffer")
    func readsRegistryBlob() async throws {
        let fixture = try OCIFixture()
        defer { fixture.remove() }
        let bytes = pattern((3 << 20) + 333, seed: 51)
        let digest = try await fixture.put(bytes)
        let source = BlockingByteSource(try await fixture.store.read(digest, range: nil), name: fixture.store.name, limit: 64 << 10)
        #expect(source.remainingHint == bytes.count)
        let read = try await Offload.run { () throws -> [UInt8] in
            var out: [UInt8] = []
            var block = [UInt8](repeating: 0, count: 77_777)
            while true {
                let n = try block.withUnsafeMutableBytes { buffer in try source.read(into: buffer) }
                out += block[0..<n]
                if n < block.count { return out }
            }
        }
        #expect(read == bytes)
        #expect(source.remainingHint == 0)
        // And through the crypto module's own reader of ByteSources.
        let again = BlockingByteSource(try await fixture.store.read(digest, range: 1000..<2_000_000), name: fixture.store.name)
        let hashed = try await Offload.run { () throws(CofferCryptoError) in try Digest.sha256(of: again) }
        #expect(hashed.length == 1_999_000)
        #expect(hashed.digest == Digest.sha256(bytes[1000..<2_000_000]))
    }

    @Test("the producer waits while the queue is full: a stream nobody reads is not drained into memory")
    func boundedBuffering() async throws {
        let pulled = Mutex(0)
        let stream = BlobStream(
            length: nil,
            AsyncThrowingStream(unfolding: {
                pulled.withLock { $0 += 1 }
                return ByteBuffer(repeating: 7, count: 1 << 16)
            })
        )
        let source = BlockingByteSource(stream, limit: 256 << 10)
        try await Task.sleep(for: .milliseconds(300))
        // Four 64 KiB buffers fill the 256 KiB queue; the task then waits holding at most one more.
        #expect(pulled.withLock { $0 } <= 6)
        source.cancel()
    }

    @Test("an error in the stream reaches the reader after the bytes before it, as one line; the original error is kept")
    func errorPropagates() async throws {
        let stream = BlobStream(
            length: nil,
            AsyncThrowingStream { continuation in
                continuation.yield(ByteBuffer(bytes: [1, 2, 3]))
                continuation.finish(
                    throwing: CofferRegistryError.unavailable(engine: "OCI registry r:1/x", reason: "the registry closed the connection")
                )
            }
        )
        let source = BlockingByteSource(stream, name: "OCI registry r:1/x")
        let (first, message) = await Offload.run { () -> ([UInt8], String) in
            var buffer = [UInt8](repeating: 0, count: 2)
            let n = (try? buffer.withUnsafeMutableBytes { try source.read(into: $0) }) ?? -1
            let first = Array(buffer[0..<max(n, 0)])
            do {
                _ = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                return (first, "no error")
            } catch {
                return (first, String(describing: error))
            }
        }
        #expect(first == [1, 2])
        #expect(message == "OCI registry r:1/x: the registry closed the connection")
        #expect(source.failure as? CofferRegistryError == .unavailable(engine: "OCI registry r:1/x", reason: "the registry closed the connection"))
    }

    @Test("cancel() wakes a blocked reader and ends the producing stream")
    func cancellation() async throws {
        let terminated = Mutex(false)
        let stream = BlobStream(
            length: nil,
            AsyncThrowingStream { continuation in
                // Never yields: a registry that stopped sending.
                continuation.onTermination = { _ in terminated.withLock { $0 = true } }
            }
        )
        let source = BlockingByteSource(stream)
        let reader = Task {
            await Offload.run { () -> String in
                var buffer = [UInt8](repeating: 0, count: 16)
                do {
                    _ = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                    return "returned"
                } catch {
                    return String(describing: error)
                }
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        source.cancel()
        #expect(await reader.value == "blob stream: reading was cancelled")
        try await Task.sleep(for: .milliseconds(100))
        #expect(terminated.withLock { $0 })
    }
}
