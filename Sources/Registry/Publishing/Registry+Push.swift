public import CofferCrypto
import Foundation
import GRDB
import Synchronization

extension Registry {
    /// Seals, signs and commits a new version.
    ///
    /// Blobs are made durable first; the version's rows are then committed in one `BEGIN IMMEDIATE`
    /// transaction, so a crash at any point leaves the whole version or none (orphan blobs go to `gc`).
    /// The data key is wrapped for the registry, the publisher and each of `request.recipients`.
    public func push(
        _ request: PushRequest,
        publisher: UnlockedIdentity,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferRegistryError)
        -> PushResult
    {
        let actor = try principal(for: publisher.identity)
        try require(.publisher, on: request.model, by: actor, action: "push", target: request.model)
        if request.overrideBudget { try require(.admin, on: request.model, by: actor, action: "push --override-budget", target: request.model) }
        do {
            let result = try pushVersion(request, publisher: publisher, overrideBy: request.overrideBudget ? actor.name : nil, progress: progress)
            try rememberRecipients([publisher.publicIdentity] + request.recipients)
            return result
        } catch {
            try? audit(principal: actor.name, action: "push", target: request.model, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private func pushVersion(
        _ request: PushRequest,
        publisher: UnlockedIdentity,
        overrideBy: String?,
        progress: ((Int) -> Void)?
    ) throws(CofferRegistryError)
        -> PushResult
    {
        try ModelReference.validate(name: request.model)
        if let version = request.version { try ModelReference.validate(version: version) }
        if let alias = request.alias { try ModelReference.validate(version: alias) }
        for key in request.tags.keys { try ModelReference.validate(version: key) }
        if let dataset = request.datasetID { try ModelReference.validate(datasetID: dataset) }
        var request = request
        request.privacy.fillFromSegments()  // as the statement's reader will
        try request.privacy.validate()
        let inputs = try InputFile.collect(request.paths)
        if let version = request.version, try versionID(model: request.model, version: version) != nil {
            throw .versionExists("\(request.model):\(version)")
        }
        var parentID: Int64? = nil
        if let parent = request.parent { parentID = try resolve(parent).id }
        // Refuse an over-budget or policy-violating push before sealing anything; both are checked again at commit.
        let state = try ledgerState()
        let charged = try Self.checkBudget(state, dataset: request.datasetID, privacy: request.privacy, override: overrideBy != nil)
        if request.alias != nil, !state.checksPrincipals, state.trusted[publisher.publicIdentity.keyID] == nil {
            throw .refused(
                "\(publisher.publicIdentity.name) is not a trusted signer of this registry, so it cannot move an alias: coffer trust add its .pub, or push without --alias"
            )
        }
        if let alias = request.alias {
            let facts = LedgerChange.AliasFacts(privacy: request.privacy, signer: publisher.publicIdentity.keyID, charged: charged)
            try checkPolicy(model: request.model, alias: alias, facts: facts, state: state)
        }
        let registryKey = try identity

        // Seal every file under one data key, each with its own nonce prefix, straight into the blob store.
        let dataKey = SecretKey.random()
        var files: [ModelStatement.File] = []
        var done = 0
        for input in inputs {
            let temporary = try blobs.makeTemporary()
            let before = done
            let file = try Self.seal(input, dataKey: dataKey, chunkSize: request.chunkSize, into: temporary) { progress?(before + $0) }
            try blobs.commit(temporary, digest: file.sealedSHA256)
            done += file.size
            files.append(file)
        }
        var wrapped: [(String, [UInt8])] = []
        for recipient in [registryKey, publisher.publicIdentity] + request.recipients where !wrapped.contains(where: { $0.0 == recipient.keyID }) {
            wrapped.append((recipient.keyID, dataKey.wrap(for: recipient).encoded))
        }

        let lineage = ModelStatement.Lineage(
            parent: request.parent?.description,
            datasetID: request.datasetID,
            datasetDigest: request.datasetDigest,
            trainingConfigDigest: request.trainingConfigDigest
        )
        let created = Self.now()
        do throws(CofferRegistryError) {
            // An automatic version is chosen again if another process commits the same number first.
            for _ in 0..<20 {
                var version = request.version ?? ""
                if request.version == nil { version = try nextVersion(model: request.model) }
                let signed = try Self.sign(request, version: version, files: files, lineage: lineage, created: created, publisher: publisher.identity)
                let commit = VersionCommit(
                    statement: signed.statement,
                    digest: signed.digest,
                    envelope: signed.envelope,
                    bundle: signed.bundle,
                    publisher: publisher.publicIdentity,
                    wrapped: wrapped,
                    parentID: parentID,
                    alias: request.alias,
                    tags: request.tags,
                    automatic: request.version == nil,
                    overrideBy: overrideBy,
                    reason: "sha256:\(signed.digest)"
                )
                if try self.commit(commit, signer: Signer(publisher)) {
                    return PushResult(model: request.model, version: version, digest: signed.digest, files: files.count, bytes: done)
                }
            }
            throw CofferRegistryError.database("could not allocate a version number: too many concurrent pushes")
        } catch {
            // Nothing of a refused or failed commit stays: its blobs belong to no version.
            for file in files { blobs.remove(file.sealedSHA256) }
            throw error
        }
    }

    /// Seals one input file under `dataKey` into `output` (its own nonce prefix), with both digests.
    static func seal(
        _ input: InputFile,
        dataKey: borrowing SecretKey,
        chunkSize: Int,
        into output: AtomicOutputFile,
        progress: @escaping (Int) -> Void
    ) throws(CofferRegistryError) -> ModelStatement.File {
        let source: FileDescriptorStream
        do { source = try FileDescriptorStream(readingFrom: input.source) } catch { throw .crypto(error) }
        let summary: SealedFile.Summary
        do {
            summary = try SealedFile.seal(
                from: source,
                to: output,
                dataKey: dataKey,
                stanzas: [],
                chunkSize: chunkSize,
                digests: true,
                progress: progress
            )
        } catch {
            throw .crypto(error)
        }
        return .init(
            path: input.path,
            size: summary.plaintextLength,
            plaintextSHA256: Digest.hex(summary.plaintextSHA256!),
            sealedSHA256: Digest.hex(summary.sealedSHA256!),
            sealedSize: summary.sealedLength
        )
    }

    /// A version's statement signed by its publisher: the DSSE envelope, the OpenSSF bundle and the digest.
    struct SignedStatement {
        var statement: ModelStatement
        var envelope: DSSEEnvelope
        var bundle: [UInt8]
        var digest: String
    }

    static func sign(
        _ request: PushRequest,
        version: String,
        files: [ModelStatement.File],
        lineage: ModelStatement.Lineage,
        created: String,
        publisher: borrowing Identity
    ) throws(CofferRegistryError) -> SignedStatement {
        let statement = ModelStatement(
            model: request.model,
            version: version,
            files: files,
            privacy: request.privacy,
            lineage: lineage,
            chunkSize: request.chunkSize,
            created: created,
            publisher: publisher.publicIdentity,
            message: request.message
        )
        let payload = statement.statement.jsonBytes
        let bundle: [UInt8]
        do throws(CofferCryptoError) {
            bundle = try ModelSigningBundle.sign(
                modelName: modelDirectoryName(request),
                resources: files.map { .init(name: $0.path, sha256: Digest.bytes(fromHex: $0.plaintextSHA256)!) },
                identity: publisher
            )
        } catch {
            throw .crypto(error)
        }
        return SignedStatement(
            statement: statement,
            envelope: DSSEEnvelope.sign(payload: payload, identity: publisher),
            bundle: bundle,
            digest: Digest.hex(Digest.sha256(payload))
        )
    }

    /// Everything a version's commit writes: the signed statement and bundle, the wrapped keys, lineage, the alias
    /// and tags it is pushed with, and who overrode a budget.
    struct VersionCommit {
        var statement: ModelStatement
        var digest: String
        var envelope: DSSEEnvelope
        var bundle: [UInt8]
        /// The key that signed the statement (its trusted name need not be the name it declares).
        var publisher: PublicIdentity
        var wrapped: [(String, [UInt8])]
        var parentID: Int64?
        var alias: String?
        var tags: [String: String]
        /// Whether the version number was chosen automatically (a taken number is then retried, not refused).
        var automatic: Bool
        var overrideBy: String?
        /// The push's audit reason.
        var reason: String
    }

    /// Inserts the version's rows, its `version` record (and `alias.set` record), signed by `signer`, and the push's
    /// audit entry in one transaction; returns false when an automatic version number was taken meanwhile.
    func commit(_ commit: VersionCommit, signer: Signer) throws(CofferRegistryError) -> Bool {
        let statement = commit.statement
        let state = try database.write { db -> LedgerState? in
            let now = Self.now()
            // In the same transaction as the insert: two pushes cannot both fit in the last of a budget.
            let current = try refreshed(ledger.withLock { $0 }, db: db)
            let datasetID = statement.lineage.datasetID
            let charged = try Self.checkBudget(current, dataset: datasetID, privacy: statement.privacy, override: commit.overrideBy != nil)
            try db.execute(sql: "INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)", arguments: [statement.model, now])
            let modelID = try Int64.fetchOne(db, sql: "SELECT id FROM models WHERE name = ?", arguments: [statement.model])!
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM versions WHERE model_id = ? AND version = ?", arguments: [modelID, statement.version]) != nil
            {
                if commit.automatic { return nil }
                throw CofferRegistryError.versionExists("\(statement.model):\(statement.version)")
            }
            let p = statement.privacy
            let l = statement.lineage
            try db.execute(
                sql: """
                    INSERT INTO versions (model_id, version, number, digest, publisher_key_id, message, created_at,
                        parent_version_id, dataset_id, dataset_digest, training_config_digest,
                        mechanism, epsilon, delta, accountant, noise_multiplier, clipping_norm, sampling_rate, steps, epochs,
                        dataset_size, privacy_unit, pruning_method, pruning_ratio, achieved_sparsity)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    modelID, statement.version, Int64(statement.version), commit.digest, statement.publisherKeyID, statement.message,
                    statement.created, commit.parentID, l.datasetID, l.datasetDigest, l.trainingConfigDigest,
                    p.mechanism, p.epsilon, p.delta, p.accountant, p.noiseMultiplier, p.clippingNorm, p.samplingRate, p.steps, p.epochs,
                    p.datasetSize, p.privacyUnit, p.pruningMethod, p.pruningRatio, p.achievedSparsity,
                ]
            )
            let versionID = db.lastInsertedRowID
            if charged, let datasetID {
                try db.execute(
                    sql: "INSERT INTO budget_charges (version_id, dataset_id, charged_at, override_by) VALUES (?, ?, ?, ?)",
                    arguments: [versionID, datasetID, now, commit.overrideBy]
                )
            }
            if !p.segments.isEmpty || p.claimedEpsilon != nil {
                try db.execute(
                    sql: "INSERT INTO version_privacy (version_id, segments, claimed_epsilon) VALUES (?, ?, ?)",
                    arguments: [versionID, String(decoding: try JSONEncoder().encode(p.segments), as: UTF8.self), p.claimedEpsilon]
                )
            }
            for file in statement.files {
                try db.execute(
                    sql: "INSERT INTO files (version_id, path, size, plaintext_sha256, sealed_sha256, sealed_size) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [versionID, file.path, file.size, file.plaintextSHA256, file.sealedSHA256, file.sealedSize]
                )
            }
            for (keyID, stanza) in commit.wrapped {
                try db.execute(
                    sql: "INSERT INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (?, ?, ?)",
                    arguments: [versionID, keyID, Data(stanza)]
                )
            }
            try db.execute(
                sql: "INSERT INTO attestations (version_id, kind, document) VALUES (?, 'dsse', ?), (?, 'model-signing', ?)",
                arguments: [versionID, Data(commit.envelope.jsonBytes), versionID, Data(commit.bundle)]
            )
            for (key, value) in commit.tags {
                try db.execute(sql: "INSERT INTO tags (version_id, key, value) VALUES (?, ?, ?)", arguments: [versionID, key, value])
            }
            let facts = LedgerChange.VersionFacts(
                model: statement.model,
                version: statement.version,
                digest: commit.digest,
                publisher: commit.publisher,
                dataset: datasetID,
                mechanism: p.mechanism,
                segments: p.segments,
                charged: charged,
                overrideBy: commit.overrideBy
            )
            var (state, _, actor) = try append(.version(facts), signer: signer, db: db)
            if let alias = commit.alias {
                let aliasFacts = LedgerChange.AliasFacts(privacy: p, signer: commit.publisher.keyID, charged: charged)
                try checkPolicy(model: statement.model, alias: alias, facts: aliasFacts, state: state)
                (state, _, _) = try append(
                    .aliasSet(model: statement.model, alias: alias, version: statement.version, digest: commit.digest, facts: aliasFacts),
                    signer: signer,
                    db: db
                )
            }
            let target = "\(statement.model):\(statement.version)"
            try Self.appendAudit(db, principal: actor, action: "push", target: target, outcome: .ok, reason: commit.reason)
            return state
        }
        guard let state else { return false }
        try adopt(state)
        return true
    }

    /// The subject name of the model-signing bundle: the pushed directory's name, else the model name's last segment.
    static func modelDirectoryName(_ request: PushRequest) -> String {
        if request.paths.count == 1 {
            let url = URL(fileURLWithPath: request.paths[0]).standardizedFileURL
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue, url.lastPathComponent != "/" {
                return url.lastPathComponent
            }
        }
        return String(request.model.split(separator: "/").last ?? Substring(request.model))
    }

    /// One more than the largest integer version of `model`, or 1.
    func nextVersion(model: String) throws(CofferRegistryError) -> String {
        let highest = try database.read { db in
            try Int64.fetchOne(
                db,
                sql: "SELECT MAX(v.number) FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?",
                arguments: [model]
            )
        }
        return String((highest ?? 0) + 1)
    }

    func versionID(model: String, version: String) throws(CofferRegistryError) -> Int64? {
        try database.read { db in
            try Int64.fetchOne(
                db,
                sql: "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?",
                arguments: [model, version]
            )
        }
    }
}
