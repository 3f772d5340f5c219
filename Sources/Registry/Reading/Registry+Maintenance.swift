import CofferCrypto
import Foundation
import Synchronization

/// What `fsck` found. The registry is consistent when `problems` is empty; orphan blobs and
/// temporary files are the expected residue of interrupted pushes, reclaimed by `gc`.
public struct FsckReport: Sendable, Equatable {
    public var versions = 0
    public var ledgerRecords = 0
    public var blobs = 0
    public var problems: [String] = []
    public var orphanBlobs: [String] = []
    public var temporaryFiles: [String] = []
    /// Versions whose OCI manifest or referrers are absent (a push stopped between its commit and its manifest):
    /// derived data, which `gc` writes again.
    public var unpublished: [String] = []
    public var isClean: Bool { problems.isEmpty }
}

/// What `gc` removed.
public struct GCReport: Sendable, Equatable {
    public var removedBlobs = 0
    public var removedTemporaryFiles = 0
    /// Resumable uploads dropped: expired, or begun before the grace period (a client killed mid-push leaves one).
    public var abandonedUploads = 0
    public var reclaimedBytes = 0
    /// Versions whose missing OCI manifest was published again.
    public var republished = 0
}

extension Registry {
    /// Checks the whole registry: SQLite's integrity; the ledger replayed from its first record (every signature,
    /// link and authority) and every table that copies it; every version's signature and rows against its ledger
    /// record; every blob's digest. Versions whose signer is not trusted are reported, and their blobs still count as
    /// theirs (not as orphans).
    public func fsck() async throws(CofferRegistryError) -> FsckReport {
        var report = FsckReport()
        report.problems += try await metadata.integrityProblems()
        // What this client remembers must still be there (this also verifies what was appended since).
        var wentBack = false
        do { _ = try await ledgerState() } catch {
            report.problems.append(error.description)
            wentBack = true
        }
        let (state, versionRecords) = try await replayWholeLedger(into: &report)
        guard let state else { return report }
        // A registry that went back is still checked, against its own ledger, so every other problem is named too.
        // That state need not extend the one the confirmed version records were confirmed against: they are forgotten.
        if wentBack {
            ledger.withLock { $0 = state }
            replayedVersionRecords.withLock { $0.removeAll() }
        }
        try await compareTables(with: state, versionRecords: versionRecords, into: &report)
        // The audit log: its chain, its signed heads, and the entries the ledger, the state head and this client name.
        do { _ = try await verifyAudit() } catch { report.problems.append(error.description) }

        let referenced = try await referencedBlobs()
        var registryKeyID = ""
        if let key = try? await identity { registryKeyID = key.keyID }
        for head in try await metadata.allVersionHeads() {
            report.versions += 1
            let label = "\(head.model):\(head.version)"
            do {
                let stored = try await loadVersion(head.id)
                let (statement, _) = try await authenticate(stored)  // its record and charges too (checkRecord)
                if stored.erased != nil { continue }  // a tombstone: its keys and blobs are gone on purpose
                if let published = try await publishedVersion(stored, state: state) {
                    switch try await blobs.publicationProblem(published) {
                    case .missing: report.unpublished.append(label)
                    case .different(let why): report.problems.append("\(label): its OCI manifest: \(why)")
                    case nil: break
                    }
                }
                if try await metadata.wrappedKey(version: head.id, recipient: registryKeyID) == nil {
                    report.problems.append("\(label): no data key wrapped for the registry")
                }
                for file in statement.files {
                    guard let source = try? await blobSource(file.sealedSHA256, what: file.path) else {
                        report.problems.append("\(label): blob of \(file.path) is missing")
                        continue
                    }
                    do {
                        let digest = Digest.hex(
                            try await Offload.run { () throws(CofferCryptoError) -> [UInt8] in try Digest.sha256(of: source.value).digest }
                        )
                        if digest != file.sealedSHA256 { report.problems.append("\(label): blob of \(file.path) is corrupt") }
                    } catch {
                        report.problems.append("\(label): blob of \(file.path) is \(source.failedTampered ? "corrupt" : "missing")")
                    }
                }
            } catch {
                report.problems.append(error.description)
            }
        }
        // A store that cannot list its blobs names its possible orphans through the journal of pending blobs.
        // A store that cannot list holds the referenced blobs (each checked above) and the journal's pending ones.
        var listed = try await blobs.digests()
        if listed == nil { listed = Array(referenced.union(try await metadata.pendingBlobs(before: "9999"))) }
        report.blobs = listed?.count ?? 0
        report.orphanBlobs = (listed ?? []).filter { !referenced.contains($0) }.sorted()
        report.temporaryFiles = temporaryFiles()
        return report
    }

    /// Replays the ledger from record 1, ignoring what was remembered, so that a rewrite of records verified long
    /// ago is found too. Returns the state (nil when the chain breaks) and every version record by `model:version`.
    private func replayWholeLedger(
        into report: inout FsckReport
    ) async throws(CofferRegistryError) -> (LedgerState?, [String: LedgerChange.VersionFacts]) {
        let rows = try await metadata.ledgerRecords(after: 0, limit: nil)
        guard let first = rows.first else {
            report.problems.append("the registry has no ledger (run coffer migrate)")
            return (nil, [:])
        }
        var state = LedgerState(registry: (try? Self.parse(Array(first.envelope)).registry) ?? "")
        var versions: [String: LedgerChange.VersionFacts] = [:]
        for row in rows {
            do throws(CofferRegistryError) {
                let record = try Self.parse(Array(row.envelope))
                guard record.seq == row.seq else {
                    throw CofferRegistryError.tampered("ledger row \(row.seq) holds record \(record.seq)")
                }
                do { try state.apply(record) } catch { throw CofferRegistryError.tampered(error.description) }
                if case .version(let facts) = record.change { versions[facts.label] = facts }
            } catch {
                report.problems.append(error.description)
                return (nil, versions)
            }
        }
        report.ledgerRecords = rows.count
        return (state, versions)
    }

    /// Names every row of the copied tables that the replayed ledger does not hold, and every fact it holds that
    /// the tables lack.
    private func compareTables(
        with state: LedgerState,
        versionRecords: [String: LedgerChange.VersionFacts],
        into report: inout FsckReport
    ) async throws(CofferRegistryError) {
        func compare<T: Hashable>(_ what: String, table: Set<T>, ledger: Set<T>, describe: (T) -> String) {
            for extra in table.subtracting(ledger).map(describe).sorted() {
                report.problems.append("\(what) \(extra) is in its table but not in the ledger")
            }
            for missing in ledger.subtracting(table).map(describe).sorted() {
                report.problems.append("\(what) \(missing) is in the ledger but not in its table")
            }
        }
        let stored = try await metadata.materializedTables()
        let tables = (
            principals: stored.principals.map { "\($0.name) \($0.keyID)" },
            grants: stored.grants.map { "\($0.principal) \($0.role) \($0.scope) \($0.alias ?? "-")" },
            trusted: stored.trusted.map { "\($0.keyID) \($0.name)" },
            aliases: stored.aliases.map { "\($0.model)@\($0.alias) \($0.version)" },
            policies: stored.policies.map { row -> String in
                let rules = (try? JSONDecoder().decode(PolicyRules.self, from: Data(row.rules.utf8))).map {
                    String(decoding: $0.json.canonicalBytes, as: UTF8.self)
                }
                return "\(row.model)@\(row.alias) \(rules ?? "unreadable")"
            },
            budgets: stored.budgets.map { "\($0.datasetID) \($0.epsilon) \($0.delta)" },
            charges: stored.charges.map { "\($0.dataset) \($0.model):\($0.version)" },
            erasures: stored.erasures.map { "\($0.model):\($0.version)" },
            keys: stored.keys.map(\.keyID),
            tokens: stored.tokens.filter { $0.revokedAt == nil }.map { "\($0.id) \($0.principal) \($0.scope) \(Digest.hex(Array($0.tokenHash)))" },
            versions: stored.versions.map { "\($0.model):\($0.version) \($0.digest)" }
        )
        compare("principal", table: Set(tables.principals), ledger: Set(state.principals.map { "\($0.key) \($0.value.keyID)" }), describe: { $0 })
        compare(
            "grant",
            table: Set(tables.grants),
            ledger: Set(state.grants.map { "\($0.principal) \($0.role.rawValue) \($0.scope) \($0.alias ?? "-")" }),
            describe: { $0 }
        )
        compare("trusted signer", table: Set(tables.trusted), ledger: Set(state.trusted.map { "\($0.key) \($0.value.name)" }), describe: { $0 })
        compare("alias", table: Set(tables.aliases), ledger: Set(state.aliases.map { "\($0.key) \($0.value.version)" }), describe: { $0 })
        compare(
            "policy",
            table: Set(tables.policies),
            ledger: Set(state.policies.map { "\($0.key) \(String(decoding: $0.value.json.canonicalBytes, as: UTF8.self))" }),
            describe: { $0 }
        )
        compare(
            "budget",
            table: Set(tables.budgets),
            ledger: Set(state.budgets.map { "\($0.key) \($0.value.epsilon) \($0.value.delta)" }),
            describe: { $0 }
        )
        compare(
            "budget charge",
            table: Set(tables.charges),
            ledger: Set(state.budgets.flatMap { dataset, budget in budget.charges.map { "\(dataset) \($0.model):\($0.version)" } }),
            describe: { $0 }
        )
        compare("erasure of", table: Set(tables.erasures), ledger: Set(state.erased.values.map { "\($0.model):\($0.version)" }), describe: { $0 })
        compare("registry key", table: Set(tables.keys), ledger: Set(state.keys.map(\.identity.keyID)), describe: { $0 })
        compare(
            "bearer token",
            table: Set(tables.tokens),
            ledger: Set(
                state.tokens.values.filter { !$0.revoked }.map { "\($0.facts.id) \($0.facts.principal) \($0.facts.scope.rawValue) \($0.facts.hash)" }
            ),
            describe: { String($0.prefix(16)) }
        )
        compare("version", table: Set(tables.versions), ledger: Set(versionRecords.map { "\($0.key) \($0.value.digest)" }), describe: { $0 })
    }

    /// The blobs versions hold now (a rekeyed version's new ones, not its originals), erased versions excepted;
    /// a version whose signer is not trusted still holds its blobs.
    func referencedBlobs() async throws(CofferRegistryError) -> Set<String> {
        let erased = Set(try await ledgerState().erased.keys)
        return Set(try await metadata.referencedBlobs().filter { !erased.contains($0.versionDigest) }.map(\.blob))
    }

    /// Files left in `tmp/` by interrupted pushes and uploads.
    func temporaryFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "\(home)/tmp")) ?? []).sorted()
    }

    /// Removes blobs no version references and leftover temporary files, older than `grace` seconds
    /// (a push in progress writes its blobs before it commits its rows). A store that cannot list its blobs is
    /// swept through the journal of blobs sent by pushes that never committed.
    public func gc(grace: Double = 900) async throws(CofferRegistryError) -> GCReport {
        let referenced = try await referencedBlobs()
        let cutoff = Date().addingTimeInterval(-grace)
        var report = GCReport()
        // Uploads first: a finished one became a blob (journalled as pending), an abandoned one frees its store's session.
        let now = Self.timestamp(Date())
        for upload in try await metadata.uploads(principal: nil) where upload.createdAt <= Self.timestamp(cutoff) || upload.expiresAt <= now {
            await blobs.abandon(BlobUpload(id: upload.id, location: upload.location, offset: upload.received))
            try await metadata.commit(UnitOfWork(changes: [.removeUpload(id: upload.id)]))
            report.abandonedUploads += 1
        }
        func removeIfOld(_ path: String) -> Int? {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                let modified = attributes[.modificationDate] as? Date, modified <= cutoff
            else { return nil }
            let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
            return (try? FileManager.default.removeItem(atPath: path)) != nil ? size : nil
        }
        if let all = try await blobs.digests() {
            for digest in all where !referenced.contains(digest) {
                if let path = blobs.localPath(of: digest), let size = removeIfOld(path) {
                    report.removedBlobs += 1
                    report.reclaimedBytes += size
                }
            }
        } else {
            let stale = try await metadata.pendingBlobs(before: Self.timestamp(cutoff))
            var swept: [String] = []
            for digest in stale {
                if !referenced.contains(digest) {
                    let size = try await blobs.size(of: digest) ?? 0
                    try await blobs.remove(digest)
                    report.removedBlobs += 1
                    report.reclaimedBytes += size
                }
                swept.append(digest)
            }
            if !swept.isEmpty { try await metadata.commit(UnitOfWork(changes: [.removePendingBlobs(swept)])) }
        }
        report.republished = try await republishMissing()
        for name in temporaryFiles() {
            if let size = removeIfOld("\(home)/tmp/\(name)") {
                report.removedTemporaryFiles += 1
                report.reclaimedBytes += size
            }
        }
        return report
    }
}

extension Registry {
    /// The version as the blob store publishes it, its statement checked against the publisher key its ledger record
    /// names (a publisher no longer trusted still published it); nil for a version erased or re-encrypted, whose
    /// statement no longer describes its blobs.
    func publishedVersion(_ stored: StoredVersion, state: LedgerState) async throws(CofferRegistryError) -> PublishedVersion? {
        guard stored.erased == nil, stored.rekeyEnvelope == nil else { return nil }
        guard let envelope = stored.envelope, let bundle = stored.modelSignature else {
            throw .tampered("\(stored.model):\(stored.version) lacks its signed documents")
        }
        let facts = try await versionRecord(model: stored.model, version: stored.version, state: state)
        let (statement, _) = try Self.verifySigned(
            envelope: envelope,
            bundle: bundle,
            trusting: [facts.publisher],
            model: stored.model,
            version: stored.version,
            digest: stored.digest
        )
        return PublishedVersion(statement, digest: stored.digest, envelope: envelope, bundle: bundle)
    }

    /// Publishes again every version whose publication is missing from the blob store (none for a directory).
    private func republishMissing() async throws(CofferRegistryError) -> Int {
        guard !(blobs is DirectoryBlobStore) else { return 0 }
        let state = try await ledgerState()
        var republished = 0
        for head in try await metadata.allVersionHeads() {
            guard let version = try? await publishedVersion(try await loadVersion(head.id), state: state),
                try await blobs.publicationProblem(version) == .missing
            else { continue }
            try await blobs.publish(version)
            republished += 1
        }
        return republished
    }
}
