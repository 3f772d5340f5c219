import CofferCrypto
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
    /// The version's signed evidence must hold a privacy audit whose lower bound is at most its proven epsilon.
    public var requireAudit: Bool?
    /// The strongest membership attack in the version's signed evidence must reach at most this AUC.
    public var maxMembershipAUC: Double?

    enum CodingKeys: String, CodingKey {
        case signer
        case maxEpsilon = "max_epsilon"
        case maxDelta = "max_delta"
        case minPruningRatio = "min_pruning_ratio"
        case requireBudget = "require_budget"
        case requireAudit = "require_audit"
        case maxMembershipAUC = "max_membership_auc"
    }

    public init(
        maxEpsilon: Double? = nil,
        maxDelta: Double? = nil,
        signer: String? = nil,
        minPruningRatio: Double? = nil,
        requireBudget: Bool? = nil,
        requireAudit: Bool? = nil,
        maxMembershipAUC: Double? = nil
    ) {
        self.maxEpsilon = maxEpsilon
        self.maxDelta = maxDelta
        self.signer = signer
        self.minPruningRatio = minPruningRatio
        self.requireBudget = requireBudget
        self.requireAudit = requireAudit
        self.maxMembershipAUC = maxMembershipAUC
    }

    public var isEmpty: Bool { self == PolicyRules() }

    /// The first rule a version's signed facts break, as a sentence; `nil` when all hold. `signerName` is the name
    /// the ledger trusts the signer's key under (nil when it is not trusted): a `signer` rule matches it or the key ID.
    func violation(facts: LedgerChange.AliasFacts, signerName: String?) -> String? {
        if let maxEpsilon {
            guard let epsilon = facts.epsilon else { return "requires epsilon <= \(maxEpsilon); the version states no epsilon" }
            if epsilon > maxEpsilon { return "requires epsilon <= \(maxEpsilon); the version has \(epsilon)" }
        }
        if let maxDelta {
            guard let delta = facts.delta else { return "requires delta <= \(maxDelta); the version states no delta" }
            if delta > maxDelta { return "requires delta <= \(maxDelta); the version has \(delta)" }
        }
        if let required = self.signer, required != facts.signer, required != signerName {
            return "requires a signature by \(required); the version is signed by \(signerName ?? "an untrusted key") (\(facts.signer))"
        }
        if let minPruningRatio {
            guard let ratio = facts.pruningRatio else { return "requires pruning ratio >= \(minPruningRatio); the version states none" }
            if ratio < minPruningRatio { return "requires pruning ratio >= \(minPruningRatio); the version has \(ratio)" }
        }
        if requireBudget == true, !facts.charged { return "requires a version charged to a dataset with a privacy budget" }
        if requireAudit == true {
            guard let bound = facts.auditEpsilon else { return "requires a privacy audit in the version's evidence; it has none" }
            guard let epsilon = facts.epsilon else { return "requires an audit below a proven epsilon; the version states no epsilon" }
            if bound > epsilon {
                return "requires an audit whose lower bound is at most the proven epsilon; the audit found \(bound) above \(epsilon)"
            }
        }
        if let maxMembershipAUC {
            guard let auc = facts.membershipAUC else {
                return "requires membership AUC <= \(maxMembershipAUC); the version's evidence has no membership attack"
            }
            if auc > maxMembershipAUC { return "requires membership AUC <= \(maxMembershipAUC); the version has \(auc)" }
        }
        return nil
    }
}

extension LedgerChange.AliasFacts {
    /// The facts of a version a policy judges, from its signed privacy metadata.
    init(privacy: PrivacyMetadata, signer: String, charged: Bool) {
        self.init(
            epsilon: privacy.epsilon,
            delta: privacy.delta,
            pruningRatio: privacy.pruningRatio,
            signer: signer,
            charged: charged,
            auditEpsilon: privacy.evidence?.auditEpsilon,
            membershipAUC: privacy.evidence?.membershipAUC
        )
    }
}

extension Registry {
    /// Sets the rules of `model`'s `alias` (every alias when `nil`); empty rules remove the policy. Admin only.
    /// Aliases that break the new rules are not moved: they are refused at pull and session open (and returned).
    @discardableResult
    public func setPolicy(model: String, alias: String?, rules: PolicyRules, by signer: Signer) async throws(CofferRegistryError) -> [String] {
        try ModelReference.validate(name: model)
        if let alias { try ModelReference.validate(version: alias) }
        try await require(signer, .admin, on: model, action: "policy.set", target: model)
        if let maxEpsilon = rules.maxEpsilon, !(maxEpsilon >= 0 && maxEpsilon.isFinite) { throw .invalidPrivacy("max_epsilon must be >= 0") }
        if let maxDelta = rules.maxDelta, !(maxDelta >= 0 && maxDelta < 1) { throw .invalidPrivacy("max_delta must be in [0, 1)") }
        if let ratio = rules.minPruningRatio, !(ratio >= 0 && ratio < 1) { throw .invalidPrivacy("min_pruning_ratio must be in [0, 1)") }
        if let auc = rules.maxMembershipAUC, !(auc >= 0 && auc <= 1) { throw .invalidPrivacy("max_membership_auc must be in [0, 1]") }
        let text = String(decoding: rules.json.canonicalBytes, as: UTF8.self)
        let state = try await record(
            .policySet(model: model, alias: alias, rules: rules),
            signer: signer,
            action: "policy.set",
            target: "\(model)@\(alias ?? "*")",
            reason: text
        )
        var violating: [String] = []
        for key in state.aliases.keys.sorted() {
            guard key.hasPrefix("\(model)@"), let target = state.aliases[key] else { continue }
            let name = String(key.dropFirst(model.count + 1))
            if (try? await checkPolicy(model: model, alias: name, digest: target.digest, state: state)) == nil {
                violating.append("\(model)@\(name)")
            }
        }
        return violating
    }

    /// The rules of `model`: the every-alias ones (alias nil) first.
    public func policies(model: String) async throws(CofferRegistryError) -> [(alias: String?, rules: PolicyRules)] {
        try await ledgerState().policies(model: model)
    }

    /// Refuses, naming the broken rule, a version that may not carry `alias` of `model` by its signed `facts`.
    func checkPolicy(model: String, alias: String, facts: LedgerChange.AliasFacts, state: LedgerState) throws(CofferRegistryError) {
        for (_, rules) in state.policies(model: model, alias: alias) {
            if let why = rules.violation(facts: facts, signerName: state.trusted[facts.signer]?.name) {
                throw .policyViolation("alias \(alias) of \(model) \(why)")
            }
        }
    }

    /// Refuses a version that `alias` names but whose signed statement breaks the alias's policies now: policies
    /// are enforced wherever an alias is followed (pull, verify, session open), not only when it is set.
    func checkPolicy(model: String, alias: String, digest: String, state: LedgerState) async throws(CofferRegistryError) {
        guard !state.policies(model: model, alias: alias).isEmpty else { return }
        let stored = try await loadVersion(try await versionRow(model: model, digest: digest))
        let (statement, signer) = try await authenticate(stored)
        try checkPolicy(
            model: model,
            alias: alias,
            facts: .init(privacy: statement.privacy, signer: signer.keyID, charged: state.isCharged(digest)),
            state: state
        )
    }
}
