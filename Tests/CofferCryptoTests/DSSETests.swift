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

    @Test func repeatedMemberNamesAreFound() throws {
        let cases: [(String, String?)] = [
            (#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#, nil),  // the same name in different objects
            (#"{"a":1,"a":2}"#, "a"),
            (#"{"x":{"y":[1,{"k":"v","k":"w"}]}}"#, "k"),
            (#"{"a\u0062":1,"ab":2}"#, "ab"),  // an escape spelling the same name
            (#"{"\ud83d\ude00":1,"😀":2}"#, "😀"),  // a surrogate pair
            ("{\"\u{e9}\":1,\"e\u{301}\":2}", "\u{e9}"),  // canonically equivalent: one key to JSONDecoder
            (#"{"v":"a\",\"v\":","w":1}"#, nil),  // an escaped quote inside a value
            (#"["a","a"]"#, nil),
            (#"{"a":1,"#, nil),  // not JSON: no finding, and no crash
        ]
        for (json, repeated) in cases { #expect(try AmbiguousJSON.firstRepeatedName(in: Array(json.utf8)) == repeated, "\(json)") }
        // A member name parsers would read differently (repaired or refused) is refused.
        for name in [#"\u12"#, #"\ud800"#, #"a\qb"#] {
            let reason = AmbiguousJSON.reason(in: Array(#"{"\#(name)":1}"#.utf8))
            #expect(reason?.hasPrefix("a member name that is not a valid JSON string") == true, "\(name): \(reason ?? "accepted")")
        }
        #expect(AmbiguousJSON.reason(in: [0x7B, 0x22, 0xC3, 0x28, 0x22, 0x3A, 0x31, 0x7D]) != nil, "a name that is not UTF-8")
    }

    /// A statement that reads one way to Coffer (JSONDecoder keeps the first value) and another to Python (the last) is
    /// refused, even under a valid signature.
    @Test func aSignedStatementWithARepeatedMemberIsRefused() throws {
        let alice = try Identity.generate(name: "alice")
        let text = String(decoding: statement().jsonBytes, as: UTF8.self).replacingOccurrences(
            of: #""epsilon":2.5"#,
            with: #""epsilon":2.5,"epsilon":100"#
        )
        let envelope = DSSEEnvelope.sign(payload: Array(text.utf8), identity: alice)
        let (_, body) = try DSSEEnvelope(jsonBytes: envelope.jsonBytes).verify(trusting: [alice.publicIdentity])
        let repeated = try #require(AmbiguousJSON.reason(in: body))
        #expect(repeated.contains("\"epsilon\" appears twice"))
        #expect(throws: CofferCryptoError.malformedStatement(repeated)) { _ = try InTotoStatement(jsonBytes: body) }
        let doubled = String(decoding: envelope.jsonBytes, as: UTF8.self).replacingOccurrences(
            of: #""payloadType":"#,
            with: #""payloadType":"x","payloadType":"#
        )
        #expect(throws: CofferCryptoError.malformedEnvelope(AmbiguousJSON.reason(in: Array(doubled.utf8))!)) {
            _ = try DSSEEnvelope(jsonBytes: Array(doubled.utf8))
        }
        let named = try #require(AmbiguousJSON.reason(in: Array(#"{"a\nb":1,"a\nb":2}"#.utf8)))
        #expect(!named.contains("\n"), "one line whatever the name holds")
    }

    /// UTF-16 JSON: JSONDecoder and Python read it, and a UTF-8 scan would lose track of its strings (U+0122 is the
    /// bytes 22 01 in UTF-16LE, a quote to UTF-8). Refused whatever it holds.
    @Test func jsonInUTF16IsRefused() throws {
        let text = #"{"a":1,"x":"Ģ","a":2}"#
        for encoding in [String.Encoding.utf16LittleEndian, .utf16BigEndian, .utf16, .utf32] {
            let bytes = Array(try #require(text.data(using: encoding)))
            #expect(AmbiguousJSON.reason(in: bytes) == "JSON that is not UTF-8 (UTF-16 and UTF-32 are refused)", "\(encoding)")
            #expect(throws: CofferCryptoError.self) { _ = try InTotoStatement(jsonBytes: bytes) }
        }
        #expect(AmbiguousJSON.reason(in: Array(#"{"a":"\u0000"}"#.utf8)) == nil, "an escaped NUL is UTF-8 JSON")
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
