public import CofferCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `rekey` did.
public struct RekeyResult: Sendable, Equatable {
    public var model: String
    public var version: String
    /// Key IDs the new data key was wrapped for.
    public var recipients: [String]
    /// Key IDs that held the old key and whose public identity the registry does not know: not re-wrapped.
    public var dropped: [String]
}

/// A registry-signed record that a version's files were re-encrypted: in-toto statement, subjects the files'
/// plaintext digests (unchanged), predicate `https://coffer.dev/attestation/rekey/v1` naming the new blobs.
struct RekeyStatement {
    static let predicateType = "https://coffer.dev/attestation/rekey/v1"

    var model: String
    var version: String
    var versionDigest: String
    var rekeyedAt: String
    var by: String
    var chunkSize: Int
    var files: [ModelStatement.File]

    var statement: InTotoStatement {
        InTotoStatement(
            subject: files.map { .init(name: $0.path, digest: ["sha256": $0.plaintextSHA256]) },
            predicateType: Self.predicateType,
            predicate: .object([
                "model": .string(model), "version": .string(version), "version_digest": .string(versionDigest),
                "rekeyed_at": .string(rekeyedAt), "by": .string(by), "chunk_size": .number(Double(chunkSize)),
                "files": .array(
                    files.map {
                        .object([
                            "path": .string($0.path), "size": .number(Double($0.size)), "sealed_sha256": .string($0.sealedSHA256),
                            "sealed_size": .number(Double($0.sealedSize)),
                        ])
                    }
                ),
            ])
        )
    }

    init(model: String, version: String, versionDigest: String, rekeyedAt: String, by: String, chunkSize: Int, files: [ModelStatement.File]) {
        self.model = model
        self.version = version
        self.versionDigest = versionDigest
        self.rekeyedAt = rekeyedAt
        self.by = by
        self.chunkSize = chunkSize
        self.files = files
    }

    init?(_ statement: InTotoStatement) {
        guard statement.predicateType == Self.predicateType, case .object(let p) = statement.predicate,
            let model = p["model"]?.stringValue, let version = p["version"]?.stringValue, let digest = p["version_digest"]?.stringValue,
            let at = p["rekeyed_at"]?.stringValue, let by = p["by"]?.stringValue, let chunk = p["chunk_size"]?.integerValue, chunk > 0,
            case .array(let items)? = p["files"]
        else { return nil }
        var files: [ModelStatement.File] = []
        for item in items {
            // Whole numbers in range: `Int(1e300)` trapped (helper-38; the same as the dsse fuzz target's ModelStatement finding).
            guard case .object(let f) = item, let path = f["path"]?.stringValue, let size = f["size"]?.integerValue, size >= 0,
                let sealed = f["sealed_sha256"]?.stringValue, let sealedSize = f["sealed_size"]?.integerValue, sealedSize >= 0,
                let plaintext = statement.subject.first(where: { $0.name == path })?.digest["sha256"]
            else { return nil }
            files.append(.init(path: path, size: size, plaintextSHA256: plaintext, sealedSHA256: sealed, sealedSize: sealedSize))
        }
        self.init(model: model, version: version, versionDigest: digest, rekeyedAt: at, by: by, chunkSize: chunk, files: files)
    }
}

/// A `~Copyable` key shared with a closure or a thread (read-only once made).
final class KeyBox: @unchecked Sendable {
    let key: SecretKey
    init(_ key: consuming SecretKey) { self.key = key }
}

extension Registry {
    /// Re-encrypts a version under a fresh data key, for revocation against someone who may have kept the old key:
    /// each blob is decrypted and re-sealed through a pipe (plaintext never reaches a file), the new key wrapped for
    /// every current holder whose public identity the registry knows, the new blobs recorded in a `rekey`
    /// attestation signed by the registry (the publisher's statement and plaintext digests are unchanged), the old
    /// blobs deleted and the version's sessions revoked. An admin's act; `registryIdentity` is the registry's own key.
    public func rekey(
        _ reference: ModelReference,
        registryIdentity unlocked: UnlockedIdentity,
        by signer: Signer
    ) async throws(CofferRegistryError) -> RekeyResult {
        try await require(signer, .admin, on: reference.name, action: "rekey", target: reference.description)
        let registryKey = try await identity
        guard unlocked.publicIdentity.keyID == registryKey.keyID else {
            throw .refused("rekey needs the registry's own identity (\(Self.identityName).key, \(registryKey.keyID))")
        }
        let principal = try acting(signer, in: try await ledgerState()).principal
        let recordSigner = principal.name == "registry" ? Signer(unlocked) : Signer.registry(unlocked, for: principal)
        let stored = try await loadVersion(try await resolve(reference).id)
        try stored.ensureNotErased()
        let (statement, _) = try await authenticate(stored)
        let old = try await unwrapDataKey(stored, identity: unlocked)
        let fresh = KeyBox(SecretKey.random())
        var files: [ModelStatement.File] = []
        do throws(CofferRegistryError) {
            for file in statement.files { files.append(try await reseal(file, from: old, to: fresh, chunkSize: statement.chunkSize)) }
        } catch {
            for file in files { try? await blobs.remove(file.sealedSHA256) }
            throw error
        }

        // Wrap the new key for everyone who held the old one and whom the registry can name.
        var wrapped: [WrappedKeyRecord] = []
        var dropped: [String] = []
        for holder in try await metadata.wrappedKeys(version: stored.id) {
            if let recipient = try await knownIdentity(holder.recipientKeyID) {
                wrapped.append(
                    WrappedKeyRecord(
                        versionID: stored.id,
                        recipientKeyID: holder.recipientKeyID,
                        stanza: Data(fresh.key.wrap(for: recipient).encoded)
                    )
                )
            } else {
                dropped.append(holder.recipientKeyID)
            }
        }
        let record = RekeyStatement(
            model: stored.model,
            version: stored.version,
            versionDigest: stored.digest,
            rekeyedAt: Self.now(),
            by: principal.name,
            chunkSize: statement.chunkSize,
            files: files
        )
        let envelope = DSSEEnvelope.sign(payload: record.statement.jsonBytes, identity: unlocked.identity)
        let attestation = envelope.jsonBytes
        let label = "\(stored.model):\(stored.version)"
        let reason =
            "wrapped for \(wrapped.count)" + (dropped.isEmpty ? "" : "; not re-wrapped (unknown identity): \(dropped.joined(separator: ", "))")
        let rekeyed = files.map { RekeyedFileRecord(versionID: stored.id, path: $0.path, sealedSHA256: $0.sealedSHA256, sealedSize: $0.sealedSize) }
        do throws(CofferRegistryError) {
            try await commitOnLedger { (state, work) async throws(CofferRegistryError) in
                let change = LedgerChange.rekey(
                    model: stored.model,
                    version: stored.version,
                    digest: stored.digest,
                    attestation: Digest.hex(Digest.sha256(attestation))
                )
                _ = try append(change, signer: recordSigner, to: state, work: &work)
                work.changes.append(.rekey(versionID: stored.id, files: rekeyed, keys: wrapped, attestation: Data(attestation), at: Self.now()))
                work.audit.append(AuditDraft(principal: principal.name, action: "rekey", target: label, outcome: .ok, reason: reason))
            }
        } catch {
            for file in files { try? await blobs.remove(file.sealedSHA256) }
            throw error
        }
        for file in statement.files { try? await blobs.remove(file.sealedSHA256) }
        return RekeyResult(model: stored.model, version: stored.version, recipients: wrapped.map(\.recipientKeyID), dropped: dropped)
    }

    /// Decrypts `file` on a thread of its own into a pipe, and seals what comes out of the pipe under `fresh`
    /// into a new blob; both digests are checked against the signed plaintext digest.
    private func reseal(
        _ file: ModelStatement.File,
        from old: KeyBox,
        to fresh: KeyBox,
        chunkSize: Int
    ) async throws(CofferRegistryError) -> ModelStatement.File {
        let source = try await blobSource(file.sealedSHA256, what: file.path)
        let temporary = try blobs.makeTemporary()
        let output = Unchecked(temporary)
        let summary = try await Offload.run { () throws(CofferRegistryError) -> SealedFile.Summary in
            let ends: (read: Int32, write: Int32)
            do throws(CofferCryptoError) { ends = try Spawn.pipe() } catch { throw .crypto(error) }
            var reader: FileDescriptorStream? = FileDescriptorStream(ownedDescriptor: ends.read, path: "rekey pipe")
            let writerFD = ends.write
            final class Outcome: @unchecked Sendable { var error: CofferRegistryError? }
            let outcome = Outcome()
            let done = DispatchSemaphore(value: 0)
            let thread = Thread {
                do throws(CofferRegistryError) {
                    let writer = FileDescriptorStream(ownedDescriptor: writerFD, path: "rekey pipe")  // closed (EOF) when released
                    try Self.openBlob(from: source.value, file, dataKey: old.key, into: writer, checkingBlobDigest: true)
                } catch {
                    outcome.error = error
                }
                done.signal()
            }
            thread.start()
            let summary: SealedFile.Summary
            do {
                summary = try SealedFile.seal(from: reader!, to: output.value, dataKey: fresh.key, stanzas: [], chunkSize: chunkSize, digests: true)
            } catch {
                // Drain the pipe so the decrypting thread finishes its writes (closing it instead would raise SIGPIPE).
                let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
                while let n = try? reader!.read(into: scratch), n > 0 { scratch.initializeMemory(as: UInt8.self, repeating: 0) }
                scratch.deallocate()
                reader = nil
                done.wait()
                throw outcome.error ?? .crypto(error as? CofferCryptoError ?? .io(path: "rekey", reason: "\(error)"))
            }
            reader = nil
            done.wait()
            if let error = outcome.error { throw error }
            return summary
        }
        guard Digest.hex(summary.plaintextSHA256!) == file.plaintextSHA256, summary.plaintextLength == file.size else {
            throw .tampered("\(file.path) changed while it was re-encrypted")
        }
        let digest = Digest.hex(summary.sealedSHA256!)
        try await blobs.store(temporary, digest: digest, size: summary.sealedLength)
        return .init(path: file.path, size: file.size, plaintextSHA256: file.plaintextSHA256, sealedSHA256: digest, sealedSize: summary.sealedLength)
    }

    /// The public identity behind a key ID, from everything the registry knows: its own keys, recipients,
    /// principals and trusted signers.
    func knownIdentity(_ keyID: String) async throws(CofferRegistryError) -> PublicIdentity? {
        if let key = try await registryKey(keyID) { return key }
        return try await metadata.knownIdentity(keyID: keyID).flatMap { try? PublicIdentity(jsonBytes: Array($0)) }
    }

    /// Remembers recipients' public identities, so a later rekey can wrap for them again.
    func rememberRecipients(_ recipients: [PublicIdentity]) async throws(CofferRegistryError) {
        guard !recipients.isEmpty else { return }
        let records = recipients.map { RecipientIdentityRecord(keyID: $0.keyID, publicIdentity: Data($0.jsonBytes)) }
        try await metadata.commit(UnitOfWork(changes: [.rememberIdentities(records)]))
    }

    /// Checks a version's registry-signed rekey record, if it has one, and returns the files as they are now stored.
    func currentFiles(
        _ stored: StoredVersion,
        signed files: [ModelStatement.File],
        in state: LedgerState
    ) throws(CofferRegistryError) -> [ModelStatement.File] {
        let label = "\(stored.model):\(stored.version)"
        let recordedAttestation = state.rekeys[stored.digest]
        guard let document = stored.rekeyEnvelope else {
            guard stored.rekeyedFiles.isEmpty else { throw .tampered("\(label): re-encrypted files without a rekey attestation") }
            if recordedAttestation != nil { throw .tampered("\(label): the rekey attestation the ledger records is gone") }
            return files
        }
        guard recordedAttestation == Digest.hex(Digest.sha256(Array(document))) else {
            throw .tampered("\(label): its rekey attestation is not the one the ledger records")
        }
        let recorded = try Self.verifyRekey(
            document,
            registryKeys: state.keys.map(\.identity),
            model: stored.model,
            version: stored.version,
            digest: stored.digest,
            signed: files
        )
        guard recorded.map({ "\($0.path) \($0.sealedSHA256) \($0.sealedSize)" }) == stored.rekeyedFiles else {
            throw .tampered("\(label): the re-encrypted files table disagrees with the rekey attestation")
        }
        return recorded
    }

    /// Verifies a rekey record against the registry's keys and the publisher-signed files; returns the files it names.
    static func verifyRekey(
        _ document: Data,
        registryKeys: [PublicIdentity],
        model: String,
        version: String,
        digest: String,
        signed files: [ModelStatement.File]
    ) throws(CofferRegistryError) -> [ModelStatement.File] {
        let label = "\(model):\(version)"
        let record: RekeyStatement
        do {
            let (_, payload) = try DSSEEnvelope(jsonBytes: Array(document)).verify(trusting: registryKeys)
            guard let parsed = RekeyStatement(try InTotoStatement(jsonBytes: payload)) else {
                throw CofferCryptoError.malformedEnvelope("not a rekey record")
            }
            record = parsed
        } catch {
            throw .tampered("\(label) rekey attestation: \(error)")
        }
        guard record.model == model, record.version == version, record.versionDigest == digest else {
            throw .tampered("\(label): the rekey attestation is for another version")
        }
        let recorded = record.files.sorted { $0.path < $1.path }
        let signed = files.sorted { $0.path < $1.path }
        guard recorded.map({ [$0.path, $0.plaintextSHA256, String($0.size)] }) == signed.map({ [$0.path, $0.plaintextSHA256, String($0.size)] })
        else {
            throw .tampered("\(label): the rekey attestation names other files than the signed statement")
        }
        return recorded
    }
}
