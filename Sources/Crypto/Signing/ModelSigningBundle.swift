import Foundation

/// An OpenSSF model-signing v1.0 signature (`model.sig`): a Sigstore bundle v0.3 whose DSSE envelope
/// carries an in-toto statement about a model directory, signed with ECDSA P-256 (docs/FORMAT.md).
///
/// `model_signing verify key DIR --signature DIR/model.sig --public_key NAME.pem` (PyPI model-signing 1.1)
/// accepts a directory holding exactly the files named here.
public enum ModelSigningBundle {
    public static let mediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
    public static let predicateType = "https://model_signing/signature/v1.0"

    /// A file of the model: its path relative to the model directory and the SHA-256 of its contents.
    public struct Resource: Sendable, Equatable {
        public var name: String
        public var sha256: [UInt8]

        public init(name: String, sha256: [UInt8]) {
            self.name = name
            self.sha256 = sha256
        }
    }

    /// The statement: one subject named `modelName` whose digest is SHA-256 over the files' raw digests in path order.
    static func statement(modelName: String, resources: [Resource]) -> InTotoStatement {
        let sorted = resources.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        let digest = Digest.sha256(sorted.flatMap(\.sha256))
        let predicate = JSONValue.object([
            "serialization": .object([
                "method": .string("files"), "hash_type": .string("sha256"), "allow_symlinks": .bool(false),
                "ignore_paths": .array([".github", ".git", ".gitattributes", ".gitignore"].map { .string($0) }),
            ]),
            "resources": .array(
                sorted.map { .object(["name": .string($0.name), "digest": .string(Digest.hex($0.sha256)), "algorithm": .string("sha256")]) }
            ),
        ])
        return InTotoStatement(
            subject: [.init(name: modelName, digest: ["sha256": Digest.hex(digest)])],
            predicateType: predicateType,
            predicate: predicate
        )
    }

    /// Signs the bundle for `resources` with `identity`'s P-256 key and returns its JSON bytes.
    public static func sign(modelName: String, resources: [Resource], identity: borrowing Identity) throws(CofferCryptoError) -> [UInt8] {
        let payload = statement(modelName: modelName, resources: resources).jsonBytes
        let signature = identity.signP256(DSSEEnvelope.pae(payloadType: DSSEEnvelope.inTotoPayloadType, payload: payload))
        return try encode(payload: payload, signature: signature, publicKey: identity.publicIdentity.p256)
    }

    /// The bundle's bytes, exactly as Coffer writes them (sorted keys, no escaped slashes).
    static func encode(payload: [UInt8], signature: [UInt8], publicKey: [UInt8]) throws(CofferCryptoError) -> [UInt8] {
        let pem = try SignatureVerifier.p256PEM(publicKey: publicKey)
        let bundle = JSONValue.object([
            "mediaType": .string(mediaType),
            "verificationMaterial": .object([
                "publicKey": .object(["hint": .string(Digest.hex(Digest.sha256(Array(pem.utf8))))]), "tlogEntries": .array([]),
            ]),
            "dsseEnvelope": .object([
                "payload": .string(Data(payload).base64EncodedString()), "payloadType": .string(DSSEEnvelope.inTotoPayloadType),
                "signatures": .array([.object(["sig": .string(Data(signature).base64EncodedString()), "keyid": .string("")])]),
            ]),
        ])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(bundle))
    }

    /// Verifies a bundle's signature with a SEC1 P-256 public key and returns the resources it names.
    ///
    /// - Parameter exact: also require the bytes to be exactly those Coffer writes for this payload and signature,
    ///   so that no unsigned field (the key hint, the empty transparency-log list, a key name) can be edited unseen.
    public static func verify(_ bundle: [UInt8], publicKey: [UInt8], exact: Bool = false) throws(CofferCryptoError) -> [Resource] {
        if let reason = AmbiguousJSON.reason(in: bundle) { throw .malformedEnvelope(reason) }
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(bundle)), json["mediaType"]?.stringValue == mediaType,
            let envelope = json["dsseEnvelope"], let payloadText = envelope["payload"]?.stringValue,
            let payload = Data(base64Encoded: payloadText), envelope["payloadType"]?.stringValue == DSSEEnvelope.inTotoPayloadType,
            case .array(let signatures)? = envelope["signatures"], let first = signatures.first, let sigText = first["sig"]?.stringValue,
            let signature = Data(base64Encoded: sigText)
        else { throw .malformedEnvelope("not a model-signing bundle") }
        let message = DSSEEnvelope.pae(payloadType: DSSEEnvelope.inTotoPayloadType, payload: Array(payload))
        guard SignatureVerifier.verifyP256(derSignature: Array(signature), message: message, publicKey: publicKey) else {
            throw .signatureInvalid(keyID: "model-signing P-256 key")
        }
        if exact, try encode(payload: Array(payload), signature: Array(signature), publicKey: publicKey) != bundle {
            throw .malformedEnvelope("the bundle's unsigned fields were changed")
        }
        let statement = try InTotoStatement(jsonBytes: Array(payload))
        guard statement.predicateType == predicateType, case .array(let items)? = statement.predicate["resources"] else {
            throw .malformedStatement("not a model-signing statement")
        }
        var resources: [Resource] = []
        for item in items {
            guard let name = item["name"]?.stringValue, let hex = item["digest"]?.stringValue, let digest = Digest.bytes(fromHex: hex) else {
                throw .malformedStatement("a resource lacks its name or digest")
            }
            resources.append(Resource(name: name, sha256: digest))
        }
        guard statement.subject.count == 1, statement.subject[0].digest["sha256"] == Digest.hex(Digest.sha256(resources.flatMap(\.sha256))) else {
            throw .malformedStatement("the subject digest does not cover the resources")
        }
        return resources
    }
}
