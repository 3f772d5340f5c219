@testable import CofferCrypto

/// An in-memory byte sink.
final class MemorySink: ByteSink {
    private(set) var bytes: [UInt8] = []
    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) { self.bytes.append(contentsOf: bytes) }
}

/// Deterministic pseudo-random test bytes (xorshift), so failures reproduce.
func testBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return UInt8(truncatingIfNeeded: state)
    }
}

func hex(_ text: String) -> [UInt8] { Digest.bytes(fromHex: text.filter { !$0.isWhitespace })! }

func passphrase(_ text: String) -> SecureBytes {
    let bytes = Array(text.utf8)
    let secret = SecureBytes(count: bytes.count)
    secret.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
    return secret
}

/// Identities are costly only to encrypt; generating them is cheap, so tests share a few.
enum Fixtures {
    static let chunk = 4096

    static func seal(_ plaintext: [UInt8], to recipients: [PublicIdentity], chunkSize: Int = chunk) throws -> [UInt8] {
        let sink = MemorySink()
        _ = try SealedFile.seal(from: MemorySource(plaintext), to: sink, recipients: recipients, chunkSize: chunkSize)
        return sink.bytes
    }

    static func open(_ sealed: [UInt8], with identity: borrowing Identity) throws(CofferCryptoError) -> [UInt8] {
        let sink = MemorySink()
        _ = try SealedFile.open(from: MemorySource(sealed), to: sink, identity: identity)
        return sink.bytes
    }
}
