import CofferCrypto
import Foundation

/// How a committed version looks in an OCI repository (docs/FORMAT.md, "OCI layout of a version"): a CNCF ModelPack
/// image manifest whose layers are the sealed files, tagged by ``tag(model:version:)``, and two referrer artifacts whose
/// `subject` is that manifest (the DSSE statement envelope and the OpenSSF model-signing bundle), listed in an image
/// index under the referrers tag `sha256-<manifest hex>` because distribution 2.8 has no referrers API.
///
/// Everything here is a pure function of ``PublishedVersion``: publishing a version twice gives the same bytes and
/// digests, so a second `publish` (another replica, `fsck --repair`) changes nothing.
///
/// ```swift
/// let layout = try OCIVersionLayout(version)
/// layout.tag  // "team_fraud_3-6e1f..."
/// ```
public struct OCIVersionLayout: Sendable {
    // MARK: - Media types and annotation keys

    public static let manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
    public static let indexMediaType = "application/vnd.oci.image.index.v1+json"
    public static let modelArtifactType = "application/vnd.cncf.model.manifest.v1+json"
    public static let modelConfigMediaType = "application/vnd.cncf.model.config.v1+json"
    /// A Coffer sealed file (docs/FORMAT.md, "Sealed files") with zero stanzas: ciphertext whose key is not in the registry.
    public static let sealedMediaType = "application/vnd.coffer.sealed.v1"
    public static let emptyMediaType = "application/vnd.oci.empty.v1+json"
    public static let dsseMediaType = "application/vnd.dsse.envelope.v1+json"
    public static let bundleMediaType = ModelSigningBundle.mediaType
    /// The artifact carrying wrapped-key stanzas for named recipients (`coffer export`).
    public static let keysArtifactType = "application/vnd.coffer.keys.v1"
    /// `{}`: the config of an artifact that needs none (image-spec, "Guidance for an Empty Descriptor").
    public static let emptyJSON: [UInt8] = Array("{}".utf8)

    public static let modelPredicateType = "https://coffer.dev/attestation/model/v1"

    public enum Annotation {
        public static let created = "org.opencontainers.image.created"
        public static let title = "org.opencontainers.image.title"
        public static let filePath = "org.cncf.model.filepath"
        public static let model = "dev.coffer.model"
        public static let version = "dev.coffer.version"
        public static let statementDigest = "dev.coffer.statement.digest"
        public static let publisherKeyID = "dev.coffer.publisher.keyid"
        /// Followed by a recipient's key ID: the base64 of its wrapped-key stanza.
        public static let stanzaPrefix = "dev.coffer.stanza."
        public static let plaintextDigest = "dev.coffer.plaintext.digest"
        public static let plaintextSize = "dev.coffer.plaintext.size"
        public static let predicateType = "in-toto.io/predicate-type"
        public static let bundleContent = "dev.sigstore.bundle.content"
        public static let bundlePredicateType = "dev.sigstore.bundle.predicateType"
    }

    // MARK: - The tag of a version

    /// The tag of version `version` of `model`: a readable slug, `-`, and 32 lower-case hex digits of
    /// SHA-256(`MODEL:VERSION`).
    ///
    /// The slug is `MODEL:VERSION` with `/` and `:` written `_`, a leading `.` or `-` written `_`, cut to 95 characters;
    /// it is only for people reading `skopeo list-tags`. The hash is what makes tags unambiguous: `MODEL:VERSION` is a
    /// distinct string for each version (neither part can hold `:`), `team/a-b` and `team-a/b` or `Fraud` and `fraud`
    /// get different hashes, and hex is lower case so even a registry that folded case would keep them apart. The tag
    /// is at most 95 + 1 + 32 = 128 characters of `[A-Za-z0-9._-]` starting with `[A-Za-z0-9_]`, OCI's tag grammar;
    /// it can never be a referrers tag (`sha256-` and 64 hex digits, with no second `-`).
    public static func tag(model: String, version: String) -> String {
        let reference = "\(model):\(version)"
        let hash = Digest.hex(Digest.sha256(Array(reference.utf8)).prefix(16))
        var slug = String(reference.unicodeScalars.map { $0 == "/" || $0 == ":" ? "_" : Character($0) }.prefix(95))
        if slug.hasPrefix(".") || slug.hasPrefix("-") { slug = "_" + slug.dropFirst() }
        return "\(slug)-\(hash)"
    }

    /// The referrers tag of a manifest (distribution-spec "Referrers Tag Schema"): `sha256-` and its hex digest.
    public static func referrersTag(manifestDigest: String) -> String { "sha256-\(manifestDigest)" }

    // MARK: - Documents

    /// A descriptor (image-spec `descriptor.md`): what a manifest says of a blob or of another manifest.
    public struct Descriptor: Codable, Sendable, Equatable {
        public var mediaType: String
        public var digest: String
        public var size: Int
        public var artifactType: String?
        public var annotations: [String: String]?

        public init(mediaType: String, digest: String, size: Int, artifactType: String? = nil, annotations: [String: String]? = nil) {
            self.mediaType = mediaType
            self.digest = digest
            self.size = size
            self.artifactType = artifactType
            self.annotations = annotations
        }
    }

    /// An image manifest (image-spec `manifest.md`), as Coffer writes and reads it.
    public struct Manifest: Codable, Sendable, Equatable {
        public var schemaVersion: Int
        public var mediaType: String?
        public var artifactType: String?
        public var config: Descriptor
        public var layers: [Descriptor]
        public var subject: Descriptor?
        public var annotations: [String: String]?
    }

    /// An image index (image-spec `image-index.md`): here, the referrers list of a manifest.
    public struct Index: Codable, Sendable, Equatable {
        public var schemaVersion: Int
        public var mediaType: String?
        public var manifests: [Descriptor]
        public var annotations: [String: String]?
    }

    /// The ModelPack config (modelpack/model-spec `docs/config.md`). Its schema allows no other members, so Coffer's
    /// own facts are annotations of the manifest, never fields here.
    public struct ModelConfig: Codable, Sendable, Equatable {
        public struct Descriptor: Codable, Sendable, Equatable {
            public var createdAt: String?
            public var name: String?
            public var version: String?
        }
        public struct Config: Codable, Sendable, Equatable {}
        public struct ModelFS: Codable, Sendable, Equatable {
            public var type: String
            public var diffIds: [String]
        }
        public var descriptor: Descriptor
        public var config: Config
        public var modelfs: ModelFS
    }

    /// A document's bytes: compact JSON, keys sorted, `/` not escaped, so that the same version always gives the
    /// same digest.
    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Only strings, integers and nested containers of them: encoding cannot fail.
        return Array((try? encoder.encode(value)) ?? Data())
    }

    // MARK: - A version's documents

    public let tag: String
    public let config: [UInt8]
    public let manifest: [UInt8]
    /// SHA-256 (hex) of ``manifest``.
    public let manifestDigest: String
    public let statementManifest: [UInt8]
    public let bundleManifest: [UInt8]
    /// The referrers index entries for the two artifacts, in that order.
    public let referrers: [Descriptor]

    /// Lays out `version`; refuses a version whose names no OCI tool could carry (they were validated at push already).
    public init(_ version: PublishedVersion) throws(CofferRegistryError) {
        try ModelReference.validate(name: version.model)
        try ModelReference.validate(version: version.version)
        guard !version.files.isEmpty else { throw .noFiles }
        tag = Self.tag(model: version.model, version: version.version)

        let modelConfig = ModelConfig(
            descriptor: .init(createdAt: version.created, name: version.model, version: version.version),
            config: .init(),
            modelfs: .init(type: "layers", diffIds: version.files.map { "sha256:\($0.sealedSHA256)" })
        )
        config = Self.encode(modelConfig)
        let layers = version.files.map { file in
            Descriptor(
                mediaType: Self.sealedMediaType,
                digest: "sha256:\(file.sealedSHA256)",
                size: file.sealedSize,
                annotations: [
                    Annotation.filePath: file.path,
                    Annotation.title: file.path,
                    Annotation.plaintextDigest: "sha256:\(file.plaintextSHA256)",
                    Annotation.plaintextSize: String(file.size),
                ]
            )
        }
        let versionManifest = Manifest(
            schemaVersion: 2,
            mediaType: Self.manifestMediaType,
            artifactType: Self.modelArtifactType,
            config: Descriptor(mediaType: Self.modelConfigMediaType, digest: "sha256:\(Digest.hex(Digest.sha256(config)))", size: config.count),
            layers: layers,
            subject: nil,
            annotations: [
                Annotation.created: version.created,
                Annotation.model: version.model,
                Annotation.version: version.version,
                Annotation.statementDigest: "sha256:\(version.digest)",
                Annotation.publisherKeyID: version.publisherKeyID,
            ]
        )
        manifest = Self.encode(versionManifest)
        manifestDigest = Digest.hex(Digest.sha256(manifest))
        let subject = Descriptor(mediaType: Self.manifestMediaType, digest: "sha256:\(manifestDigest)", size: manifest.count)

        let statementAnnotations = [
            Annotation.predicateType: Self.modelPredicateType,
            Annotation.statementDigest: "sha256:\(version.digest)",
            Annotation.created: version.created,
        ]
        statementManifest = Self.encode(
            Self.artifact(type: Self.dsseMediaType, content: version.envelope, subject: subject, annotations: statementAnnotations)
        )
        let bundleAnnotations = [
            Annotation.bundleContent: "dsse-envelope",
            Annotation.bundlePredicateType: ModelSigningBundle.predicateType,
            Annotation.created: version.created,
        ]
        bundleManifest = Self.encode(
            Self.artifact(type: Self.bundleMediaType, content: version.modelSigningBundle, subject: subject, annotations: bundleAnnotations)
        )
        referrers = [
            Descriptor(
                mediaType: Self.manifestMediaType,
                digest: "sha256:\(Digest.hex(Digest.sha256(statementManifest)))",
                size: statementManifest.count,
                artifactType: Self.dsseMediaType,
                annotations: statementAnnotations
            ),
            Descriptor(
                mediaType: Self.manifestMediaType,
                digest: "sha256:\(Digest.hex(Digest.sha256(bundleManifest)))",
                size: bundleManifest.count,
                artifactType: Self.bundleMediaType,
                annotations: bundleAnnotations
            ),
        ]
    }

    /// An artifact manifest (image-spec "Guidelines for Artifact Usage"): empty config, the content as its one layer.
    static func artifact(type: String, content: [UInt8], subject: Descriptor, annotations: [String: String]) -> Manifest {
        Manifest(
            schemaVersion: 2,
            mediaType: manifestMediaType,
            artifactType: type,
            config: Descriptor(mediaType: emptyMediaType, digest: "sha256:\(Digest.hex(Digest.sha256(emptyJSON)))", size: emptyJSON.count),
            layers: [Descriptor(mediaType: type, digest: "sha256:\(Digest.hex(Digest.sha256(content)))", size: content.count)],
            subject: subject,
            annotations: annotations
        )
    }

    /// The referrers index to put under the referrers tag: `existing` (what other tools attached: kept) with this
    /// version's two artifacts appended unless already listed.
    public func referrersIndex(merging existing: Index?) -> [UInt8] {
        var index = existing ?? Index(schemaVersion: 2, mediaType: Self.indexMediaType, manifests: [], annotations: nil)
        for descriptor in referrers where !index.manifests.contains(where: { $0.digest == descriptor.digest }) {
            index.manifests.append(descriptor)
        }
        return Self.encode(index)
    }

    /// The keys artifact for `stanzas` (recipient key ID to stanza): annotations on an artifact of the empty blob, the
    /// version manifest as its subject. Returns its bytes and its referrers-index descriptor.
    public func keysArtifact(statementDigest: String, stanzas: [String: [UInt8]]) -> (manifest: [UInt8], descriptor: Descriptor) {
        let empty = Descriptor(
            mediaType: Self.emptyMediaType,
            digest: "sha256:\(Digest.hex(Digest.sha256(Self.emptyJSON)))",
            size: Self.emptyJSON.count
        )
        var annotations = [Annotation.statementDigest: "sha256:\(statementDigest)"]
        for (keyID, stanza) in stanzas { annotations[Annotation.stanzaPrefix + keyID] = Data(stanza).base64EncodedString() }
        let artifact = Manifest(
            schemaVersion: 2,
            mediaType: Self.manifestMediaType,
            artifactType: Self.keysArtifactType,
            config: empty,
            layers: [empty],
            subject: Descriptor(mediaType: Self.manifestMediaType, digest: "sha256:\(manifestDigest)", size: manifest.count),
            annotations: annotations
        )
        let bytes = Self.encode(artifact)
        let descriptor = Descriptor(
            mediaType: Self.manifestMediaType,
            digest: "sha256:\(Digest.hex(Digest.sha256(bytes)))",
            size: bytes.count,
            artifactType: Self.keysArtifactType,
            annotations: [Annotation.statementDigest: "sha256:\(statementDigest)"]
        )
        return (bytes, descriptor)
    }
}
