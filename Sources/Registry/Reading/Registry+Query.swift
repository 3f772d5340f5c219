public import CofferCrypto
import Foundation
import GRDB

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

extension PrivacyMetadata {
    /// Reads the typed privacy columns of a `versions` row.
    init(row: Row) {
        self.init()
        mechanism = row["mechanism"]
        epsilon = row["epsilon"]
        delta = row["delta"]
        accountant = row["accountant"]
        noiseMultiplier = row["noise_multiplier"]
        clippingNorm = row["clipping_norm"]
        samplingRate = row["sampling_rate"]
        steps = row["steps"]
        epochs = row["epochs"]
        datasetSize = row["dataset_size"]
        privacyUnit = row["privacy_unit"]
        pruningMethod = row["pruning_method"]
        pruningRatio = row["pruning_ratio"]
        achievedSparsity = row["achieved_sparsity"]
    }
}

extension Registry {
    /// Versions, newest first, of one model or all, optionally filtered by a `--where` expression.
    public func list(model: String? = nil, where filter: String? = nil, limit: Int? = nil) throws(CofferRegistryError) -> [VersionSummary] {
        if let model { try ModelReference.validate(name: model) }
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible & Sendable] = []
        if let model {
            conditions.append("m.name = ?")
            arguments.append(model)
        }
        if let filter {
            let compiled = try WhereExpression(parsing: filter).sql
            conditions.append(compiled.clause)
            for argument in compiled.arguments {
                if let number = argument as? Double { arguments.append(number) } else if let text = argument as? String { arguments.append(text) }
            }
        }
        let whereSQL = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let limitSQL = limit.map { " LIMIT \(max(0, $0))" } ?? ""
        var summaries = try database.read { db in
            try Row.fetchAll(
                db,
                sql: "\(Self.summarySelect) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)",
                arguments: StatementArguments(arguments)
            ).map(Self.summary)
        }
        if let model, summaries.isEmpty, try !modelExists(model) { throw .unknownModel(model) }
        // Each printed row is checked against its signed statement (Ed25519, about 0.1 ms a row), so a number edited
        // in the table is shown as unverified, never as fact; --where itself filters on the stored columns.
        let state = try ledgerState()
        let trusted = state.trustedIdentities
        let ids = summaries.map { String($0.rowID) }.joined(separator: ",")
        let envelopes = try database.read { db in
            Dictionary(
                try Row.fetchAll(db, sql: "SELECT version_id, document FROM attestations WHERE kind = 'dsse' AND version_id IN (\(ids))").map {
                    ($0[0] as Int64, $0[1] as Data)
                },
                uniquingKeysWith: { a, _ in a }
            )
        }
        for index in summaries.indices {
            Self.check(&summaries[index], envelope: envelopes[summaries[index].rowID], trusted: trusted, state: state)
        }
        return summaries
    }

    /// Checks a listed row against its signed statement (signature by a trusted signer, every printed field) and
    /// takes its aliases and erasure from the verified ledger, not from the tables.
    static func check(_ summary: inout VersionSummary, envelope document: Data?, trusted: [PublicIdentity], state: LedgerState) {
        summary.aliases = state.aliases.filter { $0.key.hasPrefix("\(summary.model)@") && $0.value.digest == summary.digest }
            .map { String($0.key.dropFirst(summary.model.count + 1)) }.sorted()
        if let erasure = state.erased[summary.digest] {
            summary.erasedAt = erasure.at
            summary.erasedBy = erasure.by
        }
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
            var signed = summary.privacy
            signed.segments = statement.privacy.segments
            signed.claimedEpsilon = statement.privacy.claimedEpsilon
            guard statement.model == summary.model, statement.version == summary.version, statement.publisherKeyID == summary.publisherKeyID,
                statement.privacy == signed, statement.lineage.datasetID == summary.datasetID,
                statement.lineage.datasetDigest == summary.datasetDigest, statement.lineage.trainingConfigDigest == summary.trainingConfigDigest,
                statement.message == summary.message, statement.created == summary.created
            else { throw .tampered("a stored field differs from the signed statement") }
            summary.verified = true
            summary.signer = signer.name
        } catch {
            summary.verified = false
            summary.verification = error.description
        }
    }

    /// One version in full, with its files, checked as `verify` checks it (signature, trust, ledger record, every
    /// row); when a check fails it is still shown, marked unverified with the reason.
    public func show(_ reference: ModelReference) throws(CofferRegistryError) -> VersionSummary {
        let id = try resolve(reference).id
        var summary = try database.read { db in
            Self.summary(
                try Row.fetchOne(
                    db,
                    sql: "\(Self.summarySelect) WHERE v.id = ?",
                    arguments: [id]
                )!
            )
        }
        let state = try ledgerState()
        let stored = try loadVersion(id)
        summary.files = stored.files
        summary.privacy.segments = stored.privacy.segments
        summary.privacy.claimedEpsilon = stored.privacy.claimedEpsilon
        Self.check(&summary, envelope: stored.envelope, trusted: state.trustedIdentities, state: state)
        if summary.verified {
            do {
                let (_, signer) = try authenticate(stored)
                summary.signer = signer.name
            } catch {
                summary.verified = false
                summary.verification = error.description
            }
        }
        return summary
    }

    /// Points `alias` at a version, once the version meets the alias's policies (checked on its signed facts), with
    /// an `alias.set` record signed by `signer`.
    public func setAlias(_ alias: String, model: String, version: String, by signer: Signer) throws(CofferRegistryError) {
        try ModelReference.validate(version: alias)
        try require(signer, .publisher, on: model, action: "alias.set", target: "\(model)@\(alias)")
        let id = try resolve(try ModelReference(name: model, selector: .version(version))).id
        let stored = try loadVersion(id)
        try stored.ensureNotErased()
        let (statement, signer_) = try authenticate(stored)
        let state = try ledgerState()
        let facts = LedgerChange.AliasFacts(privacy: statement.privacy, signer: signer_.keyID, charged: state.isCharged(stored.digest))
        do {
            try checkPolicy(model: model, alias: alias, facts: facts, state: state)
        } catch {
            try? audit(
                principal: try acting(signer, in: state).principal.name,
                action: "alias.set",
                target: "\(model)@\(alias)",
                outcome: .refused,
                reason: error.description
            )
            throw error
        }
        try record(
            .aliasSet(model: model, alias: alias, version: version, digest: stored.digest, facts: facts),
            signer: signer,
            action: "alias.set",
            target: "\(model)@\(alias)",
            reason: "version \(version)"
        )
    }

    /// Removes `alias` of `model`, with an `alias.remove` record.
    public func removeAlias(_ alias: String, model: String, by signer: Signer) throws(CofferRegistryError) {
        try require(signer, .publisher, on: model, action: "alias.rm", target: "\(model)@\(alias)")
        _ = try resolve(try ModelReference(name: model, selector: .alias(alias)))
        try record(.aliasRemove(model: model, alias: alias), signer: signer, action: "alias.rm", target: "\(model)@\(alias)", reason: "")
    }

    func modelExists(_ name: String) throws(CofferRegistryError) -> Bool {
        try database.read { db in try Int64.fetchOne(db, sql: "SELECT id FROM models WHERE name = ?", arguments: [name]) != nil }
    }

    /// A version row with its model name, parent, aliases and tags (unit and record separators join the lists).
    private static let summarySelect = """
        SELECT v.*, m.name AS model_name, p.version AS parent_version, pm.name AS parent_model,
            (SELECT group_concat(alias, char(31)) FROM aliases a WHERE a.version_id = v.id) AS alias_list,
            (SELECT group_concat(key || char(30) || value, char(31)) FROM tags t WHERE t.version_id = v.id) AS tag_list,
            (SELECT erased_at FROM erasures e WHERE e.version_id = v.id) AS erased_at,
            (SELECT erased_by FROM erasures e WHERE e.version_id = v.id) AS erased_by
        FROM versions v JOIN models m ON m.id = v.model_id
        LEFT JOIN versions p ON p.id = v.parent_version_id LEFT JOIN models pm ON pm.id = p.model_id
        """

    private static func summary(_ row: Row) -> VersionSummary {
        let privacy = PrivacyMetadata(row: row)
        let aliases = (row["alias_list"] as String?)?.split(separator: "\u{1F}").map(String.init).sorted() ?? []
        var tags: [String: String] = [:]
        for pair in (row["tag_list"] as String?)?.split(separator: "\u{1F}") ?? [] {
            let parts = pair.split(separator: "\u{1E}", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { tags[String(parts[0])] = String(parts[1]) }
        }
        let parentModel: String? = row["parent_model"]
        let parentVersion: String? = row["parent_version"]
        return VersionSummary(
            model: row["model_name"],
            version: row["version"],
            digest: row["digest"],
            created: row["created_at"],
            publisherKeyID: row["publisher_key_id"],
            message: row["message"],
            aliases: aliases,
            tags: tags,
            privacy: privacy,
            datasetID: row["dataset_id"],
            datasetDigest: row["dataset_digest"],
            trainingConfigDigest: row["training_config_digest"],
            parent: parentModel.flatMap { m in parentVersion.map { "\(m):\($0)" } },
            erasedAt: row["erased_at"],
            erasedBy: row["erased_by"],
            rowID: row["id"]
        )
    }
}

// MARK: - Tags and lineage

extension Registry {
    /// Sets (or, with a `nil` value, removes) tags of a version. Tags are mutable labels, not part of the signed statement.
    public func tag(_ reference: ModelReference, set tags: [String: String?]) throws(CofferRegistryError) {
        for key in tags.keys { try ModelReference.validate(version: key) }
        let id = try resolve(reference).id
        try database.write { db in
            for (key, value) in tags {
                if let value {
                    try db.execute(sql: "INSERT OR REPLACE INTO tags (version_id, key, value) VALUES (?, ?, ?)", arguments: [id, key, value])
                } else {
                    try db.execute(sql: "DELETE FROM tags WHERE version_id = ? AND key = ?", arguments: [id, key])
                }
            }
        }
    }

    /// The lineage of a version: itself, then its parent, its parent's parent, and so on.
    public func lineage(_ reference: ModelReference) throws(CofferRegistryError) -> [VersionSummary] {
        var chain: [VersionSummary] = []
        var next: Int64? = try resolve(reference).id
        var seen = Set<Int64>()
        while let id = next, seen.insert(id).inserted {
            let (model, version, parent) = try database.read { db -> (String, String, Int64?) in
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT m.name, v.version, v.parent_version_id FROM versions v JOIN models m ON m.id = v.model_id WHERE v.id = ?",
                    arguments: [id]
                )!
                return (row[0], row[1], row[2])
            }
            chain.append(try show(try ModelReference(name: model, selector: .version(version))))
            next = parent
        }
        return chain
    }
}

extension Registry {
    /// The model a blob belongs to (original or re-encrypted), or `nil` when no version names it.
    public func model(ofBlob digest: String) throws(CofferRegistryError) -> String? {
        try database.read { db in
            try String.fetchOne(
                db,
                sql: """
                    SELECT m.name FROM models m JOIN versions v ON v.model_id = m.id
                    WHERE v.id IN (SELECT version_id FROM files WHERE sealed_sha256 = ?1 UNION SELECT version_id FROM rekeyed_files WHERE sealed_sha256 = ?1)
                    LIMIT 1
                    """,
                arguments: [digest]
            )
        }
    }

    /// Where a blob lives in the store.
    public func blobPath(_ digest: String) -> String { blobs.path(of: digest) }
}
