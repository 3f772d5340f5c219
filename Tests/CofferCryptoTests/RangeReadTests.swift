import Foundation
import Testing

@testable import CofferCrypto

struct RangeReadTests {
    static let chunk = Fixtures.chunk

    /// Writes a sealed file to a temporary path and opens it for range reads.
    private func sealedFile(_ plaintext: [UInt8], for identity: borrowing Identity) throws -> (FileDescriptorStream, String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("range-\(UUID().uuidString).cfs").path
        try FileBytes.write(try Fixtures.seal(plaintext, to: [identity.publicIdentity]), to: path)
        return (try FileDescriptorStream(readingFrom: path), path)
    }

    @Test func rangesEqualSlicesOfTheFullDecrypt() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(7 * Self.chunk + 123)
        let (file, path) = try sealedFile(plaintext, for: alice)
        defer { unlink(path) }
        let full = try Fixtures.open(try FileBytes.read(path), with: alice)
        let c = Self.chunk
        let ranges = [0..<0, 0..<1, 0..<c, c - 1..<c + 1, c..<2 * c, 3 * c + 5..<6 * c + 7, 7 * c..<plaintext.count, 0..<plaintext.count]
        for range in ranges
            + (0..<20).map({ i in
                let a = (i * 7919) % plaintext.count
                return a..<min(plaintext.count, a + i * 997)
            })
        {
            let sink = MemorySink()
            _ = try SealedFile.openRange(from: range.lowerBound, to: range.upperBound, of: file, to: sink, identity: alice)
            #expect(sink.bytes == Array(full[range]), "range \(range)")
        }
        let tail = MemorySink()
        _ = try SealedFile.openRange(from: 5 * c, to: nil, of: file, to: tail, identity: alice)
        #expect(tail.bytes == Array(full[(5 * c)...]))
    }

    @Test func rangeOutOfBoundsIsRefused() throws {
        let alice = try Identity.generate(name: "alice")
        let (file, path) = try sealedFile(testBytes(1000), for: alice)
        defer { unlink(path) }
        await #expect(throws: CofferCryptoError.rangeOutOfBounds(start: 10, end: 2000, length: 1000)) {
            _ = try SealedFile.openRange(from: 10, to: 2000, of: file, to: MemorySink(), identity: alice)
        }
        #expect(
            CofferCryptoError.rangeOutOfBounds(start: 10, end: 2000, length: 1000).description
                == "range 10:2000 out of bounds for 1000 plaintext bytes"
        )
    }

    @Test func rangeOfATruncatedFileFailsEvenAwayFromTheCut() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(4 * Self.chunk)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cut-\(UUID().uuidString).cfs").path
        defer { unlink(path) }
        try FileBytes.write(Array(sealed.prefix(sealed.count - (Self.chunk + 16))), to: path)
        let file = try FileDescriptorStream(readingFrom: path)
        #expect(throws: CofferCryptoError.truncated("chunk 2 is not the final chunk: the file was cut short")) {
            _ = try SealedFile.openRange(from: 0, to: 10, of: file, to: MemorySink(), identity: alice)
        }
    }

    @Test func tamperedChunkInsideTheRangeFails() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(4 * Self.chunk)
        var sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let header = sealed.count - plaintext.count - 4 * 16
        sealed[header + (Self.chunk + 16) + 5] ^= 1
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).cfs").path
        defer { unlink(path) }
        try FileBytes.write(sealed, to: path)
        let file = try FileDescriptorStream(readingFrom: path)
        #expect(throws: CofferCryptoError.authenticationFailed(chunk: 1)) {
            _ = try SealedFile.openRange(from: Self.chunk, to: Self.chunk + 10, of: file, to: MemorySink(), identity: alice)
        }
        let untouched = MemorySink()
        _ = try SealedFile.openRange(from: 2 * Self.chunk, to: 3 * Self.chunk, of: file, to: untouched, identity: alice)
        #expect(untouched.bytes == Array(plaintext[(2 * Self.chunk)..<(3 * Self.chunk)]))
    }
}
