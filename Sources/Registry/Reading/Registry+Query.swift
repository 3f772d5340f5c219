public import CofferCrypto
import Foundation

/// One version as `list` and `show` report it. Its `json` is the documented `--json` shape.
public struct VersionSummary: Sendable, Equatable {
    public var model: String
    public var version: String
    public var digest: String
    public var created: String
    public var publisherKeyID: String
    public var message: String?
    public var aliases: [String]
    public var tags: [String: String]
    public var privacy: PrivacyMetadata
    public var datasetID: String?
    public var datasetDigest: String?
    public var trainingConfigDigest: String?
    public var parent: String?
    /// Filled by `show` only.
    public var files: [ModelStatement.File] = []
    /// When and by whom the version was crypto-shredded, if it was.
    public var erasedAt: String?
    public var erasedBy: String?
    /// Whether what is printed was checked against the publisher's signed statement just now, and if not, why.
    public var verified = false
    public var verification: String?
    /// The trusted name of the signer, when the signature verified.
    public var signer: String?
    var rowID: Int64 = 0

    /// `{model, version, digest, created, publisher_key_id, message, aliases, tags, parent, dataset_id, dataset_digest,
    /// training_config_digest, <every privacy field>, files?}`.
    public var json: JSONValue {
        func s(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
        var object: [String: JSONValue] = [
            "model": .string(model), "version": .string(version), "digest": .string(digest), "created": .string(created),
            "publisher_key_id": .string(publisherKeyID), "message": s(message), "aliases": .array(aliases.map { .string($0) }),
            "tags": .object(tags.mapValues { .string($0) }), "parent": s(parent), "dataset_id": s(datasetID), "dataset_digest": s(datasetDigest),
            "training_config_digest": s(trainingConfigDigest),
        ]
        if case .object(let fields) = privacy.json { object.merge(fields) { a, _ in a } }
        object["erased"] = erasedAt.map { .object(["at": .string($0), "by": s(erasedBy)]) } ?? .null
        object["verified"] = .bool(verified)
        object["verification"] = s(verification)
        object["signer"] = s(signer)
        if !files.isEmpty {
            object["files"] = .array(
                files.map {
                    .object([
                        "path": .string($0.path), "size": .number(Double($0.size)), "sha256": .string($0.plaintextSHA256),
                        "sealed_sha256": .string($0.sealedSHA256), "sealed_size": .number(Double($0.sealedSize)),
                    ])
                }
            )
        }
        return .object(object)
    }
}

/// One page of a model's versions, newest first.
public struct VersionPage: Sendable, Equatable {
    public var versions: [VersionSummary]
    /// The `before` that asks for the next, older page (the last version of this one); nil on the last page.
    public var next: String?
}

extension VersionSummary {
    /// A version as a remote client shows it: every signed field from the statement it verified itself, aliases and
    /// erasure from the ledger it replayed; only the unsigned tags as the server reports them.
    public init(verified statement: ModelStatement, digest: String, signer: PublicIdentity, ledger: LedgerState, reportedTags: [String: String]) {
        self.init(
            model: statement.model,
            version: statement.version,
            digest: digest,
            created: statement.created,
            publisherKeyID: statement.publisherKeyID,
            message: statement.message,
            aliases: [],
            tags: reportedTags,
            privacy: statement.privacy,
            datasetID: statement.lineage.datasetID,
            datasetDigest: statement.lineage.datasetDigest,
            trainingConfigDigest: statement.lineage.trainingConfigDigest,
            parent: statement.lineage.parent,
            files: statement.files
        )
        aliases = ledger.aliases.filter { $0.key.hasPrefix("\(statement.model)@") && $0.value.digest == digest }
            .map { String($0.key.dropFirst(statement.model.count + 1)) }.sorted()
        if let erasure = ledger.erased[digest] {
            erasedAt = erasure.at
            erasedBy = erasure.by
        }
        verified = true
        self.signer = signer.name
    }
}

extension Registry {
    /// Versions, newest first, of one model or all, optionally filtered by a `--where` expression.
    public func list(model: String? = nil, where filter: String? = nil, limit: Int? = nil) async throws(CofferRegistryError) -> [VersionSummary] {
        if let model { try ModelReference.validate(name: model) }
        let query = VersionQuery(
            model: model,
            filter: try filter.map { text throws(CofferRegistryError) in try WhereExpression(parsing: text) },
            limit: limit
        )
        let summaries = try await metadata.summaries(query).map(Self.summary)
        if let model, summaries.isEmpty, try await !metadata.modelExists(model) { throw .unknownModel(model) }
        return try await checked(summaries)
    }

    /// One page of `model`'s versions, newest first: those listed after version `before` (from the newest when nil),
    /// at most `limit`, each checked against its signed statement as ``list(model:where:limit:)`` checks it. Keyset
    /// pages, found through the index on (model, created), so a deep page costs what the first does.
    ///
    /// ```swift
    /// let first = try await registry.versionPage(model: "m/risk", limit: 50)
    /// let second = try await registry.versionPage(model: "m/risk", before: first.next, limit: 50)
    /// ```
    ///
    /// - Throws: ``CofferRegistryError/unknownModel(_:)``, ``CofferRegistryError/unknownVersion(_:)`` for a `before`
    ///   that names no version of the model, ``CofferRegistryError/invalidInput(_:)`` for a limit outside 1...1000.
    public func versionPage(model: String, before version: String? = nil, limit: Int = 50) async throws(CofferRegistryError) -> VersionPage {
        try ModelReference.validate(name: model)
        guard (1...1000).contains(limit) else { throw .invalidInput("a page holds from 1 to 1000 versions, not \(limit)") }
        var cursor: (createdAt: String, id: Int64)? = nil
        if let version {
            guard let (id, _) = try await metadata.version(model: model, version: version),
                let row = try await metadata.summaries(VersionQuery(id: id)).first
            else { throw .unknownVersion("\(model):\(version)") }
            cursor = (row.row.createdAt, id)
        }
        var summaries = try await metadata.summaries(VersionQuery(model: model, limit: limit + 1, before: cursor)).map(Self.summary)
        if version == nil, summaries.isEmpty, try await !metadata.modelExists(model) { throw .unknownModel(model) }
        let more = summaries.count > limit
        if more { summaries.removeLast() }
        return VersionPage(versions: try await checked(summaries), next: more ? summaries.last?.version : nil)
    }

    /// Each printed row checked against its signed statement (Ed25519, about 0.1 ms a row), so a number edited in the
    /// table is shown as unverified, never as fact; --where itself filters on the stored columns.
    private func checked(_ rows: [VersionSummary]) async throws(CofferRegistryError) -> [VersionSummary] {
        var summaries = rows
        let state = try await ledgerState()
        let trusted = state.trustedIdentities
        let envelopes = try await metadata.statements(versionIDs: summaries.map(\.rowID))
        for index in summaries.indices {
            Self.check(&summaries[index], envelope: envelopes[summaries[index].rowID], trusted: trusted, state: state)
        }
        return summaries
    }

    /// Checks a listed row against its signed statement (signature by a trusted signer, every printed field) and
    /// takes its aliases and erasure from the verified ledger, not from the tables.
    static func check(_ summary: inout VersionSummary, envelope document: Data?, trusted: [PublicIdentity], state: LedgerState) {
        takeLedgerFacts(&summary, state)
        do throws(CofferRegistryError) {
            guard let document else { throw .tampered("no signed statement") }
            let envelope: DSSEEnvelope
            do { envelope = try DSSEEnvelope(jsonBytes: Array(document)) } catch { throw .tampered("\(error)") }
            let (signer, payload): (PublicIdentity, [UInt8])
            do { (signer, payload) = try envelope.verify(trusting: trusted) } catch .untrustedSigner(let keyID) {
                throw .untrustedSigner(keyID: keyID)
            } catch {
                throw .tampered("\(error)")
            }
            guard Digest.hex(Digest.sha256(payload)) == summary.digest else { throw .tampered("the digest does not match the signed statement") }
            let statement: ModelStatement
            do { statement = try ModelStatement(try InTotoStatement(jsonBytes: payload)) } catch let error as CofferRegistryError {
                throw error
            } catch {
                throw .tampered("\(error)")
            }
            try compare(summary, with: statement)
            summary.verified = true
            summary.signer = signer.name
        } catch {
            summary.verified = false
            summary.verification = error.description
        }
    }

    /// A row's aliases and erasure, from the verified ledger.
    private static func takeLedgerFacts(_ summary: inout VersionSummary, _ state: LedgerState) {
        summary.aliases = state.aliases.filter { $0.key.hasPrefix("\(summary.model)@") && $0.value.digest == summary.digest }
            .map { String($0.key.dropFirst(summary.model.count + 1)) }.sorted()
        if let erasure = state.erased[summary.digest] {
            summary.erasedAt = erasure.at
            summary.erasedBy = erasure.by
        }
    }

    /// Every printed field of a row against a statement whose signature was checked.
    private static func compare(_ summary: VersionSummary, with statement: ModelStatement) throws(CofferRegistryError) {
        var signed = summary.privacy
        signed.segments = statement.privacy.segments
        signed.claimedEpsilon = statement.privacy.claimedEpsilon
        guard statement.model == summary.model, statement.version == summary.version, statement.publisherKeyID == summary.publisherKeyID,
            statement.privacy == signed, statement.lineage.datasetID == summary.datasetID,
            statement.lineage.datasetDigest == summary.datasetDigest, statement.lineage.trainingConfigDigest == summary.trainingConfigDigest,
            statement.message == summary.message, statement.created == summary.created
        else { throw .tampered("a stored field differs from the signed statement") }
    }

    /// One version in full, with its files, checked as `verify` checks it (signature, trust, ledger record, every
    /// row); when a check fails it is still shown, marked unverified with the reason. `held`: a ledger state the caller
    /// holds (else the current one is read).
    public func show(_ reference: ModelReference, in held: LedgerState? = nil) async throws(CofferRegistryError) -> VersionSummary {
        // One ledger state for the whole page (and the caller's check of the role, when it passes the state it checked
        // against): each refresh reads the ledger's end again.
        let state = if let held { held } else { try await ledgerState() }
        let id = try await resolve(reference, in: state).id
        guard let row = try await metadata.summaries(VersionQuery(id: id)).first else { throw .unknownVersion(reference.description) }
        var summary = Self.summary(row)
        let stored = try await loadVersion(id, in: state)
        summary.files = stored.files
        summary.privacy.segments = stored.privacy.segments
        summary.privacy.claimedEpsilon = stored.privacy.claimedEpsilon
        // One verification, against one ledger state, serves the whole page: `authenticate` checks the signature, the
        // bundle, the ledger record and the stored rows, and the printed fields are then held against the statement it
        // verified (checking the envelope again, as `list` does, was a fifth of a server's CPU for each GET).
        do throws(CofferRegistryError) {
            let (statement, signer) = try await authenticate(stored, in: state)
            guard stored.digest == summary.digest else { throw .tampered("the digest does not match the signed statement") }
            Self.takeLedgerFacts(&summary, state)
            try Self.compare(summary, with: statement)
            summary.verified = true
            summary.signer = signer.name
        } catch {
            // What `list` would say comes first; a version that passes its check failed one only `authenticate` makes.
            Self.check(&summary, envelope: stored.envelope, trusted: state.trustedIdentities, state: state)
            if summary.verified {
                summary.verified = false
                summary.verification = error.description
            }
        }
        return summary
    }

    /// Points `alias` at a version, once the version meets the alias's policies (checked on its signed facts), with
    /// an `alias.set` record signed by `signer`.
    public func setAlias(_ alias: String, model: String, version: String, by signer: Signer) async throws(CofferRegistryError) {
        try ModelReference.validate(version: alias)
        try await require(signer, .publisher, on: model, action: "alias.set", target: "\(model)@\(alias)")
        let id = try await resolve(try ModelReference(name: model, selector: .version(version))).id
        let stored = try await loadVersion(id)
        try stored.ensureNotErased()
        let (statement, signer_) = try await authenticate(stored)
        let state = try await ledgerState()
        let facts = LedgerChange.AliasFacts(privacy: statement.privacy, signer: signer_.keyID, charged: state.isCharged(stored.digest))
        do {
            try checkPolicy(model: model, alias: alias, facts: facts, state: state)
        } catch {
            try? await audit(
                principal: try acting(signer, in: state).principal.name,
                action: "alias.set",
                target: "\(model)@\(alias)",
                outcome: .refused,
                reason: error.description
            )
            throw error
        }
        try await record(
            .aliasSet(model: model, alias: alias, version: version, digest: stored.digest, facts: facts),
            signer: signer,
            action: "alias.set",
            target: "\(model)@\(alias)",
            reason: "version \(version)"
        )
    }

    /// Removes `alias` of `model`, with an `alias.remove` record.
    public func removeAlias(_ alias: String, model: String, by signer: Signer) async throws(CofferRegistryError) {
        try await require(signer, .publisher, on: model, action: "alias.rm", target: "\(model)@\(alias)")
        _ = try await resolve(try ModelReference(name: model, selector: .alias(alias)))
        try await record(.aliasRemove(model: model, alias: alias), signer: signer, action: "alias.rm", target: "\(model)@\(alias)", reason: "")
    }

    private static func summary(_ row: VersionSummaryRow) -> VersionSummary {
        VersionSummary(
            model: row.model,
            version: row.row.version,
            digest: row.row.digest,
            created: row.row.createdAt,
            publisherKeyID: row.row.publisherKeyID,
            message: row.row.message,
            aliases: row.aliases,
            tags: row.tags,
            privacy: row.row.privacy,
            datasetID: row.row.datasetID,
            datasetDigest: row.row.datasetDigest,
            trainingConfigDigest: row.row.trainingConfigDigest,
            parent: row.parent,
            erasedAt: row.erasedAt,
            erasedBy: row.erasedBy,
            rowID: row.id
        )
    }
}

// MARK: - Tags and lineage

extension Registry {
    /// Sets (or, with a `nil` value, removes) tags of a version. Tags are mutable labels, not part of the signed statement.
    public func tag(_ reference: ModelReference, set tags: [String: String?]) async throws(CofferRegistryError) {
        for key in tags.keys { try ModelReference.validate(version: key) }
        let version = try await resolve(reference).version
        let changes = tags.sorted { $0.key < $1.key }.map {
            MetadataChange.setTag(model: reference.name, version: version, key: $0.key, value: $0.value)
        }
        try await metadata.commit(UnitOfWork(changes: changes))
    }

    /// The lineage of a version: itself, then its parent, its parent's parent, and so on.
    public func lineage(_ reference: ModelReference) async throws(CofferRegistryError) -> [VersionSummary] {
        var chain: [VersionSummary] = []
        var next: Int64? = try await resolve(reference).id
        var seen = Set<Int64>()
        while let id = next, seen.insert(id).inserted {
            guard let row = try await metadata.summaries(VersionQuery(id: id)).first else { break }
            chain.append(try await show(try ModelReference(name: row.model, selector: .version(row.row.version))))
            next = row.row.parentVersionID
        }
        return chain
    }
}

extension Registry {
    /// The model a blob belongs to (original or re-encrypted), or `nil` when no version names it.
    public func model(ofBlob digest: String) async throws(CofferRegistryError) -> String? {
        try await metadata.models(holdingBlob: digest).first
    }

    /// The size of a blob in the store, or nil when the store lacks it.
    public func blobSize(_ digest: String) async throws(CofferRegistryError) -> Int? { try await blobs.size(of: digest) }

    /// A blob's ciphertext, or bytes `range` of it, as a stream (what a server sends a client).
    public func readBlob(_ digest: String, range: Range<Int>? = nil) async throws(CofferRegistryError) -> BlobStream {
        try await blobs.read(digest, range: range)
    }
}
