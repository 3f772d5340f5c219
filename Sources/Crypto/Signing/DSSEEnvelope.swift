import Foundation

/// A DSSE v1 envelope (https://github.com/secure-systems-lab/dsse), signed with Ed25519.
///
/// The signature covers PAE(payloadType, payload) =
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII decimal.
///
/// ```swift
/// let envelope = DSSEEnvelope.sign(payload: statementBytes, payloadType: DSSEEnvelope.inTotoPayloadType, identity: alice)
/// let verified = try envelope.verify(trusting: [alice.publicIdentity])
/// ```
public struct DSSEEnvelope: Sendable, Equatable, Codable {
    public static let inTotoPayloadType = "application/vnd.in-toto+json"

    public struct Signature: Sendable, Equatable, Codable {
        public var keyid: String
        /// Base64 (standard alphabet, padded) of the signature bytes.
        public var sig: String

        public init(keyid: String, sig: String) {
            self.keyid = keyid
            self.sig = sig
        }
    }

    public var payloadType: String
    /// Base64 (standard alphabet, padded) of the payload bytes.
    public var payload: String
    public var signatures: [Signature]

    public init(payloadType: String, payload: String, signatures: [Signature]) {
        self.payloadType = payloadType
        self.payload = payload
        self.signatures = signatures
    }

    /// The pre-authentication encoding that is signed.
    public static func pae(payloadType: String, payload: [UInt8]) -> [UInt8] {
        let type = Array(payloadType.utf8)
        return Array("DSSEv1 \(type.count) ".utf8) + type + Array(" \(payload.count) ".utf8) + payload
    }

    /// Signs `payload` with `identity`'s Ed25519 key; the signature's `keyid` is the identity's key ID.
    public static func sign(payload: [UInt8], payloadType: String = inTotoPayloadType, identity: borrowing Identity) -> DSSEEnvelope {
        let signature = identity.signEd25519(pae(payloadType: payloadType, payload: payload))
        return DSSEEnvelope(
            payloadType: payloadType,
            payload: Data(payload).base64EncodedString(),
            signatures: [Signature(keyid: identity.publicIdentity.keyID, sig: Data(signature).base64EncodedString())]
        )
    }

    /// The decoded payload bytes.
    public func payloadBytes() throws(CofferCryptoError) -> [UInt8] {
        guard let data = Data(base64Encoded: payload) else { throw .malformedEnvelope("payload is not base64") }
        return Array(data)
    }

    /// Verifies that a signer in `trusted` signed this envelope.
    ///
    /// - Returns: the signer and the payload bytes, which are only trustworthy once this returns.
    /// - Throws: ``CofferCryptoError/untrustedSigner(keyID:)`` when no signature is by a trusted key,
    ///   ``CofferCryptoError/signatureInvalid(keyID:)`` when a trusted key's signature does not verify.
    public func verify(trusting trusted: [PublicIdentity]) throws(CofferCryptoError) -> (signer: PublicIdentity, payload: [UInt8]) {
        guard !signatures.isEmpty else { throw .malformedEnvelope("no signatures") }
        let body = try payloadBytes()
        let message = Self.pae(payloadType: payloadType, payload: body)
        var invalid: String? = nil
        for signature in signatures {
            guard let signer = trusted.first(where: { $0.keyID == signature.keyid }) else { continue }
            guard let sig = Data(base64Encoded: signature.sig),
                SignatureVerifier.verifyEd25519(signature: Array(sig), message: message, publicKey: signer.ed25519)
            else {
                invalid = signature.keyid
                continue
            }
            return (signer, body)
        }
        if let invalid { throw .signatureInvalid(keyID: invalid) }
        throw .untrustedSigner(keyID: signatures[0].keyid)
    }

    /// The envelope as JSON (keys sorted).
    public var jsonBytes: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(self))
    }

    public init(jsonBytes: [UInt8]) throws(CofferCryptoError) {
        // JSONValue's own parser, as for statements (see ``JSONValue/init(parsing:)``).
        let notAnEnvelope = CofferCryptoError.malformedEnvelope("not a DSSE envelope (expected JSON with payloadType, payload, signatures)")
        let tree: JSONValue
        do { tree = try JSONValue(parsing: jsonBytes) } catch { throw error.repeatedName == nil ? notAnEnvelope : .malformedEnvelope(error.reason) }
        guard case .object(let fields) = tree, let payloadType = fields["payloadType"]?.stringValue,
            let payload = fields["payload"]?.stringValue, let listed = fields["signatures"]?.arrayValue
        else { throw notAnEnvelope }
        var signatures: [Signature] = []
        for item in listed {
            guard let keyid = item["keyid"]?.stringValue, let sig = item["sig"]?.stringValue else { throw notAnEnvelope }
            signatures.append(Signature(keyid: keyid, sig: sig))
        }
        self.init(payloadType: payloadType, payload: payload, signatures: signatures)
    }
}
