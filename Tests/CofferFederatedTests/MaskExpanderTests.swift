import CLibcrypto
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

    static let keystreamPieces: [(counter: UInt32, count: Int)] = [(0, 1), (1, 64), (3, 8 * 1024), (1_000, 100), (70_000, 8 * 1024 - 5)]

    /// Without an OpenSSL context (OpenSSL unavailable, or failed on the way), a piece of keystream comes from libsodium:
    /// the same bytes from any block on, so a coordinator whose OpenSSL runs out of memory mid-round goes on.
    @Test(arguments: keystreamPieces)
    func libsodiumGivesOpenSSLsKeystreamFromAnyBlock(counter: UInt32, count: Int) throws {
        _ = FederatedSodium.ready
        let seed = SecureBytes.random(count: 32)
        let whole = (count + 63) & ~63
        var openSSL = [UInt8](repeating: 0xAA, count: whole)
        var sodium = [UInt8](repeating: 0x55, count: whole)
        let cipher = try #require(coffer_chacha20_new())
        defer { coffer_chacha20_free(cipher) }
        seed.withUnsafeBytes { key in
            MaskExpander.fill(&openSSL, count: count, seed: key.baseAddress!, counter: counter, with: cipher)
            MaskExpander.fill(&sodium, count: count, seed: key.baseAddress!, counter: counter, with: nil)
        }
        #expect(openSSL == sodium)
        #expect(openSSL.contains { $0 != 0xAA } && sodium.contains { $0 != 0x55 })
    }

    /// RFC 8439 appendix A.1, test vectors 1 to 4 (nonce of zeros): zero key at blocks 0 and 1, key ending in 01 at block
    /// 1, key starting 00 ff at block 2. A mask's block c is its words 8c to 8c + 7.
    @Test(arguments: [
        (
            key: "", block: 0,
            stream: "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
        ),
        (
            key: "", block: 1,
            stream: "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"
        ),
        (
            key: "01", block: 1,
            stream: "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0"
        ),
        (
            key: "00ff", block: 2,
            stream: "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096"
        ),
    ])
    func masksAreTheRFC8439TestVectors(key: String, block: Int, stream: String) {
        func bytes(_ hex: String) -> [UInt8] { stride(from: 0, to: hex.count, by: 2).map { UInt8(hex.dropFirst($0).prefix(2), radix: 16)! } }
        let seed = SecureBytes(count: 32)
        seed.withUnsafeMutableBytes { raw in
            // "01": the last byte is 1; "00ff": the first two bytes are 00 ff.
            let given = bytes(key)
            if key == "01" { raw[31] = 1 } else { for (i, b) in given.enumerated() { raw[i] = b } }
        }
        var mask = [UInt64](repeating: 0, count: 8 * (block + 1))
        mask.withUnsafeMutableBufferPointer { MaskExpander().apply(seed: seed, .add, to: $0) }
        let got = mask.suffix(8).flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } }
        #expect(got == bytes(stream))
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
