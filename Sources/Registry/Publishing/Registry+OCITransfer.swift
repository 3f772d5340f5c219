public import CofferCrypto
import Foundation

/// What `coffer export` wrote.
public struct ExportResult: Sendable, Equatable {
    public var model: String
    public var version: String
    public var digest: String
    /// The version manifest's tag and digest in the destination repository.
    public var tag: String
    public var manifestDigest: String
    /// Blobs sent (the others were there already).
    public var blobsSent: Int
    /// Key IDs a stanza was attached for.
    public var recipients: [String]
}

extension Registry {
    /// Copies a version into another OCI repository as its ModelPack layout (docs/FORMAT.md, "Keys for named
    /// recipients"), with the data key wrapped for each of `recipients` in a key artifact. Only ciphertext and signed
    /// documents leave; the exporter, a reader holding a key of the version, unwraps the data key only to wrap it again.
    public func exportVersion(
        _ reference: ModelReference,
        to destination: String,
        recipients: [PublicIdentity],
        identity: UnlockedIdentity,
        environment: [String: String]
    ) async throws(CofferRegistryError) -> ExportResult {
        let actor = try await principal(for: identity.identity)
        try await require(.reader, on: reference.name, by: actor, action: "export", target: reference.description)
        try await require(.decrypt, on: reference.name, by: actor, action: "export", target: reference.description)
        do {
            let result = try await exportCopy(reference, to: destination, recipients: recipients, identity: identity, environment: environment)
            let to = result.recipients.isEmpty ? "no recipient" : "stanzas for \(result.recipients.joined(separator: ", "))"
            try await audit(
                principal: actor.name,
                action: "export",
                target: "\(result.model):\(result.version)",
                outcome: .ok,
                reason: "\(destination) (\(to))"
            )
            return result
        } catch {
            try? await audit(principal: actor.name, action: "export", target: reference.description, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private func exportCopy(
        _ reference: ModelReference,
        to destination: String,
        recipients: [PublicIdentity],
        identity: UnlockedIdentity,
        environment: [String: String]
    ) async throws(CofferRegistryError) -> ExportResult {
        let stored = try await loadVersion(try await resolveForUse(reference).id)
        try stored.ensureNotErased()
        let label = "\(stored.model):\(stored.version)"
        guard stored.rekeyEnvelope == nil else {
            throw .refused("\(label) was re-encrypted by a rekey: its blobs are no longer those its statement signs, so it has no OCI copy")
        }
        let (statement, _) = try await authenticate(stored)
        guard let envelope = stored.envelope, let bundle = stored.modelSignature else { throw .tampered("\(label) lacks its signed documents") }
        let dataKey = try await unwrapDataKey(stored, identity: identity)
        try Directories.make("\(home)/tmp")
        let target = try OCIBlobStore(url: destination, temporaryDirectory: "\(home)/tmp", environment: environment)
        var sent = 0
        for file in statement.files where try await target.size(of: file.sealedSHA256) != file.sealedSize {
            let source = blobs
            try await Self.copyBlob(file, what: "blob of \(file.path)", into: target) { try await source.read(file.sealedSHA256, range: nil) }
            sent += 1
        }
        let published = PublishedVersion(statement, digest: stored.digest, envelope: envelope, bundle: bundle)
        try await target.publish(published)
        var stanzas: [String: [UInt8]] = [:]
        for recipient in recipients { stanzas[recipient.keyID] = dataKey.key.wrap(for: recipient).encoded }
        if !stanzas.isEmpty { try await target.attachKeys(to: published, stanzas: stanzas) }
        let layout = try OCIVersionLayout(published)
        return ExportResult(
            model: statement.model,
            version: statement.version,
            digest: stored.digest,
            tag: layout.tag,
            manifestDigest: layout.manifestDigest,
            blobsSent: sent,
            recipients: stanzas.keys.sorted()
        )
    }

    /// Verifies and adopts a version copied into an OCI repository (`coffer import oci://HOST/REPO:TAG`): its signature
    /// against this registry's trusted signers, its blobs copied in and hashed, each sealed under the data key that a
    /// stanza for `identity` opens, then committed as a push of its publisher with `identity` as the actor (a publisher
    /// of the model; in a registry without principals, the registry's own key). docs/FORMAT.md, "Importing".
    public func importVersion(
        from reference: String,
        identity: UnlockedIdentity,
        environment: [String: String]
    ) async throws(CofferRegistryError) -> PushResult {
        let (endpoint, tag) = try OCIEndpoint.parse(reference: reference)
        let source = try OCIDistributionClient(endpoint: endpoint, environment: environment)
        let described = try await source.describeVersion(tag)
        let version = described.version
        let label = "\(version.model):\(version.version)"
        let actor = try await principal(for: identity.identity)
        try await require(.publisher, on: version.model, by: actor, action: "import", target: label)
        try Directories.make("\(home)/tmp")
        do {
            return try await adopt(described, from: OCIBlobStore(client: source, temporaryDirectory: "\(home)/tmp"), identity: identity)
        } catch {
            try? await audit(principal: actor.name, action: "import", target: label, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private func adopt(
        _ described: OCIVersionDescription,
        from source: OCIBlobStore,
        identity: UnlockedIdentity
    ) async throws(CofferRegistryError) -> PushResult {
        let version = described.version
        let label = "\(version.model):\(version.version)"
        if let existing = try await metadata.version(model: version.model, version: version.version) {
            guard existing.digest == version.digest else { throw .versionExists(label) }
            return PushResult(model: version.model, version: version.version, digest: version.digest, files: version.files.count, bytes: 0)
        }
        let (statement, publisher) = try Self.verifySigned(
            envelope: Data(version.envelope),
            bundle: Data(version.modelSigningBundle),
            trusting: try await trustedSigners(),
            model: version.model,
            version: version.version,
            digest: version.digest
        )
        let named = statement.files.map {
            PublishedVersion.File(
                path: $0.path,
                size: $0.size,
                plaintextSHA256: $0.plaintextSHA256,
                sealedSHA256: $0.sealedSHA256,
                sealedSize: $0.sealedSize
            )
        }
        guard named == version.files else { throw .tampered("\(label): the manifest's layers are not the files its signed statement names") }
        if let dataset = statement.lineage.datasetID { try ModelReference.validate(datasetID: dataset) }
        let registryKey = try await self.identity
        let checked = try await checksPrincipals()
        guard checked || identity.publicIdentity.keyID == registryKey.keyID else {
            throw .refused("in a registry without principals an import is signed by the registry's own key: use --identity HOME/registry.key")
        }
        guard let stanza = described.stanzas[identity.publicIdentity.keyID] else {
            throw .notARecipient(
                "\(label) as copied (no stanza for \(identity.publicIdentity.name) \(identity.publicIdentity.keyID): export it --recipient that key)"
            )
        }
        let dataKey: KeyBox
        do { dataKey = KeyBox(try WrappedKey(encoded: stanza).unwrap(with: identity.identity)) } catch {
            throw .tampered("\(label): the stanza for \(identity.publicIdentity.name) does not open")
        }

        var copied: [String] = []
        let committed: CommittedVersion
        do throws(CofferRegistryError) {
            for file in statement.files {
                if try await blobs.size(of: file.sealedSHA256) != file.sealedSize {
                    if !blobs.listsBlobs {
                        try await metadata.commit(UnitOfWork(changes: [.addPendingBlobs([file.sealedSHA256], at: Self.now())]))
                    }
                    try await Self.copyBlob(file, what: "\(label) blob of \(file.path)", into: blobs) {
                        try await source.read(file.sealedSHA256, range: nil)
                    }
                    copied.append(file.sealedSHA256)
                }
                let blob = try await blobSource(file.sealedSHA256, what: file.path)
                let sealedUnderKey = await Offload.run { () -> Bool in
                    guard let (header, _) = try? SealedFileHeader.read(from: blob.value) else { return false }
                    return (try? header.authenticate(dataKey: dataKey.key)) != nil
                }
                guard sealedUnderKey else { throw .tampered("\(label): blob of \(file.path) is not sealed under the key its stanza opens") }
            }
            // Only what was checked is kept: the importer's own stanza (it opened the key every blob is sealed under) and
            // the registry's, wrapped here. Other stanzas in the copy are unauthenticated: kept, a forged one would be
            // taken as a holder's by a later rekey. Other recipients are added with `recipient add`.
            var wrapped = [(identity.publicIdentity.keyID, stanza)]
            if identity.publicIdentity.keyID != registryKey.keyID { wrapped.append((registryKey.keyID, dataKey.key.wrap(for: registryKey).encoded)) }
            let envelope: DSSEEnvelope
            do { envelope = try DSSEEnvelope(jsonBytes: version.envelope) } catch { throw .tampered("\(label): \(error)") }
            let signed = SignedStatement(statement: statement, envelope: envelope, bundle: version.modelSigningBundle, digest: version.digest)
            let bytes = statement.files.reduce(0) { $0 + $1.size }
            let source = "oci \(source.name)"
            committed = try await commitVersion(
                model: statement.model,
                alias: nil,
                tags: [:],
                parentID: nil,
                wrapped: wrapped,
                dataKey: dataKey,
                overrideBy: nil,
                signer: Signer(identity),
                remember: [identity.publicIdentity],
                reason: { "sha256:\($0) (imported from \(source))" },
                statement: { _ async throws(CofferRegistryError) in (signed, publisher) },
                result: { signed in
                    PushResult(model: statement.model, version: statement.version, digest: signed.digest, files: statement.files.count, bytes: bytes)
                }
            )
        } catch {
            for digest in copied { try? await blobs.remove(digest) }
            throw error
        }
        return try await publishManifest(committed)
    }

    /// Copies one blob into `store` from the stream `open` gives, through a temporary file of the store, checking its
    /// size and SHA-256 on the way: a copy that does not hash to its digest is refused and nothing of it stays.
    static func copyBlob(
        _ file: ModelStatement.File,
        what: String,
        into store: any BlobStore,
        open: @escaping @Sendable () async throws -> BlobStream
    ) async throws(CofferRegistryError) {
        try await copyBlob(file.sealedSHA256, size: file.sealedSize, what: what, into: store, open: open)
    }

    /// ``copyBlob(_:what:into:open:)`` for the blob `digest` of `size` bytes.
    static func copyBlob(
        _ digest: String,
        size: Int,
        what: String,
        into store: any BlobStore,
        open: @escaping @Sendable () async throws -> BlobStream
    ) async throws(CofferRegistryError) {
        let temporary = Unchecked(try store.makeTemporary())
        let source = Unchecked(BlockingByteSource(length: size, name: what, opening: open))
        let (hex, count) = try await Offload.run { () throws(CofferRegistryError) -> (String, Int) in
            var hasher = StreamingSHA256()
            var count = 0
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
            defer { buffer.deallocate() }
            do {
                while true {
                    let n = try source.value.read(into: buffer)
                    if n == 0 { break }
                    let piece = UnsafeRawBufferPointer(rebasing: buffer[..<n])
                    hasher.update(piece)
                    try temporary.value.write(piece)
                    count += n
                    guard count <= size else { break }
                }
            } catch {
                // A store that hashed what it sent and found it wrong: the same refusal as our own hash's below.
                if Registry.foundTampered(source.value.failure) { throw .tampered("\(what) does not hash to sha256:\(digest)") }
                throw .io(path: what, reason: "\(error)")
            }
            return (Digest.hex(hasher.finalize()), count)
        }
        guard count == size, hex == digest else {
            throw .tampered("\(what) does not hash to sha256:\(digest) (\(count) bytes, sha256:\(hex))")
        }
        try await store.store(temporary.value, digest: digest, size: size)
    }
}
