import Foundation
import Testing

@testable import CofferCrypto

struct DSSETests {
    private func statement() -> InTotoStatement {
        InTotoStatement(
            subject: [.init(name: "model.safetensors", digest: ["sha256": String(repeating: "ab", count: 32)])],
            predicateType: "https://coffer.dev/attestation/model/v1",
            predicate: .object(["epsilon": .number(2.5), "steps": .number(14062), "name": .string("demo")])
        )
    }

    @Test func signAndVerify() throws {
        let alice = try Identity.generate(name: "alice")
        let payload = statement().jsonBytes
        let envelope = DSSEEnvelope.sign(payload: payload, identity: alice)
        #expect(envelope.payloadType == "application/vnd.in-toto+json")
        let parsed = try DSSEEnvelope(jsonBytes: envelope.jsonBytes)
        let (signer, body) = try parsed.verify(trusting: [alice.publicIdentity])
        #expect(signer == alice.publicIdentity)
        #expect(try InTotoStatement(jsonBytes: body) == statement())
        #expect(String(decoding: body, as: UTF8.self).contains("\"steps\":14062"))
    }

    @Test func tamperedPayloadOrTypeFails() throws {
        let alice = try Identity.generate(name: "alice")
        var envelope = DSSEEnvelope.sign(payload: statement().jsonBytes, identity: alice)
        var other = statement()
        other.predicate = .object(["epsilon": .number(0.1)])
        envelope.payload = Data(other.jsonBytes).base64EncodedString()
        #expect(throws: CofferCryptoError.signatureInvalid(keyID: alice.publicIdentity.keyID)) {
            _ = try envelope.verify(trusting: [alice.publicIdentity])
        }
        var retyped = DSSEEnvelope.sign(payload: statement().jsonBytes, identity: alice)
        retyped.payloadType = "application/json"
        #expect(throws: CofferCryptoError.signatureInvalid(keyID: alice.publicIdentity.keyID)) {
            _ = try retyped.verify(trusting: [alice.publicIdentity])
        }
    }

    @Test func untrustedSignerIsRefused() throws {
        let alice = try Identity.generate(name: "alice")
        let bob = try Identity.generate(name: "bob")
        let envelope = DSSEEnvelope.sign(payload: statement().jsonBytes, identity: alice)
        #expect(throws: CofferCryptoError.untrustedSigner(keyID: alice.publicIdentity.keyID)) {
            _ = try envelope.verify(trusting: [bob.publicIdentity])
        }
    }

    @Test func forgedKeyIDDoesNotHelp() throws {
        // Mallory signs but claims Alice's key ID: verification uses Alice's key and fails.
        let alice = try Identity.generate(name: "alice")
        let mallory = try Identity.generate(name: "mallory")
        var envelope = DSSEEnvelope.sign(payload: statement().jsonBytes, identity: mallory)
        envelope.signatures[0].keyid = alice.publicIdentity.keyID
        #expect(throws: CofferCryptoError.signatureInvalid(keyID: alice.publicIdentity.keyID)) {
            _ = try envelope.verify(trusting: [alice.publicIdentity])
        }
    }

    @Test func malformedInputsNameTheProblem() {
        #expect(throws: CofferCryptoError.self) { _ = try DSSEEnvelope(jsonBytes: Array("[]".utf8)) }
        #expect(throws: CofferCryptoError.malformedStatement("no subjects")) {
            _ = try InTotoStatement(
                jsonBytes: Array(#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"x","predicate":{}}"#.utf8)
            )
        }
        #expect(throws: CofferCryptoError.malformedStatement("_type is 'x', expected https://in-toto.io/Statement/v1")) {
            _ = try InTotoStatement(
                jsonBytes: Array(#"{"_type":"x","subject":[{"name":"a","digest":{"sha256":"00"}}],"predicateType":"x","predicate":{}}"#.utf8)
            )
        }
    }
}
