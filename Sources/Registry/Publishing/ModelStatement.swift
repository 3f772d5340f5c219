public import CofferCrypto

/// The signed description of a version: an in-toto statement with Coffer's model predicate (docs/FORMAT.md).
public struct ModelStatement: Sendable, Equatable {
    public static let predicateType = "https://coffer.dev/attestation/model/v1"

    public struct File: Sendable, Equatable, Codable {
        public var path: String
        public var size: Int
        public var plaintextSHA256: String
        public var sealedSHA256: String
        public var sealedSize: Int
    }

    public struct Lineage: Sendable, Equatable {
        public var parent: String?
        public var datasetID: String?
        public var datasetDigest: String?
        public var trainingConfigDigest: String?
    }

    public var model: String
    public var version: String
    public var files: [File]
    public var privacy: PrivacyMetadata
    public var lineage: Lineage
    public var chunkSize: Int
    public var created: String
    public var publisherName: String
    public var publisherKeyID: String
    public var message: String?

    /// The statement JSON that is signed.
    public var statement: InTotoStatement {
        func s(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
        let predicate = JSONValue.object([
            "model": .string(model),
            "version": .string(version),
            "privacy": privacy.json,
            "lineage": .object([
                "parent": s(lineage.parent), "dataset_id": s(lineage.datasetID), "dataset_digest": s(lineage.datasetDigest),
                "training_config_digest": s(lineage.trainingConfigDigest),
            ]),
            "encryption": .object([
                "format": .string("coffer-sealed-v1"),
                "chunk_size": .number(Double(chunkSize)),
                "key_wrapping": .string("x25519-sealed-box"),
                "files": .array(
                    files.map {
                        .object([
                            "path": .string($0.path), "sealed_sha256": .string($0.sealedSHA256), "sealed_size": .number(Double($0.sealedSize)),
                            "size": .number(Double($0.size)),
                        ])
                    }
                ),
            ]),
            "created": .string(created),
            "publisher": .object(["name": .string(publisherName), "key_id": .string(publisherKeyID)]),
            "message": s(message),
        ])
        return InTotoStatement(
            subject: files.map { .init(name: $0.path, digest: ["sha256": $0.plaintextSHA256]) },
            predicateType: Self.predicateType,
            predicate: predicate
        )
    }

    /// Reads a verified statement back.
    public init(_ statement: InTotoStatement) throws(CofferRegistryError) {
        let p = statement.predicate
        guard statement.predicateType == Self.predicateType, let model = p["model"]?.stringValue, let version = p["version"]?.stringValue,
            case .object(let privacy)? = p["privacy"], case .object(let encryption)? = p["encryption"],
            case .array(let sealed)? = encryption["files"], let chunk = encryption["chunk_size"]?.integerValue, chunk > 0,
            let created = p["created"]?.stringValue, let publisher = p["publisher"], let publisherName = publisher["name"]?.stringValue,
            let publisherKeyID = publisher["key_id"]?.stringValue
        else { throw .tampered("the signed statement is not a Coffer model statement") }
        var files: [File] = []
        for (subject, entry) in zip(statement.subject, sealed) {
            guard let digest = subject.digest["sha256"], entry["path"]?.stringValue == subject.name,
                let sealedDigest = entry["sealed_sha256"]?.stringValue, let sealedSize = entry["sealed_size"]?.integerValue, sealedSize >= 0,
                let size = entry["size"]?.integerValue, size >= 0
            else { throw .tampered("the signed statement's file list is inconsistent") }
            files.append(File(path: subject.name, size: size, plaintextSHA256: digest, sealedSHA256: sealedDigest, sealedSize: sealedSize))
        }
        guard files.count == statement.subject.count, files.count == sealed.count else {
            throw .tampered("the signed statement's file list is inconsistent")
        }
        self.model = model
        self.version = version
        self.files = files
        self.privacy = try PrivacyMetadata(json: privacy, source: "signed statement")
        let lineage = p["lineage"]
        self.lineage = Lineage(
            parent: lineage?["parent"]?.stringValue,
            datasetID: lineage?["dataset_id"]?.stringValue,
            datasetDigest: lineage?["dataset_digest"]?.stringValue,
            trainingConfigDigest: lineage?["training_config_digest"]?.stringValue
        )
        self.chunkSize = chunk
        self.created = created
        self.publisherName = publisherName
        self.publisherKeyID = publisherKeyID
        self.message = p["message"]?.stringValue
    }

    init(
        model: String,
        version: String,
        files: [File],
        privacy: PrivacyMetadata,
        lineage: Lineage,
        chunkSize: Int,
        created: String,
        publisher: PublicIdentity,
        message: String?
    ) {
        self.model = model
        self.version = version
        self.files = files
        self.privacy = privacy
        self.lineage = lineage
        self.chunkSize = chunkSize
        self.created = created
        self.publisherName = publisher.name
        self.publisherKeyID = publisher.keyID
        self.message = message
    }
}
