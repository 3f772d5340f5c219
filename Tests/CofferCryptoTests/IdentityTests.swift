import Foundation
import Testing

@testable import CofferCrypto

struct IdentityTests {
    /// Cheap Argon2id parameters: these tests exercise the file format, not the cost.
    static let fast = KDFParameters(opsLimit: 1, memLimit: 8192)

    @Test func keyFileRoundTrip() throws {
        let alice = try Identity.generate(name: "alice")
        let file = try alice.encrypt(passphrase: passphrase("correct horse"), parameters: Self.fast)
        let again = try Identity.decrypt(keyFile: file, passphrase: passphrase("correct horse"))
        #expect(again.publicIdentity == alice.publicIdentity)
        #expect(again.signEd25519([1, 2, 3]) == alice.signEd25519([1, 2, 3]))
        #expect(try Identity.publicIdentity(ofKeyFile: file) == alice.publicIdentity)
    }

    @Test func defaultParametersAreRecordedInTheFile() throws {
        let alice = try Identity.generate(name: "alice")
        let file = try alice.encrypt(passphrase: passphrase("pw"))
        var reader = ByteReader(Array(file[12..<28]), shortInput: .notACofferFile)
        #expect(try reader.readUInt64() == KDFParameters.default.opsLimit)
        #expect(try reader.readUInt64() == KDFParameters.default.memLimit)
    }

    @Test(
        arguments: [
            ("password1", "shorter than 12 characters"),
            ("aaaaaaaaaaaaaaaaaaaa", "fewer than 6 different characters"),
            ("abababcdcdcd", "fewer than 6 different characters"),
            ("123456789012", "about 39 bits by its length and character classes, under 48"),
            ("correcthorse", nil),
            ("test passphrase", nil),
            ("Tr0ub4dor&3xyz", nil),
        ] as [(String, String?)]
    )
    func weakPassphrasesAreNamedWithTheRuleTheyBreak(text: String, weakness: String?) {
        #expect(Passphrase.weakness(passphrase(text)) == weakness)
    }

    @Test func wrongPassphraseFailsWithItsMessage() throws {
        let alice = try Identity.generate(name: "alice")
        let file = try alice.encrypt(passphrase: passphrase("right"), parameters: Self.fast)
        #expect(throws: CofferCryptoError.wrongPassphrase) { _ = try Identity.decrypt(keyFile: file, passphrase: passphrase("wrong")) }
        #expect(CofferCryptoError.wrongPassphrase.description == "wrong passphrase (or the identity file was modified)")
    }

    @Test func everyByteOfTheKeyFileIsProtected() throws {
        let alice = try Identity.generate(name: "alice")
        let file = try alice.encrypt(passphrase: passphrase("pw"), parameters: Self.fast)
        // Skip the cost parameters (bytes 12..<28): raising them only makes the check slow, and it still fails.
        for index in file.indices where !(12..<28).contains(index) {
            var tampered = file
            tampered[index] ^= 0x40
            #expect(throws: CofferCryptoError.self, "byte \(index)") { _ = try Identity.decrypt(keyFile: tampered, passphrase: passphrase("pw")) }
        }
    }

    @Test func otherFilesAreNotIdentities() {
        #expect(throws: CofferCryptoError.notAnIdentityFile("x.key")) {
            _ = try Identity.decrypt(keyFile: Array("hello".utf8), passphrase: passphrase("pw"), path: "x.key")
        }
    }

    @Test func excessiveCostParametersAreRefused() throws {
        let alice = try Identity.generate(name: "alice")
        var file = try alice.encrypt(passphrase: passphrase("pw"), parameters: Self.fast)
        file[27] = 0x7f  // memlimit ~ 2^62 bytes
        #expect(throws: CofferCryptoError.malformedIdentity("identity asks for Argon2id parameters outside the accepted limits")) {
            _ = try Identity.decrypt(keyFile: file, passphrase: passphrase("pw"))
        }
    }

    @Test func publicIdentityFileRoundTripAndChecksItsID() throws {
        let alice = try Identity.generate(name: "alice")
        let bytes = alice.publicIdentity.jsonBytes
        #expect(try PublicIdentity(jsonBytes: bytes) == alice.publicIdentity)
        var text = String(decoding: bytes, as: UTF8.self)
        text = text.replacingOccurrences(of: alice.publicIdentity.keyID, with: String(repeating: "0", count: 32))
        #expect(throws: CofferCryptoError.self) { _ = try PublicIdentity(jsonBytes: Array(text.utf8)) }
        #expect(throws: CofferCryptoError.self) { _ = try PublicIdentity(jsonBytes: Array("{}".utf8)) }
    }

    @Test(arguments: ["", "a/b", "../x", "..", "x y", String(repeating: "a", count: 65)])
    func invalidNamesAreRefused(name: String) {
        #expect(throws: CofferCryptoError.invalidName(name)) { _ = try Identity.generate(name: name) }
    }

    @Test func p256SignaturesVerifyAndPEMParses() throws {
        let alice = try Identity.generate(name: "alice")
        let message = Array("model".utf8)
        let signature = alice.signP256(message)
        #expect(SignatureVerifier.verifyP256(derSignature: signature, message: message, publicKey: alice.publicIdentity.p256))
        #expect(!SignatureVerifier.verifyP256(derSignature: signature, message: [0], publicKey: alice.publicIdentity.p256))
        let pem = try SignatureVerifier.p256PEM(publicKey: alice.publicIdentity.p256)
        #expect(pem.hasPrefix("-----BEGIN PUBLIC KEY-----"))
    }

    @Test func secureBytesCompareInConstantTimeAndSlice() {
        let a = passphrase("abcdef")
        let b = passphrase("abcdef")
        let c = passphrase("abcdeg")
        let ab = a.constantTimeEquals(b)
        let ac = a.constantTimeEquals(c)
        let sliced = a.slice(1..<3).constantTimeEquals(passphrase("bc"))
        #expect(ab)
        #expect(!ac)
        #expect(sliced)
    }
}
