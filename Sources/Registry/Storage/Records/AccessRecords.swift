import Foundation

// The rows the ledger's replay materializes: keys, principals and grants, trusted signers, policies, budgets.
// How columns and values are written: VersionRecords.swift.

struct RegistryKeyRecord: Codable, Sendable, Equatable {
    var keyID: String
    var publicIdentity: Data
    var createdAt: String
    var retiredAt: String?

    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case publicIdentity = "public_identity"
        case createdAt = "created_at"
        case retiredAt = "retired_at"
    }
}

struct PrincipalRecord: Codable, Sendable, Equatable {
    var name: String
    var keyID: String
    var publicIdentity: Data
    var addedAt: String
    var addedBy: String?

    enum CodingKeys: String, CodingKey {
        case name
        case keyID = "key_id"
        case publicIdentity = "public_identity"
        case addedAt = "added_at"
        case addedBy = "added_by"
    }
}

struct GrantRecord: Codable, Sendable, Equatable {
    var principal: String
    var role: String
    var scope: String
    var alias: String?
    var grantedAt: String
    var grantedBy: String?

    enum CodingKeys: String, CodingKey {
        case principal, role, scope, alias
        case grantedAt = "granted_at"
        case grantedBy = "granted_by"
    }
}

struct TrustedSignerRecord: Codable, Sendable, Equatable {
    var keyID: String
    var name: String
    var publicIdentity: Data
    var addedAt: String

    enum CodingKeys: String, CodingKey {
        case name
        case keyID = "key_id"
        case publicIdentity = "public_identity"
        case addedAt = "added_at"
    }
}

struct RecipientIdentityRecord: Codable, Sendable, Equatable {
    var keyID: String
    var publicIdentity: Data

    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case publicIdentity = "public_identity"
    }
}

struct PolicyRecord: Codable, Sendable, Equatable {
    var model: String
    /// Empty for rules on every alias of the model.
    var alias: String
    var rules: String
    var setAt: String
    var setBy: String?

    enum CodingKeys: String, CodingKey {
        case model, alias, rules
        case setAt = "set_at"
        case setBy = "set_by"
    }
}

struct BudgetRecord: Codable, Sendable, Equatable {
    var datasetID: String
    var epsilon: Double
    var delta: Double
    var setAt: String
    var setBy: String?

    enum CodingKeys: String, CodingKey {
        case epsilon, delta
        case datasetID = "dataset_id"
        case setAt = "set_at"
        case setBy = "set_by"
    }
}
