public import CofferCrypto
import Foundation
import GRDB

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
            let at = p["rekeyed_at"]?.stringValue, let by = p["by"]?.stringValue, let chunk = p["chunk_size"]?.numberValue,
            case .array(let items)? = p["files"]
        else { return nil }
        var files: [ModelStatement.File] = []
        for item in items {
            guard case .object(let f) = item, let path = f["path"]?.stringValue, let size = f["size"]?.numberValue,
                let sealed = f["sealed_sha256"]?.stringValue, let sealedSize = f["sealed_size"]?.numberValue,
                let plaintext = statement.subject.first(where: { $0.name == path })?.digest["sha256"]
            else { return nil }
            files.append(.init(path: path, size: Int(size), plaintextSHA256: plaintext, sealedSHA256: sealed, sealedSize: Int(sealedSize)))
        }
        self.init(model: model, version: version, versionDigest: digest, rekeyedAt: at, by: by, chunkSize: Int(chunk), files: files)
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
    ) throws(CofferRegistryError) -> RekeyResult {
        try require(signer, .admin, on: reference.name, action: "rekey", target: reference.description)
        let registryKey = try identity
        guard unlocked.publicIdentity.keyID == registryKey.keyID else {
            throw .refused("rekey needs the registry's own identity (\(Self.identityName).key, \(registryKey.keyID))")
        }
        let principal = try acting(signer, in: try ledgerState()).principal
        let recordSigner = principal.name == "registry" ? Signer(unlocked) : Signer.registry(unlocked, for: principal)
        let stored = try loadVersion(try resolve(reference).id)
        try stored.ensureNotErased()
        let (statement, _) = try authenticate(stored)
        let old = KeyBox(try unwrapDataKey(stored, identity: unlocked.identity))
        let fresh = SecretKey.random()
        var files: [ModelStatement.File] = []
        do {
            for file in statement.files { files.append(try reseal(file, of: stored, from: old, to: fresh, chunkSize: statement.chunkSize)) }
        } catch {
            for file in files { blobs.remove(file.sealedSHA256) }
            throw error
        }

        // Wrap the new key for everyone who held the old one and whom the registry can name.
        let holders = try database.read { db in
            try String.fetchAll(db, sql: "SELECT recipient_key_id FROM wrapped_keys WHERE version_id = ?", arguments: [stored.id])
        }
        var wrapped: [(String, [UInt8])] = []
        var dropped: [String] = []
        for keyID in holders {
            if let recipient = try knownIdentity(keyID) {
                wrapped.append((keyID, fresh.wrap(for: recipient).encoded))
            } else {
                dropped.append(keyID)
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
        let state: LedgerState
        do {
            state = try database.write { db -> LedgerState in
                let change = LedgerChange.rekey(
                    model: stored.model,
                    version: stored.version,
                    digest: stored.digest,
                    attestation: Digest.hex(Digest.sha256(attestation))
                )
                let (state, _, _) = try append(change, signer: recordSigner, db: db)
                try db.execute(sql: "DELETE FROM wrapped_keys WHERE version_id = ?", arguments: [stored.id])
                for (keyID, stanza) in wrapped {
                    try db.execute(
                        sql: "INSERT INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (?, ?, ?)",
                        arguments: [stored.id, keyID, Data(stanza)]
                    )
                }
                try db.execute(sql: "DELETE FROM rekeyed_files WHERE version_id = ?", arguments: [stored.id])
                for file in files {
                    try db.execute(
                        sql: "INSERT INTO rekeyed_files (version_id, path, sealed_sha256, sealed_size) VALUES (?, ?, ?, ?)",
                        arguments: [stored.id, file.path, file.sealedSHA256, file.sealedSize]
                    )
                }
                try db.execute(sql: "DELETE FROM attestations WHERE version_id = ? AND kind = 'rekey'", arguments: [stored.id])
                try db.execute(
                    sql: "INSERT INTO attestations (version_id, kind, document) VALUES (?, 'rekey', ?)",
                    arguments: [stored.id, Data(attestation)]
                )
                try db.execute(
                    sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE version_id = ?",
                    arguments: [Self.now(), stored.id]
                )
                return state
            }
        } catch {
            for file in files { blobs.remove(file.sealedSHA256) }
            throw error
        }
        try adopt(state)
        for file in statement.files { blobs.remove(file.sealedSHA256) }
        try database.checkpointAndTruncateLog()
        let label = "\(stored.model):\(stored.version)"
        try audit(
            principal: principal.name,
            action: "rekey",
            target: label,
            outcome: .ok,
            reason: "wrapped for \(wrapped.count)"
                + (dropped.isEmpty ? "" : "; not re-wrapped (unknown identity): \(dropped.joined(separator: ", "))")
        )
        return RekeyResult(model: stored.model, version: stored.version, recipients: wrapped.map(\.0), dropped: dropped)
    }

    /// Decrypts `file` on a thread of its own into a pipe, and seals what comes out of the pipe under `fresh`
    /// into a new blob; both digests are checked against the signed plaintext digest.
    private func reseal(
        _ file: ModelStatement.File,
        of stored: StoredVersion,
        from old: KeyBox,
        to fresh: borrowing SecretKey,
        chunkSize: Int
    ) throws(CofferRegistryError) -> ModelStatement.File {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw .io(path: "pipe", reason: String(cString: strerror(errno))) }
        var reader: FileDescriptorStream? = FileDescriptorStream(ownedDescriptor: ends[0], path: "rekey pipe")
        let writerFD = ends[1]
        final class Outcome: @unchecked Sendable { var error: CofferRegistryError? }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            do throws(CofferRegistryError) {
                let writer = FileDescriptorStream(ownedDescriptor: writerFD, path: "rekey pipe")  // closed (EOF) when released
                try self.open(file, of: stored, dataKey: old.key, into: writer, checkingBlobDigest: true)
            } catch {
                outcome.error = error
            }
            done.signal()
        }
        thread.start()
        let temporary: AtomicOutputFile
        let summary: SealedFile.Summary
        do {
            temporary = try blobs.makeTemporary()
            summary = try SealedFile.seal(from: reader!, to: temporary, dataKey: fresh, stanzas: [], chunkSize: chunkSize, digests: true)
        } catch {
            // Drain the pipe so the decrypting thread finishes its writes (closing it instead would raise SIGPIPE).
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
            while let n = try? reader!.read(into: scratch), n > 0 { scratch.initializeMemory(as: UInt8.self, repeating: 0) }
            scratch.deallocate()
            reader = nil
            done.wait()
            throw outcome.error ?? (error as? CofferRegistryError) ?? .crypto(error as? CofferCryptoError ?? .io(path: "rekey", reason: "\(error)"))
        }
        reader = nil
        done.wait()
        if let error = outcome.error { throw error }
        guard Digest.hex(summary.plaintextSHA256!) == file.plaintextSHA256, summary.plaintextLength == file.size else {
            throw .tampered("\(file.path) changed while it was re-encrypted")
        }
        let digest = Digest.hex(summary.sealedSHA256!)
        try blobs.commit(temporary, digest: digest)
        return .init(path: file.path, size: file.size, plaintextSHA256: file.plaintextSHA256, sealedSHA256: digest, sealedSize: summary.sealedLength)
    }

    /// The public identity behind a key ID, from everything the registry knows: its own keys, recipients,
    /// principals and trusted signers.
    func knownIdentity(_ keyID: String) throws(CofferRegistryError) -> PublicIdentity? {
        if let key = try registryKey(keyID) { return key }
        let data = try database.read { db in
            try Data.fetchOne(
                db,
                sql: """
                    SELECT public_identity FROM recipient_identities WHERE key_id = ?1
                    UNION ALL SELECT public_identity FROM principals WHERE key_id = ?1
                    UNION ALL SELECT public_identity FROM trusted_signers WHERE key_id = ?1 LIMIT 1
                    """,
                arguments: [keyID]
            )
        }
        return data.flatMap { try? PublicIdentity(jsonBytes: Array($0)) }
    }

    /// Remembers recipients' public identities, so a later rekey can wrap for them again.
    func rememberRecipients(_ recipients: [PublicIdentity]) throws(CofferRegistryError) {
        guard !recipients.isEmpty else { return }
        try database.write { db in
            for recipient in recipients {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO recipient_identities (key_id, public_identity) VALUES (?, ?)",
                    arguments: [recipient.keyID, Data(recipient.jsonBytes)]
                )
            }
        }
    }

    /// Checks a version's registry-signed rekey record, if it has one, and returns the files as they are now stored.
    func currentFiles(_ stored: StoredVersion, signed files: [ModelStatement.File]) throws(CofferRegistryError) -> [ModelStatement.File] {
        let label = "\(stored.model):\(stored.version)"
        let state = try ledgerState()
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
