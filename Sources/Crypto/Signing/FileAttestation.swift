public import Foundation

/// Signed statements about plain files: an in-toto Statement v1 in a DSSE envelope (docs/FORMAT.md, "Attestations").
///
/// ```swift
/// let envelope = try FileAttestation.sign(files: ["model.safetensors"], identity: alice)
/// let statement = try FileAttestation.verify(envelope, trusting: [alice.publicIdentity], files: ["model.safetensors"])
/// ```
public enum FileAttestation {
    public static let predicateType = "https://coffer.dev/attestation/files/v1"

    /// Hashes each file (streaming SHA-256) and signs a statement naming them, with the signer and time as predicate.
    public static func sign(files: [String], identity: borrowing Identity, now: Date = Date()) throws(CofferCryptoError) -> DSSEEnvelope {
        var subjects: [InTotoStatement.Subject] = []
        for path in files {
            subjects.append(.init(name: path, digest: ["sha256": Digest.hex(try Digest.sha256(file: path))]))
        }
        let predicate = JSONValue.object([
            "created": .string(Timestamp.string(now, milliseconds: false)),
            "signer": .object(["name": .string(identity.publicIdentity.name), "id": .string(identity.publicIdentity.keyID)]),
        ])
        let statement = InTotoStatement(subject: subjects, predicateType: predicateType, predicate: predicate)
        return DSSEEnvelope.sign(payload: statement.jsonBytes, identity: identity)
    }

    /// Verifies the signature against `trusted`, then that each of `files` is a subject with a matching SHA-256.
    public static func verify(
        _ envelope: DSSEEnvelope,
        trusting trusted: [PublicIdentity],
        files: [String]
    ) throws(CofferCryptoError)
        -> (signer: PublicIdentity, statement: InTotoStatement)
    {
        let (signer, payload) = try envelope.verify(trusting: trusted)
        guard envelope.payloadType == DSSEEnvelope.inTotoPayloadType else {
            throw .malformedEnvelope("payloadType is '\(envelope.payloadType)', expected \(DSSEEnvelope.inTotoPayloadType)")
        }
        let statement = try InTotoStatement(jsonBytes: payload)
        for path in files {
            guard let subject = statement.subject.first(where: { $0.name == path }) else {
                throw .subjectMismatch("\(path) is not a subject of the statement")
            }
            guard subject.digest["sha256"] == Digest.hex(try Digest.sha256(file: path)) else {
                throw .subjectMismatch("\(path) does not match its signed SHA-256")
            }
        }
        return (signer, statement)
    }
}
