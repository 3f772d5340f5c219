import Testing

@testable import CofferCrypto

/// Published test vectors, run through the code paths Coffer uses.
struct KnownAnswerTests {
    /// RFC 8032 section 7.1, tests 1 and 2: Ed25519 from a seed.
    @Test(arguments: [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        ),
    ])
    func ed25519RFC8032(seed: String, publicKey: String, message: String, signature: String) throws {
        let secrets = SecureBytes(count: 96)
        secrets.withUnsafeMutableBytes { out in
            for (i, byte) in hex(seed).enumerated() { out[i] = byte }
            out[64 + 31] = 1  // a valid P-256 scalar; irrelevant to Ed25519
        }
        let identity = try Identity(name: "rfc8032", secrets: secrets)
        #expect(identity.publicIdentity.ed25519 == hex(publicKey))
        #expect(identity.signEd25519(hex(message)) == hex(signature))
        #expect(SignatureVerifier.verifyEd25519(signature: hex(signature), message: hex(message), publicKey: hex(publicKey)))
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    @Test func xchacha20Poly1305Draft() throws {
        let plaintext = Array(
            "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8
        )
        let ad = hex("50515253c0c1c2c3c4c5c6c7")
        let key = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
        let nonce = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
        let expected = hex(
            """
            bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
            2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e
            c0875924c1c7987947deafd8780acf49
            """
        )
        var sealed = [UInt8](repeating: 0, count: plaintext.count + 16)
        key.withUnsafeBytes { k in
            plaintext.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes {
                    XChaCha20Poly1305.encrypt(p, into: $0.baseAddress!, associatedData: ad, nonce: nonce, key: k.baseAddress!)
                }
            }
        }
        #expect(sealed == expected)
        var opened = [UInt8](repeating: 0, count: plaintext.count)
        let ok = key.withUnsafeBytes { k in
            sealed.withUnsafeBytes { c in
                opened.withUnsafeMutableBytes {
                    XChaCha20Poly1305.decrypt(c, into: $0.baseAddress!, associatedData: ad, nonce: nonce, key: k.baseAddress!)
                }
            }
        }
        #expect(ok)
        #expect(opened == plaintext)
    }

    /// The PAE example of the DSSE v1 protocol document.
    @Test func dssePAEExample() {
        let pae = DSSEEnvelope.pae(payloadType: "http://example.com/HelloWorld", payload: Array("hello world".utf8))
        #expect(String(decoding: pae, as: UTF8.self) == "DSSEv1 29 http://example.com/HelloWorld 11 hello world")
    }

    /// FIPS 180-2 "abc" through the streaming hasher, split across updates.
    @Test func sha256Streaming() {
        var hasher = StreamingSHA256(seed: Array("a".utf8))
        Array("bc".utf8).withUnsafeBytes { hasher.update($0) }
        #expect(Digest.hex(hasher.finalize()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
