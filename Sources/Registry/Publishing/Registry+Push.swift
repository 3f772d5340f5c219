public import CofferCrypto
import Foundation
import Synchronization

/// A version just committed, and what its blob store is told of it.
struct CommittedVersion: Sendable {
    let result: PushResult
    let published: PublishedVersion
}

extension Registry {
    /// Seals, signs and commits a new version.
    ///
    /// Blobs are made durable in the blob store first; the version's rows and ledger record then commit in one
    /// transaction, so a crash at any point leaves the whole version or none (orphan blobs go to `gc`).
    /// The data key is wrapped for the registry, the publisher and each of `request.recipients`.
    ///
    /// The files are sealed while the ledger is read and the push judged (``PushSealing``), from `sealing` when the
    /// caller started it for this same request before opening the registry (``startSealing(_:home:)``); a refused or
    /// failed push stops it and removes what it sealed.
    public func push(
        _ request: PushRequest,
        publisher: UnlockedIdentity,
        sealing: PushSealing? = nil,
        progress: (@Sendable (Int) -> Void)? = nil
    ) async throws(CofferRegistryError)
        -> PushResult
    {
        let sealing = sealing ?? PushSealing(request) { [blobs] () throws(CofferRegistryError) in try blobs.makeTemporary() }
        guard sealing.claim() else { throw .invalidInput("the sealing given to push served a push or was cancelled already") }
        sealing.report(to: progress)
        do throws(CofferRegistryError) {
            guard sealing.isFor(request) else { throw .invalidInput("the sealing given to push was started for another request") }
            // The same directory, however named (by device and inode).
            if let sealedFor = sealing.home, !Directories.sameDirectory(sealedFor, home) {
                throw .invalidInput("the sealing given to push was started for the registry at \(sealedFor), not the one at \(home)")
            }
            // One read of the ledger for every check before the commit, which judges again on the state it commits on.
            let state = try await ledgerState()
            let actor = try await principal(for: publisher.identity, in: state)
            try await require(.publisher, on: request.model, by: actor, action: "push", target: request.model, in: state)
            if request.overrideBudget {
                try await require(.admin, on: request.model, by: actor, action: "push --override-budget", target: request.model, in: state)
            }
            do throws(CofferRegistryError) {
                return try await pushVersion(
                    request,
                    on: state,
                    sealing: sealing,
                    publisher: publisher,
                    overrideBy: request.overrideBudget ? actor.name : nil
                )
            } catch {
                try? await audit(principal: actor.name, action: "push", target: request.model, outcome: .failed, reason: error.description)
                throw error
            }
        } catch {
            await sealing.cancel()
            throw error
        }
    }

    private func pushVersion(
        _ request: PushRequest,
        on state: LedgerState,
        sealing: PushSealing,
        publisher: UnlockedIdentity,
        overrideBy: String?
    ) async throws(CofferRegistryError)
        -> PushResult
    {
        try ModelReference.validate(name: request.model)
        if let version = request.version { try ModelReference.validate(version: version) }
        if let alias = request.alias { try ModelReference.validate(version: alias) }
        for key in request.tags.keys { try ModelReference.validate(version: key) }
        if let dataset = request.datasetID { try ModelReference.validate(datasetID: dataset) }
        var request = request
        request.privacy.fillFromSegments()  // as the statement's reader will
        try request.privacy.validateForPush()
        let inputs = try await sealing.files()
        if let version = request.version, try await metadata.version(model: request.model, version: version) != nil {
            throw .versionExists("\(request.model):\(version)")
        }
        var parentID: Int64? = nil
        // On a fresh read: a parent pushed since `state` was read would otherwise look like a row the ledger does not have.
        if let parent = request.parent { parentID = try await resolve(parent).id }
        // Refuse an over-budget or policy-violating push before storing anything; both are judged again at commit.
        let charged = try Self.checkBudget(
            state,
            model: request.model,
            dataset: request.datasetID,
            privacy: request.privacy,
            override: overrideBy != nil
        )
        if request.alias != nil, !state.checksPrincipals, state.trusted[publisher.publicIdentity.keyID] == nil {
            throw .refused(
                "\(publisher.publicIdentity.name) is not a trusted signer of this registry, so it cannot move an alias: coffer trust add its .pub, or push without --alias"
            )
        }
        if let alias = request.alias {
            let facts = LedgerChange.AliasFacts(privacy: request.privacy, signer: publisher.publicIdentity.keyID, charged: charged)
            try checkPolicy(model: request.model, alias: alias, facts: facts, state: state)
        }
        let registryKey = try Self.currentKey(of: state)

        // Every file sealed under one data key, each with its own nonce prefix, handed to the blob store as it is ready.
        let dataKey = sealing.dataKey
        var files: [ModelStatement.File] = []
        var done = 0
        do throws(CofferRegistryError) {
            while let (file, temporary) = try await sealing.next() {
                // A store that cannot list its blobs learns of this one before it arrives, so gc can find it if the push dies.
                if !blobs.listsBlobs {
                    try await metadata.commit(UnitOfWork(changes: [.addPendingBlobs([file.sealedSHA256], at: Self.now())]))
                }
                try await blobs.store(temporary, digest: file.sealedSHA256, size: file.sealedSize)
                done += file.size
                files.append(file)
            }
            guard files.count == inputs.count else { throw .invalidInput("the push sealed \(files.count) of its \(inputs.count) files") }
        } catch {
            for file in files { try? await blobs.remove(file.sealedSHA256) }
            throw error
        }
        var wrapped: [(String, [UInt8])] = []
        for recipient in [registryKey, publisher.publicIdentity] + request.recipients where !wrapped.contains(where: { $0.0 == recipient.keyID }) {
            wrapped.append((recipient.keyID, dataKey.key.wrap(for: recipient).encoded))
        }

        let lineage = ModelStatement.Lineage(
            parent: request.parent?.description,
            datasetID: request.datasetID,
            datasetDigest: request.datasetDigest,
            trainingConfigDigest: request.trainingConfigDigest
        )
        let created = Self.now()
        let sealed = files
        let committed: CommittedVersion
        do throws(CofferRegistryError) {
            let frozen = request
            let bytes = done
            committed = try await commitVersion(
                on: state,
                model: request.model,
                alias: request.alias,
                tags: request.tags,
                parentID: parentID,
                wrapped: wrapped,
                dataKey: dataKey,
                overrideBy: overrideBy,
                signer: Signer(publisher),
                remember: [publisher.publicIdentity] + request.recipients,
                reason: { "sha256:\($0)" },
                statement: { (state: LedgerState) async throws(CofferRegistryError) -> (SignedStatement, PublicIdentity) in
                    // An automatic version is chosen again when the ledger moved (another push may have taken the number).
                    var version = frozen.version ?? ""
                    if frozen.version == nil {
                        version = try Self.automaticVersion(
                            after: try await self.metadata.highestVersionNumber(model: frozen.model),
                            model: frozen.model
                        )
                    }
                    let signed = try Self.sign(
                        frozen,
                        version: version,
                        files: sealed,
                        lineage: lineage,
                        created: created,
                        publisher: publisher.identity
                    )
                    return (signed, publisher.publicIdentity)
                },
                result: { signed in
                    PushResult(model: frozen.model, version: signed.statement.version, digest: signed.digest, files: sealed.count, bytes: bytes)
                }
            )
        } catch {
            // Nothing of a refused or failed commit stays: its blobs belong to no version.
            for file in files { try? await blobs.remove(file.sealedSHA256) }
            throw error
        }
        return try await publishManifest(committed)
    }

    /// Commits a signed version (a local push's or one a client uploaded): judged on the current ledger state
    /// (budget, alias policy), its rows, its `version` record (and `alias.set` record) signed by `signer`, and the
    /// push's audit entry, in one transaction; prepared again when another writer appended first. `statement`
    /// signs (or re-signs, for an automatic version number) the statement on the state it is judged on.
    /// `dataKey` is wrapped, beside `wrapped`, for every principal holding `decrypt` on the model in that same state
    /// (``decryptHolders(of:in:)``): a grant reaches every version pushed after it, and a push that lost a race to a
    /// grant or revocation is wrapped again for the state it finally commits on.
    func commitVersion(
        on held: LedgerState? = nil,
        model: String,
        alias: String?,
        tags: [String: String],
        parentID: Int64?,
        wrapped: [(String, [UInt8])],
        dataKey: KeyBox,
        overrideBy: String?,
        signer: Signer,
        remember: [PublicIdentity],
        reason: @Sendable (String) -> String,
        statement: @Sendable (LedgerState) async throws(CofferRegistryError) -> (SignedStatement, PublicIdentity),
        result: @Sendable (SignedStatement) -> PushResult
    ) async throws(CofferRegistryError) -> CommittedVersion {
        let (pushed, published) = try await commitOnLedger(startingFrom: held) {
            (current, work) async throws(CofferRegistryError) -> (PushResult, PublishedVersion) in
            let (signed, publisher) = try await statement(current)
            let statement = signed.statement
            // A version has one record: a writer that lost the race for a number (another replica or process took it)
            // hears it as from the database's unique key, and a client signs again for the next number.
            let label = LedgerChange.VersionFacts.label(model: statement.model, version: statement.version)
            if current.recordedVersionKeys?.contains(label) == true { throw .versionExists(label) }
            // Every path to a new version comes here (a local push, a client's upload, an OCI import): each meets the
            // rules new claims must meet, not only the local push that checks them before sealing (helper-71).
            try statement.privacy.validateForPush()
            let datasetID = statement.lineage.datasetID
            var wrapped = wrapped
            for holder in Self.decryptHolders(of: statement.model, in: current) where !wrapped.contains(where: { $0.0 == holder.keyID }) {
                wrapped.append((holder.keyID, dataKey.key.wrap(for: holder).encoded))
            }
            // Judged on the state this commit is built on: two pushes cannot both fit in the last of a budget.
            let charged = try Self.checkBudget(
                current,
                model: statement.model,
                dataset: datasetID,
                privacy: statement.privacy,
                override: overrideBy != nil
            )
            let p = statement.privacy
            let l = statement.lineage
            let row = VersionRecord(
                version: statement.version,
                number: Int64(statement.version),
                digest: signed.digest,
                publisherKeyID: statement.publisherKeyID,
                message: statement.message,
                createdAt: statement.created,
                parentVersionID: parentID,
                datasetID: l.datasetID,
                datasetDigest: l.datasetDigest,
                trainingConfigDigest: l.trainingConfigDigest,
                mechanism: p.mechanism,
                epsilon: p.epsilon,
                delta: p.delta,
                accountant: p.accountant,
                noiseMultiplier: p.noiseMultiplier,
                clippingNorm: p.clippingNorm,
                samplingRate: p.samplingRate,
                steps: p.steps,
                epochs: p.epochs,
                datasetSize: p.datasetSize,
                privacyUnit: p.privacyUnit,
                pruningMethod: p.pruningMethod,
                pruningRatio: p.pruningRatio,
                achievedSparsity: p.achievedSparsity,
                evidence: p.evidence?.canonicalText,
                auditEpsilon: p.evidence?.auditEpsilon,
                membershipAUC: p.evidence?.membershipAUC,
                membershipTPR: p.evidence?.membershipTPR,
                standardisation: p.standardisation,
                batchSampling: p.batchSampling
            )
            var segments: String? = nil
            if !p.segments.isEmpty || p.claimedEpsilon != nil {
                do { segments = String(decoding: try JSONEncoder().encode(p.segments), as: UTF8.self) } catch {
                    throw .invalidPrivacy("unreadable privacy segments")
                }
            }
            work.changes.append(
                .addVersion(
                    NewVersion(
                        model: statement.model,
                        row: row,
                        files: statement.files.map {
                            FileRecord(
                                versionID: 0,
                                path: $0.path,
                                size: $0.size,
                                plaintextSHA256: $0.plaintextSHA256,
                                sealedSHA256: $0.sealedSHA256,
                                sealedSize: $0.sealedSize
                            )
                        },
                        keys: wrapped.map { (recipient: $0.0, stanza: Data($0.1)) },
                        envelope: Data(signed.envelope.jsonBytes),
                        bundle: Data(signed.bundle),
                        tags: tags,
                        segments: segments,
                        claimedEpsilon: p.claimedEpsilon,
                        chargedDataset: charged ? datasetID : nil,
                        overrideBy: overrideBy
                    )
                )
            )
            // The keys are remembered in the version's own commit: a separate one after it could fail (the database
            // restarting) and report as failed a push that had landed.
            if !remember.isEmpty {
                work.changes.append(
                    .rememberIdentities(remember.map { RecipientIdentityRecord(keyID: $0.keyID, publicIdentity: Data($0.jsonBytes)) })
                )
            }
            let facts = LedgerChange.VersionFacts(
                model: statement.model,
                version: statement.version,
                digest: signed.digest,
                publisher: publisher,
                dataset: datasetID,
                mechanism: p.mechanism,
                segments: p.segments,
                charged: charged,
                overrideBy: overrideBy,
                standardisation: p.standardisation,
                batchSampling: p.batchSampling
            )
            var (state, actor) = try append(.version(facts), signer: signer, to: current, work: &work)
            if let alias {
                let aliasFacts = LedgerChange.AliasFacts(privacy: p, signer: publisher.keyID, charged: charged)
                try checkPolicy(model: statement.model, alias: alias, facts: aliasFacts, state: state)
                (state, _) = try append(
                    .aliasSet(model: statement.model, alias: alias, version: statement.version, digest: signed.digest, facts: aliasFacts),
                    signer: signer,
                    to: state,
                    work: &work
                )
            }
            let target = "\(statement.model):\(statement.version)"
            work.audit.append(AuditDraft(principal: actor, action: "push", target: target, outcome: .ok, reason: reason(signed.digest)))
            let published = PublishedVersion(
                model: statement.model,
                version: statement.version,
                digest: signed.digest,
                created: statement.created,
                publisherKeyID: statement.publisherKeyID,
                files: statement.files.map {
                    .init(path: $0.path, size: $0.size, plaintextSHA256: $0.plaintextSHA256, sealedSHA256: $0.sealedSHA256, sealedSize: $0.sealedSize)
                },
                envelope: signed.envelope.jsonBytes,
                modelSigningBundle: signed.bundle
            )
            return (result(signed), published)
        }
        return CommittedVersion(result: pushed, published: published)
    }

    /// Publishes a committed version in the blob store's own format (an OCI manifest; nothing for a directory). After
    /// the commit, so that a manifest never names a version the registry refused, and outside any clean-up of the
    /// push's blobs: a version whose manifest could not be written is still whole, its blobs kept.
    func publishManifest(_ committed: CommittedVersion) async throws(CofferRegistryError) -> PushResult {
        do { try await blobs.publish(committed.published) } catch {
            let label = "\(committed.result.model):\(committed.result.version)"
            throw .unavailable(engine: blobs.name, reason: "\(label) is committed, but its OCI manifest was not written: \(error)")
        }
        return committed.result
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

    /// The version a push without one takes: one more than the model's highest integer version, 1 for its first.
    public static func automaticVersion(after highest: Int64?, model: String) throws(CofferRegistryError) -> String {
        let (next, overflow) = (highest ?? 0).addingReportingOverflow(1)
        guard !overflow else { throw .invalidInput("\(model) has version \(Int64.max), the highest number: name the next one (\(model):VERSION)") }
        return String(next)
    }
}
