import CSodium
import CofferCrypto
import CofferTestSupport
import Testing

@testable import CofferFederated

@Suite(.ownThread)
struct MaskExpanderTests {
    /// A mask is the RFC 8439 ChaCha20 keystream read as little-endian words (docs/FORMAT.md), whoever computes it: OpenSSL
    /// here, libsodium's `crypto_stream_chacha20_ietf` in the format's text and in other implementations. Lengths cross
    /// the shim's 16 KiB and the expander's 64 KiB pieces.
    @Test(arguments: [1, 8, 2047, 2048, 8 * 1024 + 3, 101_000])
    func maskIsTheChaCha20KeystreamLibsodiumGives(count: Int) {
        _ = FederatedSodium.ready
        let seed = SecureBytes.random(count: 32)
        var mask = [UInt64](repeating: 0, count: count)
        mask.withUnsafeMutableBufferPointer { MaskExpander().apply(seed: seed, .add, to: $0) }
        var stream = [UInt8](repeating: 0, count: count * 8)
        let nonce = [UInt8](repeating: 0, count: 12)
        seed.withUnsafeBytes { key in
            _ = crypto_stream_chacha20_ietf(&stream, UInt64(stream.count), nonce, key.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        let words = (0..<count).map { j in stream[(j * 8)..<(j * 8 + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        #expect(mask.indices.first { mask[$0] != words[$0] } == nil, "the first word that differs")
    }

    /// RFC 8439 appendix A.1, test vector 1: key and nonce of zeros, block counter 0.
    @Test func maskOfTheZeroSeedIsTheRFCTestVector() {
        let seed = SecureBytes(count: 32)
        var mask = [UInt64](repeating: 0, count: 8)
        mask.withUnsafeMutableBufferPointer { MaskExpander().apply(seed: seed, .add, to: $0) }
        let expected: [UInt8] = [
            0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28,
            0xbd, 0xd2, 0x19, 0xb8, 0xa0, 0x8d, 0xed, 0x1a, 0xa8, 0x36, 0xef, 0xcc, 0x8b, 0x77, 0x0d, 0xc7,
            0xda, 0x41, 0x59, 0x7c, 0x51, 0x57, 0x48, 0x8d, 0x77, 0x24, 0xe0, 0x3f, 0xb8, 0xd8, 0x4a, 0x37,
            0x6a, 0x43, 0xb8, 0xf4, 0x15, 0x18, 0xa1, 0x1c, 0xc3, 0x87, 0xb6, 0x69, 0xb2, 0xee, 0x65, 0x86,
        ]
        #expect(mask.flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } } == expected)
    }

    /// The one-pass form must give exactly what one mask at a time gives: the format defines each mask, not the loop.
    @Test(arguments: [1, 7, 1024, 1025, 8 * 1024 + 3, 101_000])
    func manyMasksInOnePassEqualOneMaskAtATime(count: Int) {
        let seeds = SecureBytes.random(count: 5 * 32)
        let directions: [MaskExpander.Direction] = [.add, .subtract, .add, .add, .subtract]
        let start = (0..<count).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
        var one = start
        let expander = MaskExpander()
        for (i, direction) in directions.enumerated() {
            let seed = seeds.slice((i * 32)..<(i * 32 + 32))
            one.withUnsafeMutableBufferPointer { expander.apply(seed: seed, direction, to: $0) }
        }
        var pass = start
        pass.withUnsafeMutableBufferPointer { vector in
            seeds.withUnsafeBytes { expander.apply(seeds: $0.baseAddress!, directions: directions, to: vector) }
        }
        #expect(pass == one)
        // Split over threads (ranges on 64-byte blocks), as the coordinator unmasks.
        var split = start
        split.withUnsafeMutableBufferPointer { MaskExpander.apply(seeds: seeds, directions: directions, to: $0, threads: 3) }
        #expect(split == one)
        // And the masks cancel: subtracting what was added gives the start back.
        let opposite = directions.map { $0 == .add ? MaskExpander.Direction.subtract : .add }
        split.withUnsafeMutableBufferPointer { MaskExpander.apply(seeds: seeds, directions: opposite, to: $0, threads: 2) }
        #expect(split == start)
    }
}
