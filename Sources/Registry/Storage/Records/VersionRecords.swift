import Foundation

// The rows of a model version: the version, its files, its wrapped data keys.
// The rows of `schema/` (and `schema/postgres/`, the same tables), one record type per table or per query shape.
// Columns are snake_case, properties camelCase: each backend maps them (GRDB's column coding strategies, the
// PostgreSQL row decoder). Times are RFC 3339 UTC text, digests lower-case hex, public identities NAME.pub bytes.

/// A row of `versions` (`id` and `modelID` are assigned by the store when it inserts one).
struct VersionRecord: Codable, Sendable, Equatable {
    var id: Int64?
    var modelID: Int64?
    var version: String
    var number: Int64?
    var digest: String
    var publisherKeyID: String
    var message: String?
    var createdAt: String
    var parentVersionID: Int64?
    var datasetID: String?
    var datasetDigest: String?
    var trainingConfigDigest: String?
    var mechanism: String?
    var epsilon: Double?
    var delta: Double?
    var accountant: String?
    var noiseMultiplier: Double?
    var clippingNorm: Double?
    var samplingRate: Double?
    var steps: Int?
    var epochs: Double?
    var datasetSize: Int?
    var privacyUnit: String?
    var pruningMethod: String?
    var pruningRatio: Double?
    var achievedSparsity: Double?
    /// The signed evidence as canonical JSON, and its flat fields (migration 8).
    var evidence: String? = nil
    var auditEpsilon: Double? = nil
    var membershipAUC: Double? = nil
    var membershipTPR: Double? = nil
    /// Where the standardisation statistics came from and how batches were drawn, as signed (migration 10).
    var standardisation: String? = nil
    var batchSampling: String? = nil

    enum CodingKeys: String, CodingKey {
        case id, version, number, digest, message, mechanism, epsilon, delta, accountant, steps, epochs, evidence, standardisation
        case batchSampling = "batch_sampling"
        case modelID = "model_id"
        case publisherKeyID = "publisher_key_id"
        case createdAt = "created_at"
        case parentVersionID = "parent_version_id"
        case datasetID = "dataset_id"
        case datasetDigest = "dataset_digest"
        case trainingConfigDigest = "training_config_digest"
        case noiseMultiplier = "noise_multiplier"
        case clippingNorm = "clipping_norm"
        case samplingRate = "sampling_rate"
        case datasetSize = "dataset_size"
        case privacyUnit = "privacy_unit"
        case pruningMethod = "pruning_method"
        case pruningRatio = "pruning_ratio"
        case achievedSparsity = "achieved_sparsity"
        case auditEpsilon = "audit_epsilon"
        case membershipAUC = "membership_auc"
        case membershipTPR = "membership_tpr"
    }

    /// The typed privacy columns, as metadata (segments and claims live in `version_privacy`).
    var privacy: PrivacyMetadata {
        var p = PrivacyMetadata()
        p.mechanism = mechanism
        p.epsilon = epsilon
        p.delta = delta
        p.accountant = accountant
        p.noiseMultiplier = noiseMultiplier
        p.clippingNorm = clippingNorm
        p.samplingRate = samplingRate
        p.steps = steps
        p.epochs = epochs
        p.datasetSize = datasetSize
        p.privacyUnit = privacyUnit
        p.pruningMethod = pruningMethod
        p.pruningRatio = pruningRatio
        p.achievedSparsity = achievedSparsity
        p.evidence = evidence.flatMap(Evidence.init(storedText:))
        p.standardisation = standardisation
        p.batchSampling = batchSampling
        return p
    }
}

/// A row of `files`.
struct FileRecord: Codable, Sendable, Equatable {
    var versionID: Int64
    var path: String
    var size: Int
    var plaintextSHA256: String
    var sealedSHA256: String
    var sealedSize: Int

    enum CodingKeys: String, CodingKey {
        case path, size
        case versionID = "version_id"
        case plaintextSHA256 = "plaintext_sha256"
        case sealedSHA256 = "sealed_sha256"
        case sealedSize = "sealed_size"
    }
}

/// A row of `wrapped_keys`: a version's data key as a stanza for one recipient.
struct WrappedKeyRecord: Codable, Sendable, Equatable {
    var versionID: Int64
    var recipientKeyID: String
    var stanza: Data

    enum CodingKeys: String, CodingKey {
        case stanza
        case versionID = "version_id"
        case recipientKeyID = "recipient_key_id"
    }
}

/// A row of `rekeyed_files`: the blob that holds a file after a rekey.
struct RekeyedFileRecord: Codable, Sendable, Equatable {
    var versionID: Int64
    var path: String
    var sealedSHA256: String
    var sealedSize: Int

    enum CodingKeys: String, CodingKey {
        case path
        case versionID = "version_id"
        case sealedSHA256 = "sealed_sha256"
        case sealedSize = "sealed_size"
    }
}

/// Everything a new version's commit inserts besides the ledger record.
struct NewVersion: Sendable {
    var model: String
    var row: VersionRecord
    var files: [FileRecord]
    /// `(recipient key ID, stanza)`.
    var keys: [(recipient: String, stanza: Data)]
    /// The DSSE envelope and the OpenSSF bundle.
    var envelope: Data
    var bundle: Data
    var tags: [String: String]
    /// The accountant history and claimed epsilon, JSON and number, when the statement has them.
    var segments: String?
    var claimedEpsilon: Double?
    /// The dataset the version is charged to, and who overrode the budget, when it is charged.
    var chargedDataset: String?
    var overrideBy: String?
}

/// The identifying columns of a version.
struct VersionHead: Sendable, Equatable {
    var id: Int64
    var model: String
    var version: String
    var digest: String
}

/// One version as the store holds it, every table.
struct StoredVersionRows: Sendable {
    var id: Int64
    var model: String
    var row: VersionRecord
    var segments: String?
    var claimedEpsilon: Double?
    var files: [FileRecord]
    var envelope: Data?
    var bundle: Data?
    var rekeyAttestation: Data?
    var rekeyedFiles: [RekeyedFileRecord]
    var erasedAt: String?
    var erasedBy: String?
}

/// A version as `list` shows it: its row with model, parent, aliases, tags and erasure.
struct VersionSummaryRow: Sendable {
    var id: Int64
    var model: String
    var row: VersionRecord
    var parent: String?
    var aliases: [String]
    var tags: [String: String]
    var erasedAt: String?
    var erasedBy: String?

    /// The query both metadata stores run for it, in a dialect's names for string aggregation and for a character by
    /// its code point. Aliases and tags come as one column each, joined with the unit (31) and record (30) separators.
    static func select(aggregate: String, character: String) -> String {
        """
        SELECT v.*, m.name AS model_name, p.version AS parent_version, pm.name AS parent_model,
            (SELECT \(aggregate)(alias, \(character)(31)) FROM aliases a WHERE a.version_id = v.id) AS alias_list,
            (SELECT \(aggregate)(key || \(character)(30) || value, \(character)(31)) FROM tags t WHERE t.version_id = v.id) AS tag_list,
            (SELECT erased_at FROM erasures e WHERE e.version_id = v.id) AS erased_at,
            (SELECT erased_by FROM erasures e WHERE e.version_id = v.id) AS erased_by
        FROM versions v JOIN models m ON m.id = v.model_id
        LEFT JOIN versions p ON p.id = v.parent_version_id LEFT JOIN models pm ON pm.id = p.model_id
        """
    }

    /// A row of `select`, its joined lists split.
    init(
        id: Int64,
        model: String,
        row: VersionRecord,
        parentModel: String?,
        parentVersion: String?,
        aliasList: String?,
        tagList: String?,
        erasedAt: String?,
        erasedBy: String?
    ) {
        var tags: [String: String] = [:]
        for pair in tagList?.split(separator: "\u{1F}") ?? [] {
            let parts = pair.split(separator: "\u{1E}", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { tags[String(parts[0])] = String(parts[1]) }
        }
        self.id = id
        self.model = model
        self.row = row
        self.parent = parentModel.flatMap { m in parentVersion.map { "\(m):\($0)" } }
        self.aliases = aliasList?.split(separator: "\u{1F}").map(String.init).sorted() ?? []
        self.tags = tags
        self.erasedAt = erasedAt
        self.erasedBy = erasedBy
    }
}
