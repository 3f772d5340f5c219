import Dispatch
import Foundation
import Synchronization
import Testing

@testable import CofferCrypto

/// The pipeline's failures and edges (helper-81's review of its batches freed by their last part): a sink or a source
/// failing at any point ends it with that error, a forged chunk in any batch never reaches a file sink, digests are right
/// at every batch boundary and under concurrency.
struct PipelineFailureTests {
    static let chunk = Fixtures.chunk
    static let header = 30 + 92 + 32
    /// Plaintext bytes per full batch when the input is not known to be small (256 chunks of 4 KiB, 2 cores).
    static let batchBytes = 256 * chunk

    final class FailingSink: ByteSink {
        let failOn: Int
        private(set) var calls = 0
        private(set) var bytes: [UInt8] = []
        init(failOn: Int) { self.failOn = failOn }
        func write(_ b: UnsafeRawBufferPointer) throws(CofferCryptoError) {
            calls += 1
            if calls == failOn { throw .io(path: "sink", reason: "write \(calls) fails") }
            bytes.append(contentsOf: b)
        }
    }

    final class TestSource: ByteSource {
        let inner: MemorySource
        let hinted: Bool
        let failOn: Int?
        private(set) var reads = 0
        init(_ bytes: [UInt8], hinted: Bool, failOn: Int? = nil) {
            inner = MemorySource(bytes)
            self.hinted = hinted
            self.failOn = failOn
        }
        var remainingHint: Int? { hinted ? inner.remainingHint : nil }
        func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
            reads += 1
            if reads == failOn { throw .io(path: "source", reason: "read \(reads) fails") }
            return try inner.read(into: buffer)
        }
    }

    /// Seals `source` to `recipient` in 4 KiB chunks with both digests, as every test here does.
    static func sealWithDigests(_ source: TestSource, to sink: any ByteSink, for recipient: PublicIdentity) throws -> SealedFile.Summary {
        try SealedFile.seal(from: source, to: sink, recipients: [recipient], chunkSize: chunk, digests: true)
    }

    /// A sink whose write throws on its Nth call ends the pipeline with that error, sealing and opening, with digests.
    @Test(arguments: [2, 3, 4, 5, 7, 12, 13])
    func sinkThrowingOnNthWriteEndsThePipeline(failOn: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(12 << 20 + 5)
        for hinted in [true, false] {
            let sink = FailingSink(failOn: failOn)
            #expect(throws: CofferCryptoError.io(path: "sink", reason: "write \(failOn) fails")) {
                _ = try Self.sealWithDigests(TestSource(plaintext, hinted: hinted), to: sink, for: alice.publicIdentity)
            }
        }
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        for hinted in [true, false] {
            let sink = FailingSink(failOn: failOn - 1)
            #expect(throws: CofferCryptoError.io(path: "sink", reason: "write \(failOn - 1) fails")) {
                _ = try SealedFile.open(from: TestSource(sealed, hinted: hinted), to: sink, identity: alice, digests: true)
            }
            #expect(Array(plaintext.prefix(sink.bytes.count)) == sink.bytes)
        }
    }

    /// A source that throws mid-stream ends the pipeline with that error.
    @Test(arguments: [2, 3, 4, 5, 8, 20])
    func sourceThrowingMidStreamEndsThePipeline(failOn: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(12 << 20 + 5)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        for hinted in [true, false] {
            #expect(throws: CofferCryptoError.self) {
                _ = try Self.sealWithDigests(TestSource(plaintext, hinted: hinted, failOn: failOn), to: MemorySink(), for: alice.publicIdentity)
            }
            let sink = MemorySink()
            #expect(throws: CofferCryptoError.self) {
                _ = try SealedFile.open(from: TestSource(sealed, hinted: hinted, failOn: failOn), to: sink, identity: alice, digests: true)
            }
            #expect(Array(plaintext.prefix(sink.bytes.count)) == sink.bytes)
            let region = UnsafeMutableRawBufferPointer.allocate(byteCount: plaintext.count, alignment: 64)
            defer { region.deallocate() }
            #expect(throws: CofferCryptoError.self) {
                _ = try SealedFile.open(
                    from: TestSource(sealed, hinted: hinted, failOn: failOn),
                    to: MemoryRegionSink(region),
                    identity: alice,
                    digests: true
                )
            }
        }
    }

    static let boundarySizes: [Int] = {
        let b = batchBytes
        return [
            0, 1, (256 << 10) - 1, 256 << 10, b - 1, b, b + chunk - 1, b + chunk, b + chunk + 1, 2 * b, 3 * b - 1, 3 * b, 3 * b + 1,
            3 * (b + chunk), 4 * b + 7, 7 * b,
        ]
    }()

    /// Digests of every direction at batch boundaries, hinted or not, file sink or region.
    @Test(arguments: boundarySizes)
    func digestsAtBatchBoundaries(size: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(size, seed: UInt64(size) &+ 11)
        for hinted in [true, false] {
            let sink = MemorySink()
            let s = try Self.sealWithDigests(TestSource(plaintext, hinted: hinted), to: sink, for: alice.publicIdentity)
            #expect(s.plaintextSHA256 == Digest.sha256(plaintext))
            #expect(s.sealedSHA256 == Digest.sha256(sink.bytes))
            let out = MemorySink()
            let o = try SealedFile.open(from: TestSource(sink.bytes, hinted: hinted), to: out, identity: alice, digests: true)
            #expect(out.bytes == plaintext)
            #expect(o.plaintextSHA256 == s.plaintextSHA256)
            #expect(o.sealedSHA256 == s.sealedSHA256)
            let region = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, plaintext.count), alignment: 64)
            defer { region.deallocate() }
            let r = try SealedFile.open(
                from: TestSource(sink.bytes, hinted: hinted),
                to: MemoryRegionSink(UnsafeMutableRawBufferPointer(rebasing: region[0..<plaintext.count])),
                identity: alice,
                digests: true
            )
            #expect(Array(region.prefix(plaintext.count)) == plaintext)
            #expect(r.plaintextSHA256 == s.plaintextSHA256)
            #expect(r.sealedSHA256 == s.sealedSHA256)
        }
    }

    /// A forged chunk in any batch: the open fails, and a file sink never sees a byte of the forged chunk's batch.
    @Test(arguments: [0, 255, 256, 257, 300, 511, 513, 1000, 2048, 3071])
    func forgedChunkNeverReachesTheSink(chunkIndex: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(3072 * Self.chunk)  // 12 MiB, 3072 chunks
        var sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        sealed[Self.header + chunkIndex * (Self.chunk + 16) + 9] ^= 1
        for hinted in [true, false] {
            let sink = MemorySink()
            #expect(throws: CofferCryptoError.self) {
                _ = try SealedFile.open(from: TestSource(sealed, hinted: hinted), to: sink, identity: alice, digests: true)
            }
            #expect(sink.bytes.count <= chunkIndex * Self.chunk)
            #expect(Array(plaintext.prefix(sink.bytes.count)) == sink.bytes)
            let region = UnsafeMutableRawBufferPointer.allocate(byteCount: plaintext.count, alignment: 64)
            defer { region.deallocate() }
            #expect(throws: CofferCryptoError.self) {
                _ = try SealedFile.open(from: TestSource(sealed, hinted: hinted), to: MemoryRegionSink(region), identity: alice, digests: true)
            }
        }
    }

    /// Many pipelines at once, each with both digests: every digest right.
    @Test func manyConcurrentPipelinesKeepTheirDigests() throws {
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            for round in 0..<3 {
                let size = (i * 977 + round * 131) % 5 * Self.batchBytes + (i * 4099 + round) % (3 * Self.chunk)
                let plaintext = testBytes(size, seed: UInt64(i * 100 + round + 1))
                do {
                    let alice = try Identity.generate(name: "alice")
                    let sink = MemorySink()
                    let s = try Self.sealWithDigests(TestSource(plaintext, hinted: i % 2 == 0), to: sink, for: alice.publicIdentity)
                    let out = MemorySink()
                    let o = try SealedFile.open(from: TestSource(sink.bytes, hinted: round % 2 == 0), to: out, identity: alice, digests: true)
                    let ok =
                        s.plaintextSHA256 == Digest.sha256(plaintext) && s.sealedSHA256 == Digest.sha256(sink.bytes) && out.bytes == plaintext
                        && o.plaintextSHA256 == s.plaintextSHA256 && o.sealedSHA256 == s.sealedSHA256
                    if !ok { failures.withLock { $0.append("\(i)/\(round) size \(size)") } }
                } catch {
                    failures.withLock { $0.append("\(i)/\(round) size \(size): \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
    }

    /// The same seal, many times: the output hash is the same every time (batches hashed in order, after transform).
    @Test func outputHashIsStableOverManyRuns() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(9 * Self.batchBytes + 123)
        for round in 0..<20 {
            let sink = MemorySink()
            let s = try Self.sealWithDigests(TestSource(plaintext, hinted: round % 2 == 0), to: sink, for: alice.publicIdentity)
            #expect(s.sealedSHA256 == Digest.sha256(sink.bytes), "round \(round)")
            #expect(s.plaintextSHA256 == Digest.sha256(plaintext), "round \(round)")
        }
    }
}
