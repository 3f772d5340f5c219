import CSodium
public import CofferCrypto
import Foundation

/// A message and its sender's Ed25519 signature: every request a site sends and every answer the coordinator gives.
///
/// Over HTTP the payload is the body and the signature travels in the `Coffer-Signature` header as `KEY_ID BASE64`.
/// The signature covers `"coffer/fl/v1/message-digest" || BLAKE2b-512(payload)`; the payload names the session, round,
/// stage and site, so a message replayed into another round, stage or session, or claimed by another site, is refused
/// by its reader.
///
/// ```swift
/// let signed = SignedMessage.sign(MessageCoding.encode(poll, as: .binary), by: identity)
/// try signed.verify(by: coordinatorPublic)
/// ```
public struct SignedMessage: Sendable, Equatable {
    public var payload: [UInt8]
    /// Key ID of the signer.
    public var signer: String
    public var signature: [UInt8]

    public static let header = "Coffer-Signature"
    static let label = Array("coffer/fl/v1/message-digest".utf8)

    /// What the signature covers: the label, then BLAKE2b-512 of the payload. Ed25519 would hash a ~1 MB masked vector
    /// with SHA-512 twice to sign it and once to verify it; one BLAKE2b pass is a fraction of that (docs/FORMAT.md).
    static func signedBytes(_ payload: [UInt8]) -> [UInt8] {
        var signed = label + [UInt8](repeating: 0, count: 64)
        signed.withUnsafeMutableBufferPointer { out in
            _ = crypto_generichash(out.baseAddress! + label.count, 64, payload, UInt64(payload.count), nil, 0)
        }
        return signed
    }

    public init(payload: [UInt8], signer: String, signature: [UInt8]) {
        self.payload = payload
        self.signer = signer
        self.signature = signature
    }

    public static func sign(_ payload: [UInt8], by identity: borrowing Identity) -> SignedMessage {
        SignedMessage(payload: payload, signer: identity.publicIdentity.keyID, signature: identity.signEd25519(signedBytes(payload)))
    }

    /// Checks the signature against `identity`, which must be the one the message names.
    public func verify(by identity: PublicIdentity) throws(FederatedError) {
        guard signer == identity.keyID else { throw .signatureInvalid("the message is signed by \(signer), expected \(identity.keyID)") }
        guard SignatureVerifier.verifyEd25519(signature: signature, message: Self.signedBytes(payload), publicKey: identity.ed25519) else {
            throw .signatureInvalid("the message claiming to be from \(signer) was not signed by it (or was altered)")
        }
    }

    /// The `Coffer-Signature` header value.
    public var headerValue: String { "\(signer) \(Data(signature).base64EncodedString())" }

    /// Parses a body and its `Coffer-Signature` header.
    public init(payload: [UInt8], headerValue: String?) throws(FederatedError) {
        guard let headerValue else { throw .signatureInvalid("the request has no \(Self.header) header") }
        let parts = headerValue.split(separator: " ")
        guard parts.count == 2, let signature = Data(base64Encoded: String(parts[1])), signature.count == 64,
            parts[0].count == 32, parts[0].allSatisfy(\.isHexDigit)
        else { throw .signatureInvalid("the \(Self.header) header is not 'KEY_ID BASE64-SIGNATURE'") }
        self.init(payload: payload, signer: String(parts[0]), signature: Array(signature))
    }
}
