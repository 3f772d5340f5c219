import CofferCrypto
import Foundation

/// A version as an OCI repository holds it (docs/FORMAT.md, "OCI layout of a version"), read back for `coffer import`:
/// the ModelPack manifest's files and the two referrer artifacts, checked for shape, sizes and digests but **not
/// trusted**. The caller verifies the envelope's signature, that its statement names these files with these digests,
/// and the model-signing bundle, before adopting anything.
public struct OCIVersionDescription: Sendable, Equatable {
    /// SHA-256 (hex) of the version's manifest in the repository read.
    public var manifestDigest: String
    /// The version as the manifest describes it, with the envelope and bundle bytes as found: the same value
    /// ``BlobStore/publish(_:)`` was given, when nothing was changed on the way.
    public var version: PublishedVersion
    /// Wrapped-key stanzas found in key artifacts, by recipient key ID (unauthenticated: see docs/FORMAT.md).
    public var stanzas: [String: [UInt8]] = [:]
}

extension OCIDistributionClient {
    /// Reads the version whose manifest is `reference` (a tag, or `sha256:HEX`) in this repository, and its DSSE statement
    /// envelope and model-signing bundle through the referrers tag `sha256-<manifest hex>`.
    ///
    /// Every document is fetched by digest and checked against it; the manifest must be a ModelPack manifest of sealed
    /// layers with Coffer's annotations, its config must name the same model, version and layers, and the envelope's
    /// payload must hash to the statement digest the manifest names. No signature is checked here.
    ///
    /// - Throws: `.invalidInput` naming what is malformed or missing; `.tampered` for a document whose bytes do not
    ///   hash to its digest; `.unavailable` when the registry fails.
    public func describeVersion(_ reference: String, documentLimit: Int = 16 << 20) async throws(CofferRegistryError) -> OCIVersionDescription {
        typealias Layout = OCIVersionLayout
        let what = "\(endpoint.name):\(reference)"
        guard let found = try await getManifest(reference, accept: [Layout.manifestMediaType]) else {
            throw .invalidInput("\(what): no such manifest")
        }
        func bad(_ why: String) -> CofferRegistryError { .invalidInput("\(what) is not a Coffer version: \(why)") }
        guard let manifest = try? JSONDecoder().decode(Layout.Manifest.self, from: Data(found.bytes)) else {
            throw bad("the manifest is not an OCI image manifest")
        }
        guard manifest.schemaVersion == 2, manifest.mediaType == Layout.manifestMediaType else {
            throw bad("mediaType is not \(Layout.manifestMediaType)")
        }
        guard manifest.artifactType == Layout.modelArtifactType else { throw bad("artifactType is not \(Layout.modelArtifactType)") }
        guard manifest.config.mediaType == Layout.modelConfigMediaType else { throw bad("its config is not \(Layout.modelConfigMediaType)") }
        let annotations = manifest.annotations ?? [:]
        guard let model = annotations[Layout.Annotation.model], let version = annotations[Layout.Annotation.version],
            let statement = annotations[Layout.Annotation.statementDigest].flatMap(Self.hex(of:)),
            let created = annotations[Layout.Annotation.created], let keyID = annotations[Layout.Annotation.publisherKeyID]
        else {
            throw bad(
                "an annotation is missing (\(Layout.Annotation.model), \(Layout.Annotation.version), \(Layout.Annotation.statementDigest), ...)"
            )
        }
        do {
            try ModelReference.validate(name: model)
            try ModelReference.validate(version: version)
        } catch {
            throw bad(error.description)
        }
        guard !manifest.layers.isEmpty else { throw bad("it has no layers") }

        var files: [PublishedVersion.File] = []
        var paths = Set<String>()
        for layer in manifest.layers {
            guard layer.mediaType == Layout.sealedMediaType else {
                throw bad("layer \(layer.digest) is \(layer.mediaType), not \(Layout.sealedMediaType)")
            }
            let layerAnnotations = layer.annotations ?? [:]
            guard let sealed = Self.hex(of: layer.digest), layer.size >= 0,
                let path = layerAnnotations[Layout.Annotation.filePath],
                let plaintext = layerAnnotations[Layout.Annotation.plaintextDigest].flatMap(Self.hex(of:)),
                let sizeText = layerAnnotations[Layout.Annotation.plaintextSize], let size = Int(sizeText), size >= 0, String(size) == sizeText
            else { throw bad("layer \(layer.digest) lacks a digest, size or annotation of Coffer's") }
            do {
                try InputFile.validate(relativePath: path)
            } catch {
                throw bad(error.description)
            }
            guard paths.insert(path).inserted else { throw bad("two layers are file \(path)") }
            files.append(PublishedVersion.File(path: path, size: size, plaintextSHA256: plaintext, sealedSHA256: sealed, sealedSize: layer.size))
        }

        guard let configDigest = Self.hex(of: manifest.config.digest), manifest.config.size <= Self.manifestLimit else {
            throw bad("its config descriptor is malformed")
        }
        guard let configBytes = try await getSmallBlob(configDigest, limit: Self.manifestLimit) else { throw bad("its config blob is missing") }
        guard configBytes.count == manifest.config.size,
            let config = try? JSONDecoder().decode(Layout.ModelConfig.self, from: Data(configBytes))
        else { throw bad("its config is not a ModelPack config of the size named") }
        guard config.descriptor.name == model, config.descriptor.version == version, config.modelfs.type == "layers",
            config.modelfs.diffIds == manifest.layers.map(\.digest)
        else { throw bad("its config names another model, version or layers than the manifest") }

        let referrersTag = Layout.referrersTag(manifestDigest: found.digest)
        guard let listed = try await getManifest(referrersTag, accept: [Layout.indexMediaType]) else {
            throw .invalidInput(
                "\(what) has no referrers (tag \(referrersTag)): its statement and model-signing bundle were not copied with it (copy that tag too)"
            )
        }
        guard let index = try? JSONDecoder().decode(Layout.Index.self, from: Data(listed.bytes)), index.schemaVersion == 2 else {
            throw bad("tag \(referrersTag) is not an image index")
        }
        let envelope = try await referrer(
            in: index,
            type: Layout.dsseMediaType,
            subject: found.digest,
            limit: documentLimit,
            accept: { bytes in
                guard let envelope = try? DSSEEnvelope(jsonBytes: bytes), let payload = try? envelope.payloadBytes() else { return false }
                return Digest.hex(Digest.sha256(payload)) == statement
            }
        )
        guard let envelope else { throw bad("no DSSE envelope among its referrers carries the statement sha256:\(statement)") }
        let bundle = try await referrer(
            in: index,
            type: Layout.bundleMediaType,
            subject: found.digest,
            limit: documentLimit,
            accept: { bytes in
                guard let object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else { return false }
                return object["mediaType"] as? String == Layout.bundleMediaType && object["dsseEnvelope"] is [String: Any]
            }
        )
        guard let bundle else { throw bad("no model-signing bundle among its referrers") }
        let described = PublishedVersion(
            model: model,
            version: version,
            digest: statement,
            created: created,
            publisherKeyID: keyID,
            files: files,
            envelope: envelope,
            modelSigningBundle: bundle
        )
        return OCIVersionDescription(
            manifestDigest: found.digest,
            version: described,
            stanzas: try await keyStanzas(in: index, subject: found.digest)
        )
    }

    /// The stanzas of every key artifact of `subject` listed in `index` (at most 64 candidates fetched), merged, the
    /// first per key ID winning. Malformed annotations are skipped: stanzas are checked by what they open.
    private func keyStanzas(in index: OCIVersionLayout.Index, subject: String) async throws(CofferRegistryError) -> [String: [UInt8]] {
        typealias Layout = OCIVersionLayout
        var stanzas: [String: [UInt8]] = [:]
        let candidates = index.manifests.filter {
            ($0.artifactType == nil || $0.artifactType == Layout.keysArtifactType) && $0.mediaType == Layout.manifestMediaType
        }.prefix(64)
        for candidate in candidates {
            guard let digest = Self.hex(of: candidate.digest), candidate.size <= Self.manifestLimit,
                let found = try await getManifest("sha256:\(digest)", accept: [Layout.manifestMediaType]),
                let manifest = try? JSONDecoder().decode(Layout.Manifest.self, from: Data(found.bytes)),
                manifest.artifactType == Layout.keysArtifactType, manifest.subject?.digest == "sha256:\(subject)"
            else { continue }
            for (key, value) in (manifest.annotations ?? [:]).sorted(by: { $0.key < $1.key }) where key.hasPrefix(Layout.Annotation.stanzaPrefix) {
                let keyID = String(key.dropFirst(Layout.Annotation.stanzaPrefix.count))
                guard stanzas[keyID] == nil, let stanza = Data(base64Encoded: value) else { continue }
                stanzas[keyID] = Array(stanza)
            }
        }
        return stanzas
    }

    /// The content of the first referrer of `type` whose manifest has `subject` and whose content `accept`s; nil when none.
    ///
    /// A listed descriptor without `artifactType` is a candidate too: skopeo 1.9's `copy --all` rewrites the index and
    /// drops `artifactType` and annotations from its descriptors, so only the manifest's own `artifactType` is relied on.
    /// At most 64 candidates are fetched, so a referrers list padded by someone else cannot make an import fetch forever.
    private func referrer(
        in index: OCIVersionLayout.Index,
        type: String,
        subject: String,
        limit: Int,
        accept: ([UInt8]) -> Bool
    ) async throws(CofferRegistryError) -> [UInt8]? {
        let candidates = index.manifests.filter {
            ($0.artifactType == nil || $0.artifactType == type) && $0.mediaType == OCIVersionLayout.manifestMediaType
        }.prefix(64)
        for candidate in candidates {
            guard let digest = Self.hex(of: candidate.digest), candidate.size <= Self.manifestLimit,
                let found = try await getManifest("sha256:\(digest)", accept: [OCIVersionLayout.manifestMediaType]),
                let manifest = try? JSONDecoder().decode(OCIVersionLayout.Manifest.self, from: Data(found.bytes)),
                manifest.artifactType == type, manifest.subject?.digest == "sha256:\(subject)",
                manifest.layers.count == 1, manifest.layers[0].mediaType == type, manifest.layers[0].size <= limit,
                let contentDigest = Self.hex(of: manifest.layers[0].digest),
                let content = try await getSmallBlob(contentDigest, limit: limit),
                content.count == manifest.layers[0].size, accept(content)
            else { continue }
            return content
        }
        return nil
    }

    /// The hex of `sha256:HEX`, or nil when `text` is not such a digest.
    static func hex(of text: String) -> String? {
        guard text.hasPrefix("sha256:") else { return nil }
        let hex = String(text.dropFirst(7))
        guard (try? checkDigest(hex)) != nil else { return nil }
        return hex
    }
}
