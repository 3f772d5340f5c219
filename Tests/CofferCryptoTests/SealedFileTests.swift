import Testing

@testable import CofferCrypto

struct SealedFileTests {
    static let chunk = Fixtures.chunk

    // 256 chunks of 4 KiB fill a batch (1 MiB): one batch holds up to 257, the last of them final.
    @Test(arguments: [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 5 * chunk + 17, 256 * chunk, 257 * chunk, 257 * chunk + 1])
    func roundTripAtChunkBoundaries(size: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(size)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        #expect(try Fixtures.open(sealed, with: alice) == plaintext)
        let chunks = max(1, (size + Self.chunk - 1) / Self.chunk)
        let header = 30 + 92 + 32
        #expect(sealed.count == header + size + 16 * chunks)
    }

    @Test func roundTripAcrossManyBatchesWithDigests() throws {
        let alice = try Identity.generate(name: "alice")
        // 2 MiB batches of 4 KiB chunks: 5 MiB + 3 crosses three batches and ends mid-chunk.
        let plaintext = testBytes(5 << 20 + 3)
        let sink = MemorySink()
        let sealed = try SealedFile.seal(
            from: MemorySource(plaintext),
            to: sink,
            recipients: [alice.publicIdentity],
            chunkSize: Self.chunk,
            digests: true
        )
        #expect(sealed.plaintextSHA256 == Digest.sha256(plaintext))
        #expect(sealed.sealedSHA256 == Digest.sha256(sink.bytes))
        #expect(sealed.sealedLength == sink.bytes.count)
        let out = MemorySink()
        let opened = try SealedFile.open(from: MemorySource(sink.bytes), to: out, identity: alice, digests: true)
        #expect(out.bytes == plaintext)
        #expect(opened.plaintextSHA256 == sealed.plaintextSHA256)
        #expect(opened.sealedSHA256 == sealed.sealedSHA256)
    }

    /// An input of one batch hashes on the sealing thread below `smallestBatchHashedBeside` and on threads of its own
    /// from it: the digests are the same either way. (Opening reads the sealed text, a chunk's tags and a header
    /// longer: one chunk under the threshold keeps both directions under it.)
    @Test(arguments: [ChunkPipeline.smallestBatchHashedBeside - SealedFile.defaultChunkSize, ChunkPipeline.smallestBatchHashedBeside, 700 << 10])
    func oneBatchDigestsWhereverTheyAreHashed(size: Int) throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(size)
        let sink = MemorySink()
        let sealed = try SealedFile.seal(from: MemorySource(plaintext), to: sink, recipients: [alice.publicIdentity], digests: true)
        #expect(sealed.chunks < 16, "one batch")
        #expect(sealed.plaintextSHA256 == Digest.sha256(plaintext))
        #expect(sealed.sealedSHA256 == Digest.sha256(sink.bytes))
        let out = MemorySink()
        let opened = try SealedFile.open(from: MemorySource(sink.bytes), to: out, identity: alice, digests: true)
        #expect(out.bytes == plaintext)
        #expect(opened.plaintextSHA256 == sealed.plaintextSHA256 && opened.sealedSHA256 == sealed.sealedSHA256)
    }

    /// A server seals from Swift concurrency tasks: many multi-batch pipelines at once must neither starve nor deadlock the pool.
    @Test func concurrentPipelinesFromSwiftConcurrencyTasks() async throws {
        let alice = try Identity.generate(name: "alice")
        let recipient = alice.publicIdentity
        let sealed = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for seed in 1...8 {
                group.addTask { try Fixtures.seal(testBytes(3 << 20, seed: UInt64(seed)), to: [recipient]) }
            }
            return try await group.reduce(into: [[UInt8]]()) { $0.append($1) }
        }
        #expect(sealed.count == 8)
        for file in sealed { #expect(try Fixtures.open(file, with: alice).count == 3 << 20) }
    }

    @Test func defaultChunkSizeRoundTrip() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(3 * SealedFile.defaultChunkSize + 1)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity], chunkSize: SealedFile.defaultChunkSize)
        #expect(try Fixtures.open(sealed, with: alice) == plaintext)
    }

    @Test func everyRecipientCanOpen() throws {
        let alice = try Identity.generate(name: "alice")
        let bob = try Identity.generate(name: "bob")
        let plaintext = testBytes(10_000)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity, bob.publicIdentity])
        #expect(try Fixtures.open(sealed, with: alice) == plaintext)
        #expect(try Fixtures.open(sealed, with: bob) == plaintext)
    }

    @Test func flippingAnyByteFails() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(2 * Self.chunk + 100)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        for index in sealed.indices {
            var tampered = sealed
            tampered[index] ^= 0x01
            #expect(throws: CofferCryptoError.self, "flip at byte \(index)") { _ = try Fixtures.open(tampered, with: alice) }
        }
    }

    @Test func truncationAtEveryChunkBoundaryFails() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(4 * Self.chunk + 10)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let header = sealed.count - plaintext.count - 5 * 16
        for chunks in 0..<5 {
            let cut = Array(sealed.prefix(header + chunks * (Self.chunk + 16)))
            #expect(throws: CofferCryptoError.self) { _ = try Fixtures.open(cut, with: alice) }
        }
        let atBoundary = Array(sealed.prefix(header + 2 * (Self.chunk + 16)))
        #expect(throws: CofferCryptoError.truncated("chunk 1 is not the final chunk: the file was cut short")) {
            _ = try Fixtures.open(atBoundary, with: alice)
        }
        #expect(throws: CofferCryptoError.truncated("no chunks after the header")) {
            _ = try Fixtures.open(Array(sealed.prefix(header)), with: alice)
        }
    }

    @Test func swappedDuplicatedAndAppendedChunksFail() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(3 * Self.chunk + 10)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let stride = Self.chunk + 16
        let header = sealed.count - plaintext.count - 4 * 16
        func chunk(_ i: Int) -> [UInt8] { Array(sealed[(header + i * stride)..<min(sealed.count, header + (i + 1) * stride)]) }
        let head = Array(sealed.prefix(header))
        let swapped = head + chunk(1) + chunk(0) + chunk(2) + chunk(3)
        #expect(throws: CofferCryptoError.authenticationFailed(chunk: 0)) { _ = try Fixtures.open(swapped, with: alice) }
        let duplicated = head + chunk(0) + chunk(0) + chunk(1) + chunk(2) + chunk(3)
        #expect(throws: CofferCryptoError.authenticationFailed(chunk: 1)) { _ = try Fixtures.open(duplicated, with: alice) }
        let dropped = head + chunk(0) + chunk(2) + chunk(3)
        #expect(throws: CofferCryptoError.authenticationFailed(chunk: 1)) { _ = try Fixtures.open(dropped, with: alice) }
        let extended = sealed + chunk(1)
        #expect(throws: CofferCryptoError.self) { _ = try Fixtures.open(extended, with: alice) }
    }

    @Test func chunkSplicedFromAnotherFileFails() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(3 * Self.chunk)
        let first = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let second = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let header = first.count - plaintext.count - 3 * 16
        var spliced = first
        let stride = Self.chunk + 16
        spliced.replaceSubrange((header + stride)..<(header + 2 * stride), with: second[(header + stride)..<(header + 2 * stride)])
        #expect(throws: CofferCryptoError.authenticationFailed(chunk: 1)) { _ = try Fixtures.open(spliced, with: alice) }
    }

    @Test func wrongIdentityIsNotARecipient() throws {
        let alice = try Identity.generate(name: "alice")
        let mallory = try Identity.generate(name: "mallory")
        let sealed = try Fixtures.seal(testBytes(100), to: [alice.publicIdentity])
        #expect(throws: CofferCryptoError.notARecipient) { _ = try Fixtures.open(sealed, with: mallory) }
    }

    @Test func headerErrorsNameTheProblem() throws {
        let alice = try Identity.generate(name: "alice")
        let sealed = try Fixtures.seal(testBytes(100), to: [alice.publicIdentity])
        #expect(throws: CofferCryptoError.notACofferFile) { _ = try Fixtures.open(Array("hello, world".utf8), with: alice) }
        #expect(throws: CofferCryptoError.notACofferFile) { _ = try Fixtures.open([], with: alice) }
        var version = sealed
        version[8] = 2
        #expect(throws: CofferCryptoError.unsupportedVersion(2)) { _ = try Fixtures.open(version, with: alice) }
        var prefix = sealed
        prefix[12] ^= 0x80
        #expect(throws: CofferCryptoError.headerAuthenticationFailed) { _ = try Fixtures.open(prefix, with: alice) }
        #expect(throws: CofferCryptoError.truncated("the header ends inside its stanzas")) {
            _ = try Fixtures.open(Array(sealed.prefix(40)), with: alice)
        }
        #expect(CofferCryptoError.authenticationFailed(chunk: 3).description == "authentication failed at chunk 3: the file was modified")
    }

    @Test func sealedOutputIsFreshEachTime() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(1000)
        #expect(try Fixtures.seal(plaintext, to: [alice.publicIdentity]) != Fixtures.seal(plaintext, to: [alice.publicIdentity]))
    }

    @Test func detachedKeyFileOpensWithDataKey() throws {
        // Registry blobs carry no stanzas: the data key is wrapped elsewhere and supplied directly.
        let dataKey = SecretKey.random()
        let plaintext = testBytes(9000)
        let sink = MemorySink()
        _ = try SealedFile.seal(from: MemorySource(plaintext), to: sink, dataKey: dataKey, stanzas: [], chunkSize: Self.chunk)
        let source = MemorySource(sink.bytes)
        let (header, length) = try SealedFileHeader.read(from: source)
        #expect(header.stanzas.isEmpty)
        let out = MemorySink()
        _ = try SealedFile.openPayload(from: source, to: out, header: header, headerLength: length, dataKey: dataKey)
        #expect(out.bytes == plaintext)
        let other = SecretKey.random()
        #expect(throws: CofferCryptoError.headerAuthenticationFailed) {
            _ = try SealedFile.openPayload(from: MemorySource([]), to: MemorySink(), header: header, headerLength: length, dataKey: other)
        }
    }

    @Test func invalidChunkSizeIsRefused() throws {
        let alice = try Identity.generate(name: "alice")
        #expect(throws: CofferCryptoError.invalidChunkSize(5000)) { _ = try Fixtures.seal([1], to: [alice.publicIdentity], chunkSize: 5000) }
        #expect(throws: CofferCryptoError.invalidChunkSize(1024)) { _ = try Fixtures.seal([1], to: [alice.publicIdentity], chunkSize: 1024) }
    }
}
