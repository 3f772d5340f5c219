public import CofferCrypto
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
        let summaries = try database.read { db in
            try Row.fetchAll(
                db,
                sql: "\(Self.summarySelect) \(whereSQL) ORDER BY v.created_at DESC, v.id DESC\(limitSQL)",
                arguments: StatementArguments(arguments)
            ).map(Self.summary)
        }
        if let model, summaries.isEmpty, try !modelExists(model) { throw .unknownModel(model) }
        return summaries
    }

    /// One version in full, with its files.
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
        let stored = try loadVersion(id)
        summary.files = stored.files
        summary.privacy.segments = stored.privacy.segments
        summary.privacy.claimedEpsilon = stored.privacy.claimedEpsilon
        return summary
    }

    /// Points `alias` at a version, once the version meets the alias's policy (checked on its signed facts).
    public func setAlias(_ alias: String, model: String, version: String, by actor: Principal? = nil) throws(CofferRegistryError) {
        try ModelReference.validate(version: alias)
        try require(.publisher, on: model, by: actor, action: "alias.set", target: "\(model)@\(alias)")
        let id = try resolve(try ModelReference(name: model, selector: .version(version))).id
        if !(try policies(model: model).isEmpty) {
            let stored = try loadVersion(id)
            let (statement, signer) = try authenticate(stored)
            let charged = try database.read { db in
                try Bool.fetchOne(db, sql: "SELECT 1 FROM budget_charges WHERE version_id = ?", arguments: [id]) ?? false
            }
            do {
                try checkPolicy(model: model, alias: alias, privacy: statement.privacy, signer: signer, datasetID: nil, charged: charged)
            } catch {
                try? audit(
                    principal: actor?.name ?? "-",
                    action: "alias.set",
                    target: "\(model)@\(alias)",
                    outcome: .refused,
                    reason: error.description
                )
                throw error
            }
        }
        try database.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO aliases (model_id, alias, version_id, updated_at) SELECT model_id, ?, id, ? FROM versions WHERE id = ?",
                arguments: [alias, Self.now(), id]
            )
        }
        try audit(principal: actor?.name ?? "-", action: "alias.set", target: "\(model)@\(alias)", outcome: .ok, reason: "version \(version)")
    }

    /// Removes `alias` of `model`.
    public func removeAlias(_ alias: String, model: String, by actor: Principal? = nil) throws(CofferRegistryError) {
        try require(.publisher, on: model, by: actor, action: "alias.rm", target: "\(model)@\(alias)")
        _ = try resolve(try ModelReference(name: model, selector: .alias(alias)))
        try database.write { db in
            try db.execute(
                sql: "DELETE FROM aliases WHERE alias = ? AND model_id = (SELECT id FROM models WHERE name = ?)",
                arguments: [alias, model]
            )
        }
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
            erasedBy: row["erased_by"]
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
