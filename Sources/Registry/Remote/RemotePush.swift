public import CofferCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A push over HTTP, prepared by the client: its files sealed locally (the server never sees plaintext), its
/// statement signed by the publisher, its data key wrapped for the registry's key (pinned by the client), the
/// publisher and each recipient. Kept in an outbox folder so an interrupted upload resumes; posted to
/// `POST /v1/versions` once every blob is uploaded.
public struct PreparedPush: Sendable, Equatable, Codable {
    public var model: String
    public var version: String
    public var dsse: String
    public var modelSigning: String
    /// Key ID to stanza (base64).
    public var wrappedKeys: [String: String]
    /// Recipients' NAME.pub documents (base64), so the registry can wrap for them again on a rekey.
    public var recipients: [String]
    public var alias: String?
    public var tags: [String: String]
    public var parent: String?
    public var overrideBudget: Bool
    public var files: [ModelStatement.File]
    public var created: String

    enum CodingKeys: String, CodingKey {
        case model, version, dsse, recipients, alias, tags, parent, files, created
        case modelSigning = "model_signing"
        case wrappedKeys = "wrapped_keys"
        case overrideBudget = "override_budget"
    }

    /// The SHA-256 of the signed statement: the version's digest once committed.
    public func statementDigest() throws(CofferRegistryError) -> String {
        guard let document = Data(base64Encoded: dsse), let payload = try? DSSEEnvelope(jsonBytes: Array(document)).payloadBytes() else {
            throw .invalidInput("\(model):\(version): unreadable signed statement")
        }
        return Digest.hex(Digest.sha256(payload))
    }

    /// The outbox file holding the sealed blob with `digest`.
    public static func blobPath(_ outbox: String, _ digest: String) -> String { "\(outbox)/\(digest).blob" }

    /// Seals `request`'s files into `outbox` and signs the statement for `version`.
    public static func prepare(
        _ request: PushRequest,
        publisher: borrowing Identity,
        registryKey: PublicIdentity,
        version: String,
        outbox: String,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferRegistryError) -> PreparedPush {
        try ModelReference.validate(name: request.model)
        try ModelReference.validate(version: version)
        var request = request
        request.privacy.fillFromSegments()
        try request.privacy.validateForPush()
        let inputs = try InputFile.collect(request)
        try Directories.make(outbox)
        let dataKey = SecretKey.random()
        var files: [ModelStatement.File] = []
        var done = 0
        for input in inputs {
            let output: AtomicOutputFile
            do { output = try AtomicOutputFile(destination: "\(outbox)/sealing", mode: 0o600, durable: false) } catch { throw .crypto(error) }
            let before = done
            let file = try Registry.seal(input, dataKey: dataKey, chunkSize: request.chunkSize, into: output) { progress?(before + $0) }
            do { try output.commit() } catch { throw .crypto(error) }
            guard rename("\(outbox)/sealing", blobPath(outbox, file.sealedSHA256)) == 0 else {
                throw .io(path: outbox, reason: String(cString: strerror(errno)))
            }
            files.append(file)
            done += file.size
        }
        var wrapped: [String: String] = [:]
        for recipient in [registryKey, publisher.publicIdentity] + request.recipients {
            wrapped[recipient.keyID] = Data(dataKey.wrap(for: recipient).encoded).base64EncodedString()
        }
        var prepared = PreparedPush(
            model: request.model,
            version: version,
            dsse: "",
            modelSigning: "",
            wrappedKeys: wrapped,
            recipients: request.recipients.map { Data($0.jsonBytes).base64EncodedString() },
            alias: request.alias,
            tags: request.tags,
            parent: request.parent?.description,
            overrideBudget: request.overrideBudget,
            files: files,
            created: Registry.now()
        )
        try prepared.sign(request, version: version, publisher: publisher)
        return prepared
    }

    /// Signs the statement for `version` (again, when the number was taken meanwhile): the blobs do not change.
    public mutating func sign(_ request: PushRequest, version: String, publisher: borrowing Identity) throws(CofferRegistryError) {
        var request = request
        request.privacy.fillFromSegments()
        let lineage = ModelStatement.Lineage(
            parent: request.parent?.description,
            datasetID: request.datasetID,
            datasetDigest: request.datasetDigest,
            trainingConfigDigest: request.trainingConfigDigest
        )
        let signed = try Registry.sign(request, version: version, files: files, lineage: lineage, created: created, publisher: publisher)
        self.version = version
        dsse = Data(signed.envelope.jsonBytes).base64EncodedString()
        modelSigning = Data(signed.bundle).base64EncodedString()
    }
}

extension PreparedPush {
    /// Why this prepared push is not the push of `request` by `publisher` for `registryKey` (nil when it is): another
    /// model, version, request field, recipient set or registry key, a statement not signed by the publisher, input
    /// files whose content differs from what was sealed, or sealed blobs missing from `outbox`.
    public func mismatch(with request: PushRequest, publisher: PublicIdentity, registryKey: PublicIdentity, outbox: String) -> String? {
        var request = request
        request.privacy.fillFromSegments()
        guard model == request.model, request.version == nil || request.version == version else { return "another model or version" }
        guard alias == request.alias, tags == request.tags, parent == request.parent?.description, overrideBudget == request.overrideBudget else {
            return "other push options"
        }
        guard Set(recipients) == Set(request.recipients.map { Data($0.jsonBytes).base64EncodedString() }) else { return "other recipients" }
        guard wrappedKeys[registryKey.keyID] != nil else { return "a data key wrapped for another registry key" }
        guard let document = Data(base64Encoded: dsse), let envelope = try? DSSEEnvelope(jsonBytes: Array(document)),
            let (_, payload) = try? envelope.verify(trusting: [publisher]),
            let statement = try? ModelStatement(try InTotoStatement(jsonBytes: payload))
        else { return "a statement not signed by this publisher" }
        guard statement.privacy == request.privacy, statement.lineage.datasetID == request.datasetID,
            statement.lineage.datasetDigest == request.datasetDigest, statement.lineage.trainingConfigDigest == request.trainingConfigDigest,
            statement.message == request.message, statement.chunkSize == request.chunkSize
        else { return "other privacy metadata, lineage or message" }
        guard let inputs = try? InputFile.collect(request), inputs.map(\.path) == files.map(\.path) else { return "other files" }
        for (input, file) in zip(inputs, files) {
            guard let (digest, size) = try? Digest.sha256(of: try input.open()),
                Digest.hex(digest) == file.plaintextSHA256, size == file.size
            else { return "\(input.path) changed since it was sealed" }
            guard access(Self.blobPath(outbox, file.sealedSHA256), R_OK) == 0 else { return "the sealed blob of \(file.path) is missing" }
        }
        return nil
    }
}

extension Registry {
    /// Refuses (and audits) a principal who holds the publisher role on no model: uploads and publish-scoped tokens
    /// are for publishers only.
    public func requirePublisherSomewhere(_ principal: Principal, action: String, target: String) async throws(CofferRegistryError) {
        let state = try await ledgerState()
        guard state.checksPrincipals,
            !state.grants.contains(where: { $0.principal == principal.name && ($0.role == .publisher || $0.role == .admin) })
        else { return }
        let reason = "\(principal.name) holds the publisher role on no model"
        try await audit(principal: principal.name, action: action, target: target, outcome: .refused, reason: reason)
        throw .refused(reason)
    }

    /// Commits a version a client prepared and uploaded: the publisher's signature (a trusted signer, and the
    /// pushing principal's own key), every blob present with its signed size, the registry's wrapped key opening
    /// each blob's header (so the registry can serve sessions and rekey), budget and policy as for a local push.
    public func commitPushed(
        _ prepared: PreparedPush,
        principal actor: Principal,
        registryIdentity: UnlockedIdentity
    ) async throws(CofferRegistryError) -> PushResult {
        try await require(.publisher, on: prepared.model, by: actor, action: "push", target: prepared.model)
        if prepared.overrideBudget {
            try await require(.admin, on: prepared.model, by: actor, action: "push --override-budget", target: prepared.model)
        }
        let label = "\(prepared.model):\(prepared.version)"
        let committedVersion: CommittedVersion
        do throws(CofferRegistryError) {
            guard let document = Data(base64Encoded: prepared.dsse), let bundle = Data(base64Encoded: prepared.modelSigning) else {
                throw CofferRegistryError.invalidInput("\(label): unreadable signed documents")
            }
            let envelope: DSSEEnvelope
            let payload: [UInt8]
            do {
                envelope = try DSSEEnvelope(jsonBytes: Array(document))
                payload = try envelope.payloadBytes()
            } catch {
                throw CofferRegistryError.invalidInput("\(label): \(error)")
            }
            let digest = Digest.hex(Digest.sha256(payload))
            let (statement, signer) = try Self.verifySigned(
                envelope: document,
                bundle: bundle,
                trusting: try await trustedSigners(),
                model: prepared.model,
                version: prepared.version,
                digest: digest
            )
            if let dataset = statement.lineage.datasetID { try ModelReference.validate(datasetID: dataset) }
            let checked = try await checksPrincipals()
            guard signer.keyID == actor.keyID || !checked else {
                throw CofferRegistryError.refused("\(label) is signed by \(signer.name), not by the pushing principal \(actor.name)")
            }
            let current = try await identity
            guard registryIdentity.publicIdentity.keyID == current.keyID else {
                throw CofferRegistryError.registryKeyRetired(held: registryIdentity.publicIdentity.keyID, current: current.keyID)
            }
            guard let registryStanza = prepared.wrappedKeys[current.keyID].flatMap({ Data(base64Encoded: $0) }) else {
                throw CofferRegistryError.invalidInput("\(label): no data key wrapped for this registry's current key \(current.keyID)")
            }
            let dataKey: KeyBox
            do { dataKey = KeyBox(try WrappedKey(encoded: Array(registryStanza)).unwrap(with: registryIdentity.identity)) } catch {
                throw CofferRegistryError.invalidInput("\(label): the key wrapped for this registry does not open")
            }
            for file in statement.files {
                guard try await blobs.size(of: file.sealedSHA256) == file.sealedSize else {
                    throw CofferRegistryError.invalidInput("\(label): blob of \(file.path) was not uploaded")
                }
                let source = try await blobSource(file.sealedSHA256, what: file.path)
                let sealedUnderKey = await Offload.run { () -> Bool in
                    guard let (header, _) = try? SealedFileHeader.read(from: source.value) else { return false }
                    return (try? header.authenticate(dataKey: dataKey.key)) != nil
                }
                guard sealedUnderKey else {
                    throw CofferRegistryError.invalidInput("\(label): blob of \(file.path) is not sealed under the wrapped data key")
                }
            }
            var wrapped: [(String, [UInt8])] = []
            for (keyID, text) in prepared.wrappedKeys.sorted(by: { $0.key < $1.key }) {
                guard let stanza = Data(base64Encoded: text) else {
                    throw CofferRegistryError.invalidInput("\(label): unreadable stanza for \(keyID)")
                }
                wrapped.append((keyID, Array(stanza)))
            }
            var parentID: Int64? = nil
            if let parent = prepared.parent { parentID = try await resolve(try ModelReference(parsing: parent)).id }
            let state = try await ledgerState()
            let charged = try Self.checkBudget(
                state,
                model: prepared.model,
                dataset: statement.lineage.datasetID,
                privacy: statement.privacy,
                override: prepared.overrideBudget
            )
            if let alias = prepared.alias {
                let facts = LedgerChange.AliasFacts(privacy: statement.privacy, signer: signer.keyID, charged: charged)
                try checkPolicy(model: prepared.model, alias: alias, facts: facts, state: state)
            }
            let signed = SignedStatement(statement: statement, envelope: envelope, bundle: Array(bundle), digest: digest)
            let bytes = statement.files.reduce(0) { $0 + $1.size }
            let committed = try await commitVersion(
                model: prepared.model,
                alias: prepared.alias,
                tags: prepared.tags,
                parentID: parentID,
                wrapped: wrapped,
                dataKey: dataKey,
                overrideBy: prepared.overrideBudget ? actor.name : nil,
                signer: .registry(registryIdentity, for: actor),
                remember: [signer] + prepared.recipients.compactMap { Data(base64Encoded: $0).flatMap { try? PublicIdentity(jsonBytes: Array($0)) } },
                reason: { "sha256:\($0) (over HTTP)" },
                statement: { _ async throws(CofferRegistryError) in (signed, signer) },
                result: { signed in
                    PushResult(model: prepared.model, version: prepared.version, digest: signed.digest, files: statement.files.count, bytes: bytes)
                }
            )
            committedVersion = committed
        } catch {
            try? await audit(principal: actor.name, action: "push", target: label, outcome: .failed, reason: error.description)
            throw error
        }
        return try await publishManifest(committedVersion)
    }
}
