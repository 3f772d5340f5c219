import Testing

@testable import CofferCrypto

struct KeyWrapTests {
    private func same(_ a: borrowing SecretKey, _ b: borrowing SecretKey) -> Bool {
        a.withUnsafeBytes { x in b.withUnsafeBytes { y in Array(x) == Array(y) } }
    }

    @Test func x25519WrapRoundTrip() throws {
        let alice = try Identity.generate(name: "alice")
        let bob = try Identity.generate(name: "bob")
        let key = SecretKey.random()
        let wrapped = key.wrap(for: alice.publicIdentity)
        #expect(wrapped.encoded.count == 4 + 88)
        #expect(try WrappedKey(encoded: wrapped.encoded) == wrapped)
        let unwrapped = try wrapped.unwrap(with: alice)
        let equal = same(unwrapped, key)
        #expect(equal)
        #expect(throws: CofferCryptoError.notARecipient) { _ = try wrapped.unwrap(with: bob) }
    }

    @Test func symmetricWrapRoundTripAndWrongKEK() throws {
        let kek = SecretKey.random()
        let other = SecretKey.random()
        let key = SecretKey.random()
        let wrapped = key.wrap(under: kek)
        #expect(try WrappedKey(encoded: wrapped.encoded) == wrapped)
        let unwrapped = try wrapped.unwrap(with: kek)
        let equal = same(unwrapped, key)
        #expect(equal)
        #expect(throws: CofferCryptoError.unwrapFailed("wrapped under another key-encryption key")) { _ = try wrapped.unwrap(with: other) }
        guard case .symmetric(let id, let nonce, var ciphertext) = wrapped else {
            Issue.record("not symmetric")
            return
        }
        ciphertext[0] ^= 1
        #expect(throws: CofferCryptoError.unwrapFailed("authentication failed under the key-encryption key")) {
            _ = try WrappedKey.symmetric(kekID: id, nonce: nonce, ciphertext: ciphertext).unwrap(with: kek)
        }
    }

    @Test func addingARecipientLeavesThePayloadAlone() throws {
        // The registry pattern: one payload, data key wrapped per recipient, recipients added later.
        let alice = try Identity.generate(name: "alice")
        let carol = try Identity.generate(name: "carol")
        let dataKey = SecretKey.random()
        let sink = MemorySink()
        _ = try SealedFile.seal(from: MemorySource(testBytes(5000)), to: sink, dataKey: dataKey, stanzas: [], chunkSize: Fixtures.chunk)
        let forCarol = dataKey.wrap(for: carol.publicIdentity)
        let recovered = try forCarol.unwrap(with: carol)
        let source = MemorySource(sink.bytes)
        let (header, length) = try SealedFileHeader.read(from: source)
        let out = MemorySink()
        _ = try SealedFile.openPayload(from: source, to: out, header: header, headerLength: length, dataKey: recovered)
        #expect(out.bytes == testBytes(5000))
        #expect(throws: CofferCryptoError.notARecipient) { _ = try forCarol.unwrap(with: alice) }
    }

    @Test func unknownStanzaTypesRoundTrip() throws {
        let stanza = WrappedKey.unknown(type: 0x7f, body: [1, 2, 3])
        #expect(try WrappedKey(encoded: stanza.encoded) == stanza)
        #expect(throws: CofferCryptoError.malformedHeader("x25519 stanza is 3 bytes, expected 88")) {
            _ = try WrappedKey(encoded: [0x01, 0, 3, 0, 1, 2, 3])
        }
    }
}
