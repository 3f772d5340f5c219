import CSodium
public import CofferCrypto

/// Expands a 32-byte seed into a mask over the ring Z_{2^64} and adds it to, or subtracts it from, a vector.
///
/// The mask's element j is bytes 8j to 8j+8 (little-endian) of the ChaCha20 keystream (RFC 8439: 32-byte key = the
/// seed, 12-byte nonce of zeros, block counter from 0), libsodium's `crypto_stream_chacha20_ietf`. A cryptographic PRG
/// is what makes a masked vector look uniform to whoever does not hold the seed (Flower's SecAgg+ expands masks with
/// MT19937 seeded with 32 bits, which does not). Each seed masks one vector once: seeds are fresh per round.
///
/// The keystream goes through a 64 KiB scratch buffer in sodium memory, reused across calls, so expanding a mask
/// never allocates and never puts keystream in ordinary memory.
public final class MaskExpander {
    /// Keystream bytes produced per libsodium call.
    static let pieceBytes = 64 << 10
    private let scratch = SecureBytes(count: MaskExpander.pieceBytes)
    private static let nonce = [UInt8](repeating: 0, count: 12)

    public init() { _ = FederatedSodium.ready }

    public enum Direction: Sendable {
        case add, subtract
    }

    /// `vector[j] = vector[j] ± mask[j]` (mod 2^64) for every j.
    public func apply(seed: borrowing SecureBytes, _ direction: Direction, to vector: UnsafeMutableBufferPointer<UInt64>) {
        precondition(seed.count == 32, "a mask seed is 32 bytes")
        seed.withUnsafeBytes { apply(seed: $0.baseAddress!, direction, to: vector) }
    }

    /// The same with the 32-byte seed given in place (sodium memory the caller reuses).
    func apply(seed: UnsafeRawPointer, _ direction: Direction, to vector: UnsafeMutableBufferPointer<UInt64>) {
        keystream(seed: seed, count: vector.count) { start, words in
            let out = vector.baseAddress! + start
            switch direction {
            case .add: for j in 0..<words.count { out[j] &+= UInt64(littleEndian: words[j]) }
            case .subtract: for j in 0..<words.count { out[j] &-= UInt64(littleEndian: words[j]) }
            }
        }
    }

    /// Hands `total` keystream words under `seed` to `body`, a 64 KiB piece at a time (with the index of the piece's
    /// first word).
    func keystream(seed: UnsafeRawPointer, count total: Int, _ body: (Int, UnsafeBufferPointer<UInt64>) -> Void) {
        let wordsPerPiece = Self.pieceBytes / 8
        var start = 0
        scratch.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            while start < total {
                let count = min(wordsPerPiece, total - start)
                let bytes = count * 8
                // Counter of the piece's first 64-byte block: pieces start on block boundaries.
                let counter = UInt32(start * 8 / 64)
                raw.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
                let p = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
                _ = crypto_stream_chacha20_ietf_xor_ic(p, p, UInt64(bytes), Self.nonce, counter, seed.assumingMemoryBound(to: UInt8.self))
                body(start, UnsafeBufferPointer(rebasing: words[0..<count]))
                start += count
            }
        }
    }
}
