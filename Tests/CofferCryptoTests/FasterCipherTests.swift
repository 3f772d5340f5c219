import CSodium
import Testing

@testable import CofferCrypto

/// OpenSSL's ChaCha20-Poly1305 stands in for libsodium's XChaCha20-Poly1305-IETF in sealed files' chunks once loaded
/// (`CLibcrypto`): it must give libsodium's bytes exactly, take what libsodium sealed, and refuse (leaving no byte of
/// plaintext) what libsodium refuses.
struct FasterCipherTests {
    struct Sealed {
        var bytes: [UInt8]
        var tag: [UInt8]
    }

    static let key = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    static let nonce = (0..<24).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }

    static func message(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 11) } }

    static func libsodium(_ plaintext: [UInt8], _ ad: [UInt8], nonce: [UInt8] = nonce) -> Sealed {
        _ = Sodium.ready
        var out = [UInt8](repeating: 0, count: plaintext.count)
        var tag = [UInt8](repeating: 0, count: 16)
        _ = crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
            &out,
            &tag,
            nil,
            plaintext,
            UInt64(plaintext.count),
            ad,
            UInt64(ad.count),
            nil,
            nonce,
            key
        )
        return Sealed(bytes: out, tag: tag)
    }

    static func openSSL(encrypt: Bool, _ input: [UInt8], tag: [UInt8], _ ad: [UInt8], nonce: [UInt8] = nonce) throws -> (Int32, Sealed) {
        loadFasterChunkCipher()
        try #require(ChunkCipher.openSSLReady, "libssl3 is one of Coffer's packages: its ChaCha20-Poly1305 must load")
        // One byte more than the input, so that an empty input still has an address to write at.
        var out = [UInt8](repeating: 0xAA, count: input.count + 1)
        var tag = tag
        let result = out.withUnsafeMutableBufferPointer { o in
            tag.withUnsafeMutableBufferPointer { t in
                ChunkCipher.withOpenSSL(encrypt: encrypt, o.baseAddress!, tag: t.baseAddress!, input, count: input.count, ad, nonce, key)
            }
        }
        return (result, Sealed(bytes: Array(out.dropLast()), tag: tag))
    }

    /// Lengths around a block (64 bytes) and a chunk (64 KiB), associated data of a header MAC's length and others.
    @Test(arguments: [0, 1, 15, 16, 63, 64, 65, 1000, 65_536, 65_553], [0, 32, 100])
    func sameBytesBothWays(length: Int, adLength: Int) throws {
        let plaintext = Self.message(length)
        let ad = Self.message(adLength).reversed().map { $0 }
        let expected = Self.libsodium(plaintext, ad)
        let (sealed, ours) = try Self.openSSL(encrypt: true, plaintext, tag: [UInt8](repeating: 0, count: 16), ad)
        #expect(sealed == 0 && ours.bytes == expected.bytes && ours.tag == expected.tag)
        let (opened, plain) = try Self.openSSL(encrypt: false, expected.bytes, tag: expected.tag, ad)
        #expect(opened == 0 && plain.bytes == plaintext)
    }

    /// Anything changed (a ciphertext bit, the tag, the associated data, the nonce's either part) is refused, and the
    /// output holds zeros, not the plaintext OpenSSL wrote before it checked the tag.
    @Test func aForgeryIsRefusedAndLeavesNoPlaintext() throws {
        let plaintext = Self.message(5000)
        let ad = Self.message(32)
        let good = Self.libsodium(plaintext, ad)
        var flipped = good.bytes
        flipped[4321] ^= 0x10
        var badTag = good.tag
        badTag[0] ^= 1
        var otherPrefix = Self.nonce
        otherPrefix[3] ^= 1
        var otherIndex = Self.nonce
        otherIndex[20] ^= 1
        let cases: [(String, [UInt8], [UInt8], [UInt8], [UInt8])] = [
            ("ciphertext", flipped, good.tag, ad, Self.nonce),
            ("tag", good.bytes, badTag, ad, Self.nonce),
            ("associated data", good.bytes, good.tag, Self.message(31), Self.nonce),
            ("nonce prefix (HChaCha20's input)", good.bytes, good.tag, ad, otherPrefix),
            ("nonce suffix (ChaCha20's)", good.bytes, good.tag, ad, otherIndex),
        ]
        for (what, bytes, tag, ad, nonce) in cases {
            let (result, out) = try Self.openSSL(encrypt: false, bytes, tag: tag, ad, nonce: nonce)
            #expect(result == -1, "\(what)")
            #expect(out.bytes.allSatisfy { $0 == 0 }, "\(what): output zeroed")
        }
    }

    /// A chunk is the same bytes whichever library sealed it, so a file whose pipeline switched to OpenSSL mid-way (once
    /// loaded) opens anywhere, libsodium alone included; and it opens again through the chunk cipher.
    @Test func aChunkIsSealedAsLibsodiumSealsIt() throws {
        loadFasterChunkCipher()
        try #require(ChunkCipher.openSSLReady)
        let plaintext = Self.message(300_000)
        Self.key.withUnsafeBytes { key in
            let cipher = ChunkCipher(key: key.baseAddress!, noncePrefix: Array(Self.nonce[..<16]), associatedData: Self.message(32))
            for index: UInt64 in [0, 1, 1 << 55] {
                for last in [false, true] {
                    var ours = [UInt8](repeating: 0, count: plaintext.count + 16)
                    plaintext.withUnsafeBytes { p in ours.withUnsafeMutableBytes { cipher.seal(p, into: $0.baseAddress!, index: index, last: last) } }
                    let nonce = cipher.nonce(index: index, last: last)
                    let theirs = Self.libsodium(plaintext, Self.message(32), nonce: nonce)
                    #expect(ours == theirs.bytes + theirs.tag, "chunk \(index), last \(last)")
                    var opened = [UInt8](repeating: 0, count: plaintext.count)
                    let ok = ours.withUnsafeBytes { c in
                        opened.withUnsafeMutableBytes { cipher.open(c, into: $0.baseAddress!, index: index, last: last) }
                    }
                    #expect(ok && opened == plaintext)
                }
            }
        }
    }
}
