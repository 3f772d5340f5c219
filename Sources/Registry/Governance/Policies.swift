public import CofferCrypto
import Foundation
import GRDB

/// What a version must meet to carry an alias of a model (`alias: nil`: every alias). JSON keys as below.
public struct PolicyRules: Sendable, Equatable, Codable {
    public var maxEpsilon: Double?
    public var maxDelta: Double?
    /// The signer's name or key ID.
    public var signer: String?
    public var minPruningRatio: Double?
    /// The version must be charged to a dataset that has a privacy budget.
    public var requireBudget: Bool?

    enum CodingKeys: String, CodingKey {
        case signer
        case maxEpsilon = "max_epsilon"
        case maxDelta = "max_delta"
        case minPruningRatio = "min_pruning_ratio"
        case requireBudget = "require_budget"
    }

    public init(maxEpsilon: Double? = nil, maxDelta: Double? = nil, signer: String? = nil, minPruningRatio: Double? = nil, requireBudget: Bool? = nil)
    {
        self.maxEpsilon = maxEpsilon
        self.maxDelta = maxDelta
        self.signer = signer
        self.minPruningRatio = minPruningRatio
        self.requireBudget = requireBudget
    }

    public var isEmpty: Bool { self == PolicyRules() }

    /// The first rule `privacy`, `signer` and the budget state break, as a sentence; `nil` when all hold.
    func violation(privacy: PrivacyMetadata, signer: PublicIdentity, budgeted: Bool) -> String? {
        if let maxEpsilon {
            guard let epsilon = privacy.epsilon else { return "requires epsilon <= \(maxEpsilon); the version states no epsilon" }
            if epsilon > maxEpsilon { return "requires epsilon <= \(maxEpsilon); the version has \(epsilon)" }
        }
        if let maxDelta {
            guard let delta = privacy.delta else { return "requires delta <= \(maxDelta); the version states no delta" }
            if delta > maxDelta { return "requires delta <= \(maxDelta); the version has \(delta)" }
        }
        if let required = self.signer, required != signer.name, required != signer.keyID {
            return "requires a signature by \(required); the version is signed by \(signer.name) (\(signer.keyID))"
        }
        if let minPruningRatio {
            guard let ratio = privacy.pruningRatio else { return "requires pruning ratio >= \(minPruningRatio); the version states none" }
            if ratio < minPruningRatio { return "requires pruning ratio >= \(minPruningRatio); the version has \(ratio)" }
        }
        if requireBudget == true, !budgeted { return "requires a version charged to a dataset with a privacy budget" }
        return nil
    }
}

extension Registry {
    /// Sets the rules of `model`'s `alias` (every alias when `nil`); empty rules remove the policy. Admin only.
    public func setPolicy(model: String, alias: String?, rules: PolicyRules, by actor: Principal?) throws(CofferRegistryError) {
        try ModelReference.validate(name: model)
        if let alias { try ModelReference.validate(version: alias) }
        try require(.admin, on: model, by: actor, action: "policy.set", target: model)
        if let maxEpsilon = rules.maxEpsilon, !(maxEpsilon >= 0) { throw .invalidPrivacy("max_epsilon must be >= 0") }
        if let maxDelta = rules.maxDelta, !(maxDelta >= 0 && maxDelta < 1) { throw .invalidPrivacy("max_delta must be in [0, 1)") }
        if let ratio = rules.minPruningRatio, !(ratio >= 0 && ratio < 1) { throw .invalidPrivacy("min_pruning_ratio must be in [0, 1)") }
        let text: String
        do { text = String(decoding: try JSONEncoder().encode(rules), as: UTF8.self) } catch { throw .database("\(error)") }
        try database.write { db in
            if rules.isEmpty {
                try db.execute(sql: "DELETE FROM policies WHERE model = ? AND alias = ?", arguments: [model, alias ?? ""])
            } else {
                try db.execute(
                    sql: "INSERT OR REPLACE INTO policies (model, alias, rules, set_at, set_by) VALUES (?, ?, ?, ?, ?)",
                    arguments: [model, alias ?? "", text, Self.now(), actor?.name]
                )
            }
        }
        try audit(principal: actor?.name ?? "-", action: "policy.set", target: "\(model)@\(alias ?? "*")", outcome: .ok, reason: text)
    }

    /// The rules that apply to `model`'s `alias`: the alias's own and the model-wide ones (`alias: nil` reads
    /// only the model-wide ones).
    public func policies(model: String) throws(CofferRegistryError) -> [(alias: String?, rules: PolicyRules)] {
        let rows = try database.read { db in
            try Row.fetchAll(db, sql: "SELECT alias, rules FROM policies WHERE model = ? ORDER BY alias", arguments: [model])
        }
        return rows.compactMap { row in
            let alias: String = row["alias"]
            guard let rules = try? JSONDecoder().decode(PolicyRules.self, from: Data((row["rules"] as String).utf8)) else { return nil }
            return (alias.isEmpty ? nil : alias, rules)
        }
    }

    /// Refuses, naming the broken rule, a version that may not carry `alias`.
    /// `charged` says whether the version is charged to a budget; when `nil`, whether `datasetID` has one (a push).
    func checkPolicy(
        model: String,
        alias: String,
        privacy: PrivacyMetadata,
        signer: PublicIdentity,
        datasetID: String?,
        charged: Bool? = nil
    ) throws(CofferRegistryError) {
        let applicable = try policies(model: model).filter { $0.alias == nil || $0.alias == alias }
        guard !applicable.isEmpty else { return }
        var budgeted = charged ?? false
        if charged == nil, let datasetID {
            budgeted = try database.read { db in
                try Bool.fetchOne(db, sql: "SELECT 1 FROM budgets WHERE dataset_id = ?", arguments: [datasetID]) ?? false
            }
        }
        for (_, rules) in applicable {
            if let why = rules.violation(privacy: privacy, signer: signer, budgeted: budgeted) {
                throw .policyViolation("alias \(alias) of \(model) \(why)")
            }
        }
    }
}
