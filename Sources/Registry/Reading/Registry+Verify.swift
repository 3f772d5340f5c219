public import CofferCrypto
import Foundation
import Synchronization

/// A version as the database holds it.
struct StoredVersion: Sendable {
    var id: Int64
    var model: String
    var version: String
    var digest: String
    var publisherKeyID: String
    var privacy: PrivacyMetadata
    var datasetID: String?
    var datasetDigest: String?
    var trainingConfigDigest: String?
    var files: [ModelStatement.File]
    var envelope: Data?
    var modelSignature: Data?
    /// `(at, by)` when the version was erased: its keys and blobs are gone.
    var erased: (at: String, by: String)?
    /// The registry-signed rekey record and the re-encrypted files ("path sealed_sha256 sealed_size", by path), if any.
    var rekeyEnvelope: Data? = nil
    var rekeyedFiles: [String] = []
    /// Whether the evidence columns `list --where` filters on are those of the stored evidence.
    var evidenceColumnsAgree = true

    /// Refuses to go on with an erased version, saying when and by whom it was erased.
    func ensureNotErased() throws(CofferRegistryError) {
        if let erased { throw .erased("\(model):\(version) was erased at \(erased.at) by \(erased.by)") }
    }
}

/// What `verify` checked.
public struct VerifyReport: Sendable, Equatable {
    public var model: String
    public var version: String
    public var digest: String
    public var signer: String
    public var signerKeyID: String
    public var files: Int
    /// Whether the files were also decrypted in memory and their plaintext digests checked.
    public var readData: Bool
}

extension Registry {
    /// Resolves `NAME`, `NAME:VERSION` or `NAME@ALIAS` to a committed version. `NAME` and `NAME@ALIAS` are resolved
    /// on the verified ledger state (never on the `aliases` table); the row found must carry the digest the ledger names.
    func resolve(_ reference: ModelReference) async throws(CofferRegistryError) -> (id: Int64, version: String) {
        try await resolve(reference, in: try await ledgerState())
    }

    /// ``resolve(_:)`` against a ledger state the caller already holds.
    func resolve(_ reference: ModelReference, in state: LedgerState) async throws(CofferRegistryError) -> (id: Int64, version: String) {
        guard let latest = state.latest[reference.name] else { throw .unknownModel(reference.name) }
        let (version, digest): (String, String?)
        switch reference.selector {
        case .latest: (version, digest) = (latest.version, latest.digest)
        case .version(let name): (version, digest) = (name, nil)
        case .alias(let alias):
            guard let target = state.alias(alias, of: reference.name) else { throw .unknownAlias(reference.description) }
            (version, digest) = (target.version, target.digest)
        }
        guard let row = try await metadata.version(model: reference.name, version: version) else {
            if digest != nil { throw .tampered("the ledger names \(reference.name):\(version), which the registry no longer holds") }
            throw .unknownVersion(reference.description)
        }
        if let digest, row.digest != digest {
            throw .tampered("\(reference.name):\(version) is not the version the ledger recorded (digest \(digest.prefix(12))...)")
        }
        return (row.id, version)
    }

    /// Resolves a reference for a use that releases or serves the version (pull, verify, session open): through an
    /// alias, the version must meet the alias's policies as they stand now. `held`: a ledger state the caller holds and
    /// goes on with (else the current one is read).
    func resolveForUse(_ reference: ModelReference, in held: LedgerState? = nil) async throws(CofferRegistryError) -> (id: Int64, version: String) {
        let state = if let held { held } else { try await ledgerState() }
        let resolved = try await resolve(reference, in: state)
        if case .alias(let alias) = reference.selector, let target = state.alias(alias, of: reference.name) {
            try await checkPolicy(model: reference.name, alias: alias, digest: target.digest, state: state)
        }
        return resolved
    }

    /// The row of `model`'s version with statement digest `digest`.
    func versionRow(model: String, digest: String) async throws(CofferRegistryError) -> Int64 {
        guard let id = try await metadata.versionID(model: model, digest: digest) else {
            throw .tampered("the ledger names a version of \(model) (digest \(digest.prefix(12))...) that the registry no longer holds")
        }
        return id
    }

    /// The ledger's word on a version against its signed statement, for every reader, local or remote: its record says
    /// what the statement says (as fsck once compared alone; a record may leave the statistics' and batches' source out,
    /// as every record before 2026-12-06 does), and every charge the replay holds for it, a second record's included, is
    /// its statement's history and one a budget may take (helper-70, helper-71: a forged record spent a budget on a
    /// version whose statement ruled the charge out, and every reader released it).
    static func checkRecord(
        _ facts: LedgerChange.VersionFacts,
        of statement: ModelStatement,
        in state: LedgerState,
        label: String
    )
        throws(CofferRegistryError)
    {
        let p = statement.privacy
        guard facts.dataset == statement.lineage.datasetID, facts.segments == p.segments, facts.mechanism == p.mechanism,
            facts.standardisation == nil || facts.standardisation == p.standardisation,
            facts.batchSampling == nil || facts.batchSampling == p.batchSampling
        else {
            throw .tampered(
                "\(label): its ledger record disagrees with its signed statement (dataset, history, mechanism, standardisation or batches)"
            )
        }
        for (dataset, charge) in state.charges(of: facts.digest) {
            guard p.chargeRefusal == nil else {
                throw .tampered("\(label): charged to a budget, though its statement says its training, statistics or batches are outside DP")
            }
            guard dataset == statement.lineage.datasetID, charge.segments == p.segments else {
                throw .tampered("\(label): charged to dataset \(dataset) with another history than its statement's")
            }
        }
    }

    /// The `version` record of `model:version`, checked: it belongs to this registry, is signed by its publisher or by
    /// a registry key, and is the record the verified chain holds at its place. A version without one was never
    /// committed here.
    func versionRecord(model: String, version: String, state: LedgerState) async throws(CofferRegistryError) -> LedgerChange.VersionFacts {
        let label = LedgerChange.VersionFacts.label(model: model, version: version)
        guard let row = try await metadata.firstLedgerRecord(kind: "version", object: "version:\(label)") else {
            throw .tampered("\(label) has no version record in the ledger: it was not committed to this registry")
        }
        let envelope = Array(row.envelope)
        let record = try parsedVersionRecords.value(for: [envelope]) { () throws(CofferRegistryError) in try Self.parse(envelope) }
        guard record.seq == row.seq else { throw .tampered("\(label): its ledger record is not where the ledger holds it") }
        let facts = try Self.checkVersionRecord(record, model: model, version: version, state: state)
        try await confirmReplayed(record, in: state, label: label)
        return facts
    }

    /// Confirms that `record`, read below the verified head, is the one the chain held when it was verified: the state
    /// vouches for its last record's hash and its waypoints', not for the rows before them, which someone able to write
    /// the database and sign as a publisher could swap (helper-72). Version records a walk passed are remembered, so
    /// reading versions in order walks each stretch once.
    private func confirmReplayed(_ record: LedgerRecord, in state: LedgerState, label: String) async throws(CofferRegistryError) {
        if replayedVersionRecords.withLock({ $0.contains(record.hash) }) { return }
        var passed = [record.hash]
        let replayed = try await RemoteLedger.isReplayed(record, in: state, from: StoredLedger(registry: self)) { later in
            if later.version != nil { passed.append(later.hash) }
        }
        guard replayed else {
            throw .tampered("\(label): its ledger record is not the one the verified chain holds at \(record.seq): the database was rewritten")
        }
        replayedVersionRecords.withLock { known in
            if known.count + passed.count > 65_536 { known.removeAll() }
            known.formUnion(passed)
        }
    }

    /// Checks a `version` record found outside the replay (by look-up, or sent by a server with a package): it belongs to
    /// this registry and lies within the verified chain, it names `model:version`, and it is signed by the publisher it
    /// names, by a key of the registry's chain, or (an import) by a principal holding the publisher or admin role on the
    /// model. The caller must then check that its digest and publisher are those of
    /// the statement it verified: only that publisher (or the registry) can have recorded that statement here.
    static func checkVersionRecord(
        _ record: LedgerRecord,
        model: String,
        version: String,
        state: LedgerState
    ) throws(CofferRegistryError)
        -> LedgerChange.VersionFacts
    {
        let label = LedgerChange.VersionFacts.label(model: model, version: version)
        guard record.registry == state.registry, record.seq >= 1, record.seq <= state.seq, case .version(let facts) = record.change,
            facts.model == model, facts.version == version
        else { throw .tampered("\(label): its ledger record is not this version's in this registry") }
        var signer = record.signerKeyID == facts.publisher.keyID ? facts.publisher : state.key(record.signerKeyID)?.identity
        // An import is recorded by the importing principal, a publisher of the model, not by the statement's publisher.
        if signer == nil, let principal = state.principals[record.by], principal.keyID == record.signerKeyID,
            state.holds(record.by, .publisher, on: model) || state.holds(record.by, .admin, on: model)
        {
            signer = principal
        }
        guard let signer, record.isSigned(by: signer) else { throw .tampered("\(label): its ledger record's signature does not verify") }
        return facts
    }

    func loadVersion(_ id: Int64) async throws(CofferRegistryError) -> StoredVersion {
        try await loadVersion(id, in: try await ledgerState())
    }

    /// ``loadVersion(_:)`` against a ledger state the caller already holds.
    func loadVersion(_ id: Int64, in state: LedgerState) async throws(CofferRegistryError) -> StoredVersion {
        guard let rows = try await metadata.storedVersion(id: id) else { throw .tampered("version row \(id) is gone") }
        var privacy = rows.row.privacy
        if let segments = rows.segments {
            privacy.segments = PrivacyMetadata.segments(fromJSON: segments)
            privacy.claimedEpsilon = rows.claimedEpsilon
        }
        var stored = StoredVersion(
            id: id,
            model: rows.model,
            version: rows.row.version,
            digest: rows.row.digest,
            publisherKeyID: rows.row.publisherKeyID,
            privacy: privacy,
            datasetID: rows.row.datasetID,
            datasetDigest: rows.row.datasetDigest,
            trainingConfigDigest: rows.row.trainingConfigDigest,
            files: rows.files.map {
                ModelStatement.File(
                    path: $0.path,
                    size: $0.size,
                    plaintextSHA256: $0.plaintextSHA256,
                    sealedSHA256: $0.sealedSHA256,
                    sealedSize: $0.sealedSize
                )
            },
            envelope: rows.envelope,
            modelSignature: rows.bundle,
            erased: rows.erasedAt.map { ($0, rows.erasedBy ?? "-") },
            rekeyEnvelope: rows.rekeyAttestation,
            rekeyedFiles: rows.rekeyedFiles.map { "\($0.path) \($0.sealedSHA256) \($0.sealedSize)" }
        )
        let evidence = privacy.evidence
        stored.evidenceColumnsAgree =
            (rows.row.evidence == nil) == (evidence == nil) && rows.row.auditEpsilon == evidence?.auditEpsilon
            && rows.row.membershipAUC == evidence?.membershipAUC && rows.row.membershipTPR == evidence?.membershipTPR
        // An erasure is what the ledger says, whatever the erasures table holds.
        if let erasure = state.erased[stored.digest] { stored.erased = (erasure.at, erasure.by) }
        return stored
    }

    /// Checks the signature against the trusted signers and that every database row agrees with the signed statement.
    func authenticate(_ stored: StoredVersion) async throws(CofferRegistryError) -> (ModelStatement, PublicIdentity) {
        try await authenticate(stored, in: try await ledgerState())
    }

    /// ``authenticate(_:)`` against a ledger state the caller already holds.
    func authenticate(_ stored: StoredVersion, in state: LedgerState) async throws(CofferRegistryError) -> (ModelStatement, PublicIdentity) {
        let label = "\(stored.model):\(stored.version)"
        guard let document = stored.envelope else { throw .tampered("\(label) has no signed statement") }
        guard let bundle = stored.modelSignature else { throw .tampered("\(label) has no model-signing bundle") }
        // Keyed by every input, a trusted identity by its name and keys (trusted again under another name, another key).
        let trusted = state.trustedIdentities
        let inputs =
            [Array(document), Array(bundle), Array(stored.model.utf8), Array(stored.version.utf8), Array(stored.digest.utf8)]
            + trusted.flatMap { [Array($0.name.utf8), $0.ed25519, $0.x25519, $0.p256] }
        let (statement, signer) = try verifiedStatements.value(for: inputs) { () throws(CofferRegistryError) in
            try Self.verifySigned(
                envelope: document,
                bundle: bundle,
                trusting: trusted,
                model: stored.model,
                version: stored.version,
                digest: stored.digest
            )
        }
        guard stored.publisherKeyID == signer.keyID else { throw .tampered("\(label): the publisher recorded is not the signer") }
        let facts = try await versionRecord(model: stored.model, version: stored.version, state: state)
        guard facts.digest == stored.digest else { throw .tampered("\(label): its statement is not the one its ledger record names") }
        guard facts.publisher.keyID == signer.keyID else { throw .tampered("\(label): its ledger record names another publisher than its signer") }
        try Self.checkRecord(facts, of: statement, in: state, label: label)
        guard statement.files.sorted(by: { $0.path < $1.path }) == stored.files else {
            throw .tampered("\(label): the files table disagrees with the signed statement")
        }
        guard statement.privacy == stored.privacy, stored.evidenceColumnsAgree else {
            throw .tampered("\(label): the privacy columns disagree with the signed statement")
        }
        guard statement.lineage.datasetID == stored.datasetID, statement.lineage.datasetDigest == stored.datasetDigest,
            statement.lineage.trainingConfigDigest == stored.trainingConfigDigest
        else { throw .tampered("\(label): the lineage columns disagree with the signed statement") }
        // After a rekey the blobs are the ones the registry's signed record names; the plaintext digests stay the publisher's.
        var current = statement
        current.files = try currentFiles(stored, signed: statement.files.sorted { $0.path < $1.path }, in: state)
        return (current, signer)
    }

    /// The checks that need no database: the DSSE signature by one of `trusted`, the statement naming this model,
    /// version and digest, safe paths, and the OpenSSF bundle signed by the same publisher over the same files.
    /// A remote client runs exactly these against its own trusted signers.
    static func verifySigned(
        envelope document: Data,
        bundle: Data,
        trusting trusted: [PublicIdentity],
        model: String,
        version: String,
        digest: String
    ) throws(CofferRegistryError) -> (ModelStatement, PublicIdentity) {
        let label = LedgerChange.VersionFacts.label(model: model, version: version)
        let envelope: DSSEEnvelope
        do { envelope = try DSSEEnvelope(jsonBytes: Array(document)) } catch { throw .tampered("\(label): \(error)") }
        let signer: PublicIdentity
        let payload: [UInt8]
        do throws(CofferCryptoError) {
            (signer, payload) = try envelope.verify(trusting: trusted)
        } catch .untrustedSigner(let keyID) {
            throw .untrustedSigner(keyID: keyID)
        } catch {
            throw .tampered("\(label): \(error)")
        }
        let statement: ModelStatement
        do { statement = try ModelStatement(try InTotoStatement(jsonBytes: payload)) } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .tampered("\(label): \(error)")
        }
        guard Digest.hex(Digest.sha256(payload)) == digest else {
            throw .tampered("\(label): the version digest does not match its statement")
        }
        guard statement.model == model, statement.version == version else {
            throw .tampered("\(label): the statement is for \(statement.model):\(statement.version)")
        }
        guard statement.publisherKeyID == signer.keyID else { throw .tampered("\(label): the publisher recorded is not the signer") }
        for file in statement.files { try InputFile.validate(relativePath: file.path) }
        let resources: [ModelSigningBundle.Resource]
        do throws(CofferCryptoError) {
            resources = try ModelSigningBundle.verify(Array(bundle), publicKey: signer.p256, exact: true)
        } catch {
            throw .tampered("\(label) model-signing bundle: \(error)")
        }
        let expected = statement.files.map { ModelSigningBundle.Resource(name: $0.path, sha256: Digest.bytes(fromHex: $0.plaintextSHA256) ?? []) }
        guard resources.sorted(by: { $0.name < $1.name }) == expected.sorted(by: { $0.name < $1.name }) else {
            throw .tampered("\(label): the model-signing bundle names other files than the statement")
        }
        return (statement, signer)
    }

    /// Verifies a version without any key: signature, trust, database-vs-statement agreement, and the
    /// SHA-256 and size of every blob.
    ///
    /// - Parameter principal: who asked, as the `verify` audit entry names them (`-`: nobody in particular).
    public func verify(_ reference: ModelReference, auditedAs principal: String = "-") async throws(CofferRegistryError) -> VerifyReport {
        do throws(CofferRegistryError) {
            let stored = try await loadVersion(try await resolveForUse(reference).id)
            try stored.ensureNotErased()
            let (statement, signer) = try await authenticate(stored)
            for file in statement.files {
                let source = try await blobSource(file.sealedSHA256, what: file.path)
                let digest: [UInt8]
                do {
                    digest = try await Offload.run { () throws(CofferCryptoError) -> [UInt8] in try Digest.sha256(of: source.value).digest }
                } catch {
                    guard source.failedTampered else { throw CofferRegistryError.tampered("blob of \(file.path) is missing or unreadable") }
                    throw CofferRegistryError.tampered("blob of \(file.path) does not match its signed SHA-256")
                }
                guard Digest.hex(digest) == file.sealedSHA256 else {
                    throw CofferRegistryError.tampered("blob of \(file.path) does not match its signed SHA-256")
                }
            }
            try await audit(principal: principal, action: "verify", target: "\(stored.model):\(stored.version)", outcome: .ok, reason: "")
            return report(stored, signer: signer, files: statement.files.count, readData: false)
        } catch {
            try? await audit(principal: principal, action: "verify", target: reference.description, outcome: .failed, reason: error.description)
            throw error
        }
    }

    /// Verifies as ``verify(_:)`` does, and also decrypts every file in memory and checks its plaintext digest.
    public func verify(_ reference: ModelReference, readingDataWith identity: UnlockedIdentity) async throws(CofferRegistryError) -> VerifyReport {
        let actor = try await principal(for: identity.identity)
        try await require(.reader, on: reference.name, by: actor, action: "verify", target: reference.description)
        try await require(.decrypt, on: reference.name, by: actor, action: "verify", target: reference.description)
        do {
            let stored = try await loadVersion(try await resolveForUse(reference).id)
            try stored.ensureNotErased()
            let (statement, signer) = try await authenticate(stored)
            let dataKey = try await unwrapDataKey(stored, identity: identity)
            for file in statement.files { try await open(file, dataKey: dataKey, into: DiscardingSink(), checkingBlobDigest: true) }
            try await audit(principal: actor.name, action: "verify", target: "\(stored.model):\(stored.version)", outcome: .ok, reason: "read data")
            return report(stored, signer: signer, files: statement.files.count, readData: true)
        } catch {
            try? await audit(principal: actor.name, action: "verify", target: reference.description, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private func report(_ stored: StoredVersion, signer: PublicIdentity, files: Int, readData: Bool) -> VerifyReport {
        VerifyReport(
            model: stored.model,
            version: stored.version,
            digest: stored.digest,
            signer: signer.name,
            signerKeyID: signer.keyID,
            files: files,
            readData: readData
        )
    }
}
