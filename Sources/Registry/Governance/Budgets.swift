import CofferTraining
import Foundation

/// A dataset's privacy budget and what the versions trained on it have spent.
public struct BudgetStatus: Sendable, Equatable, Codable {
    public struct Charge: Sendable, Equatable, Codable {
        public var model: String
        public var version: String
        /// This version's epsilon alone, at the budget's delta.
        public var epsilon: Double
        public var overrideBy: String?
        public var erased: Bool

        enum CodingKeys: String, CodingKey {
            case model, version, epsilon, erased
            case overrideBy = "override_by"
        }
    }

    public var dataset: String
    public var epsilon: Double
    public var delta: Double
    /// The models whose versions may be charged; `nil` for any.
    public var models: [String]?
    /// The composition of every charged version's accountant history (RDP, summed order by order).
    public var spent: Double
    public var remaining: Double
    public var versions: [Charge]

    enum CodingKeys: String, CodingKey {
        case dataset, epsilon, delta, models, spent, remaining, versions
    }

    /// `models` is encoded as `null` when any model may be charged, not left out.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(dataset, forKey: .dataset)
        try container.encode(epsilon, forKey: .epsilon)
        try container.encode(delta, forKey: .delta)
        try container.encode(models, forKey: .models)
        try container.encode(spent, forKey: .spent)
        try container.encode(remaining, forKey: .remaining)
        try container.encode(versions, forKey: .versions)
    }
}

extension Registry {
    /// Sets (or changes) a dataset's total budget; an admin's act in a registry with principals.
    ///
    /// - Parameter models: the scopes (`*`, a model, `NS/`) whose versions may be charged to it; `nil` keeps those the
    ///   budget already names (any model for a new budget), `["*"]` lets any model be charged.
    public func setBudget(
        dataset: String,
        epsilon: Double,
        delta: Double,
        models: [String]? = nil,
        by signer: Signer
    ) async throws(CofferRegistryError) {
        try ModelReference.validate(datasetID: dataset)
        try await require(signer, .admin, on: nil, action: "budget.set", target: dataset)
        guard epsilon > 0, epsilon.isFinite else { throw .invalidPrivacy("budget epsilon must be > 0, got \(epsilon)") }
        guard delta > 0, delta < 1 else { throw .invalidPrivacy("budget delta must be in (0, 1), got \(delta)") }
        if let models {
            guard (1...LedgerChange.maximumBudgetModels).contains(models.count) else {
                throw .invalidInput("a budget names 1 to \(LedgerChange.maximumBudgetModels) model scopes, not \(models.count)")
            }
            if let bad = models.first(where: { !LedgerState.validScope($0) }) {
                throw .invalidInput("invalid model scope '\(bad)': use *, a model name, or a namespace ending in /")
            }
        }
        let scopes: [String]?
        if let models {
            scopes = models.contains("*") ? nil : Array(Set(models)).sorted()
        } else {
            scopes = try await ledgerState().budgets[dataset]?.models
        }
        try await record(
            .budgetSet(dataset: dataset, epsilon: epsilon, delta: delta, models: scopes),
            signer: signer,
            action: "budget.set",
            target: dataset,
            reason: "epsilon \(epsilon) delta \(delta)" + (scopes.map { " models \($0.joined(separator: ","))" } ?? "")
        )
    }

    /// The budget of `dataset` and its charges, recomputed from the ledger's `version` records (a charge deleted from
    /// the `budget_charges` table still counts).
    public func budget(dataset: String) async throws(CofferRegistryError) -> BudgetStatus {
        try ModelReference.validate(datasetID: dataset)
        let state = try await ledgerState()
        guard let status = Self.budgetStatus(state, dataset: dataset) else { throw .noBudget(dataset) }
        return status
    }

    /// A dataset's budget and what its charged versions spent; `nil` when it has no budget.
    static func budgetStatus(_ state: LedgerState, dataset: String) -> BudgetStatus? {
        guard let budget = state.budgets[dataset] else { return nil }
        let charges = budget.charges.map { charge in
            BudgetStatus.Charge(
                model: charge.model,
                version: charge.version,
                epsilon: composedEpsilon(charge.segments, delta: budget.delta),
                overrideBy: charge.overrideBy,
                erased: state.erased[charge.digest] != nil
            )
        }
        let spent = state.spent(dataset) ?? 0
        return BudgetStatus(
            dataset: dataset,
            epsilon: budget.epsilon,
            delta: budget.delta,
            models: budget.models,
            spent: spent,
            remaining: max(0, budget.epsilon - spent),
            versions: charges
        )
    }

    /// The composition of `segments` at `delta` by the training module's RDP accountant: RDP summed order by
    /// order over every segment, then converted once. Budgets use this bound: it composes exactly across any number
    /// of versions and costs microseconds.
    static func composedEpsilon(_ segments: [PrivacySegment], delta: Double) -> Double {
        // Nothing released spends nothing; the RDP conversion of an empty composition is small but not 0 (at
        // delta 1e-300 it says 0.7).
        guard segments.contains(where: { $0.steps > 0 }) else { return 0 }
        var rdp = RDPAccountant()
        for segment in segments where segment.steps > 0 { rdp.compose(segment) }
        return rdp.epsilon(delta: delta).epsilon
    }

    /// One history's tightest bound: the smaller of RDP and PLD (PLD skipped where its grid would pass 2^20 points).
    static func tightestEpsilon(_ segments: [PrivacySegment], delta: Double) -> (epsilon: Double, accountant: String) {
        let rdp = composedEpsilon(segments, delta: delta)
        let active = segments.filter { $0.steps > 0 }
        guard !active.isEmpty, let pld = try? PLDAccountant(maximumGridPoints: 1 << 20).epsilon(segments: active, delta: delta), pld < rdp else {
            return (rdp, "rdp")
        }
        return (pld, "pld")
    }

    /// Refuses a version whose charge would take `dataset` past its budget, naming spent, requested and remaining
    /// epsilon. Returns whether the dataset has a budget (and the version is to be charged).
    static func checkBudget(
        _ state: LedgerState,
        model: String,
        dataset: String?,
        privacy: PrivacyMetadata,
        override: Bool
    ) throws(CofferRegistryError)
        -> Bool
    {
        guard let dataset, let before = budgetStatus(state, dataset: dataset) else { return false }
        // Not even an override: a version of another team's model would spend a budget that is not its to spend.
        if let budget = state.budgets[dataset], !budget.admits(model: model) {
            throw .refused(
                "dataset \(dataset)'s budget is for \(budget.models?.joined(separator: ", ") ?? "*") only: \(model) may not be charged to it"
            )
        }
        // An override lets a release exceed the budget; nothing lets one escape the accounting.
        switch privacy.chargeRefusal {
        case .notPrivate?:
            throw .budgetExceeded("dataset \(dataset) has a privacy budget: a model trained without differential privacy spends all of it")
        case .seededBatches?:
            throw .budgetExceeded(
                "dataset \(dataset) has a privacy budget: this version's batches were drawn from a known seed, so its epsilon is not a DP guarantee (Coffer before 2026-12-06)"
            )
        case .nonprivateStatistics?:
            throw .budgetExceeded(
                "dataset \(dataset) has a privacy budget: this version's standardisation statistics were released without differential privacy, which spends all of it"
            )
        case .noHistory?:
            throw .budgetExceeded(
                "dataset \(dataset) has a privacy budget: the push needs the version's accountant history (a checkpoint's privacy.json, or --privacy-from)"
            )
        case nil: break
        }
        // Omitted, either could hide exact statistics or seeded batches (helper-69): a new charge must say both.
        guard privacy.standardisation != nil, privacy.batchSampling != nil else {
            throw .budgetExceeded(
                "dataset \(dataset) has a privacy budget: the version's privacy metadata must say how its standardisation statistics "
                    + "and batches were made (standardisation, batch_sampling: a checkpoint's privacy.json has them, an imported history can state them)"
            )
        }
        let after = state.spent(dataset, adding: privacy.segments) ?? 0
        guard after <= before.epsilon || override else {
            let alone = composedEpsilon(privacy.segments, delta: before.delta)
            throw .budgetExceeded(
                String(
                    format: "dataset %@ (epsilon %g at delta %g): spent %.4f, this version %.4f, together %.4f: more than the remaining %.4f",
                    dataset,
                    before.epsilon,
                    before.delta,
                    before.spent,
                    alone,
                    after,
                    before.remaining
                )
            )
        }
        return true
    }
}

extension Registry {
    /// Every dataset with a budget, by id, as ``budget(dataset:)`` reports each.
    public func budgets() async throws(CofferRegistryError) -> [BudgetStatus] {
        let state = try await ledgerState()
        return state.budgets.keys.sorted().compactMap { Self.budgetStatus(state, dataset: $0) }
    }

    /// The composed epsilon of `dataset`'s budget after each charge, in the order the versions were charged: the
    /// histories of the first `k` versions composed (RDP, at the budget's delta), for `k` from 1; the last is what the
    /// budget has spent.
    public func budgetHistory(dataset: String) async throws(CofferRegistryError) -> [Double] {
        try ModelReference.validate(datasetID: dataset)
        let state = try await ledgerState()
        guard let budget = state.budgets[dataset] else { throw .noBudget(dataset) }
        var segments: [PrivacySegment] = []
        return budget.charges.map { charge in
            segments += charge.segments
            return Self.composedEpsilon(segments, delta: budget.delta)
        }
    }
}
