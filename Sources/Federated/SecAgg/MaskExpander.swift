public import CofferCrypto
import CofferTraining
import Foundation

/// Expands a 32-byte seed into a mask over the ring Z_{2^64} and adds it to, or subtracts it from, a vector.
///
/// The mask's element j is bytes 8j to 8j+8 (little-endian) of the ChaCha20 keystream (RFC 8439: 32-byte key = the
/// seed, 12-byte nonce of zeros, block counter from 0), libsodium's `crypto_stream_chacha20_ietf`, here computed by OpenSSL's
/// libcrypto, which gives the same bytes at twice the speed on AVX-512 machines (see `CLibcrypto`), and by libsodium
/// where OpenSSL 3 is not there or fails (coordinators and sites no longer refuse to start without it). A cryptographic PRG
/// is what makes a masked vector look uniform to whoever does not hold the seed (Flower's SecAgg+ expands masks with
/// MT19937 seeded with 32 bits, which does not). Each seed masks one vector once: seeds are fresh per round.
///
/// The keystream goes through a 64 KiB scratch buffer in sodium memory, reused across calls, so expanding a mask
/// never allocates and never puts keystream in ordinary memory. An expander is used by one thread at a time.
public final class MaskExpander {
    /// Keystream bytes produced per call to OpenSSL.
    static let pieceBytes = 64 << 10
    private let scratch = SecureBytes(count: MaskExpander.pieceBytes)

    public init() { _ = FederatedSodium.ready }

    /// Fills `count` bytes at `out`, rounded up to whole 64-byte blocks (the scratch has room), with the keystream under
    /// `seed` (32 bytes) from block `counter` on, through `context` when given (``ChaCha20Keystream``).
    static func fill(_ out: UnsafeMutableRawPointer, count: Int, seed: UnsafeRawPointer, counter: UInt32, with context: UnsafeMutableRawPointer?) {
        let whole = (count + 63) & ~63
        ChaCha20Keystream.write(
            into: out.assumingMemoryBound(to: UInt8.self),
            count: whole,
            key: seed.assumingMemoryBound(to: UInt8.self),
            counter: counter,
            context: context
        )
    }

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

    /// Keystream bytes per seed and piece of the vector in ``apply(seeds:directions:to:startingAt:)``: with the piece of
    /// the vector, 16 KiB, inside a core's L1 data cache.
    static let passBytes = 8 << 10

    /// `vector[j] = vector[j] ± mask_i[first + j]` (mod 2^64) for every seed i (32 bytes each, one after another at
    /// `seeds`) and every j, in one pass over the vector: each 8 KiB piece of it takes every seed's keystream for that
    /// piece while it is in cache. One mask at a time walked the whole vector once per seed (808 KB for 100k parameters,
    /// out of L2) and cost a read and a write of it from L3 for every 808 KB of keystream.
    ///
    /// - Parameter first: the mask element that `vector[0]` takes, a multiple of 8 (64-byte ChaCha20 blocks), so that a
    ///   vector can be split into ranges handled by different threads.
    func apply(seeds: UnsafeRawPointer, directions: [Direction], to vector: UnsafeMutableBufferPointer<UInt64>, startingAt first: Int = 0) {
        precondition(first % 8 == 0, "a range of the mask starts on a ChaCha20 block")
        let wordsPerPiece = Self.passBytes / 8
        ChaCha20Keystream.withContext { cipher in
            scratch.withUnsafeMutableBytes { raw in
                let words = raw.bindMemory(to: UInt64.self)
                var start = 0
                while start < vector.count {
                    let count = min(wordsPerPiece, vector.count - start)
                    let bytes = count * 8
                    let counter = UInt32((first + start) / 8)
                    let out = vector.baseAddress! + start
                    for (i, direction) in directions.enumerated() {
                        Self.fill(raw.baseAddress!, count: bytes, seed: seeds + i * 32, counter: counter, with: cipher)
                        switch direction {
                        case .add: for j in 0..<count { out[j] &+= UInt64(littleEndian: words[j]) }
                        case .subtract: for j in 0..<count { out[j] &-= UInt64(littleEndian: words[j]) }
                        }
                    }
                    start += count
                }
            }
        }
    }

    /// ``apply(seeds:directions:to:startingAt:)`` on `threads` ranges of the vector at once, each with an expander of its
    /// own (the coordinator's unmasking is one process's work, unlike the sites' masking).
    static func apply(
        seeds: borrowing SecureBytes,
        directions: [Direction],
        to vector: UnsafeMutableBufferPointer<UInt64>,
        threads: Int = ProcessInfo.processInfo.activeProcessorCount
    ) {
        precondition(seeds.count == directions.count * 32, "32 bytes of seed per direction")
        guard !directions.isEmpty, !vector.isEmpty else { return }
        // Ranges of whole 64-byte blocks (8 elements).
        let blocks = (vector.count + 7) / 8
        let parts = max(1, min(threads, blocks))
        let perPart = (blocks + parts - 1) / parts * 8
        nonisolated(unsafe) let vector = vector
        seeds.withUnsafeBytes { raw in
            nonisolated(unsafe) let seeds = raw.baseAddress!
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                let lower = min(part * perPart, vector.count)
                let upper = min(lower + perPart, vector.count)
                guard lower < upper else { return }
                MaskExpander().apply(
                    seeds: seeds,
                    directions: directions,
                    to: UnsafeMutableBufferPointer(rebasing: vector[lower..<upper]),
                    startingAt: lower
                )
            }
        }
    }

    /// Hands `total` keystream words under `seed` to `body`, a 64 KiB piece at a time (with the index of the piece's
    /// first word).
    func keystream(seed: UnsafeRawPointer, count total: Int, _ body: (Int, UnsafeBufferPointer<UInt64>) -> Void) {
        let wordsPerPiece = Self.pieceBytes / 8
        var start = 0
        ChaCha20Keystream.withContext { cipher in
            scratch.withUnsafeMutableBytes { raw in
                let words = raw.bindMemory(to: UInt64.self)
                while start < total {
                    let count = min(wordsPerPiece, total - start)
                    let bytes = count * 8
                    // Counter of the piece's first 64-byte block: pieces start on block boundaries.
                    Self.fill(raw.baseAddress!, count: bytes, seed: seed, counter: UInt32(start * 8 / 64), with: cipher)
                    body(start, UnsafeBufferPointer(rebasing: words[0..<count]))
                    start += count
                }
            }
        }
    }
}
