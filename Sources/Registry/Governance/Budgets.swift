public import CofferTraining
import Foundation
import GRDB

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
    /// The composition of every charged version's accountant history (RDP, summed order by order).
    public var spent: Double
    public var remaining: Double
    public var versions: [Charge]

    enum CodingKeys: String, CodingKey {
        case dataset, epsilon, delta, spent, remaining, versions
    }
}

extension Registry {
    /// Sets (or changes) a dataset's total budget; an admin's act in a registry with principals.
    public func setBudget(dataset: String, epsilon: Double, delta: Double, by actor: Principal?) throws(CofferRegistryError) {
        try ModelReference.validate(datasetID: dataset)
        try require(.admin, on: nil, by: actor, action: "budget.set", target: dataset)
        guard epsilon > 0, epsilon.isFinite else { throw .invalidPrivacy("budget epsilon must be > 0, got \(epsilon)") }
        guard delta > 0, delta < 1 else { throw .invalidPrivacy("budget delta must be in (0, 1), got \(delta)") }
        try database.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO budgets (dataset_id, epsilon, delta, set_at, set_by) VALUES (?, ?, ?, ?, ?)",
                arguments: [dataset, epsilon, delta, Self.now(), actor?.name]
            )
        }
        try audit(principal: actor?.name ?? "-", action: "budget.set", target: dataset, outcome: .ok, reason: "epsilon \(epsilon) delta \(delta)")
    }

    /// The budget of `dataset` and its charges.
    public func budget(dataset: String) throws(CofferRegistryError) -> BudgetStatus {
        try ModelReference.validate(datasetID: dataset)
        return try database.read { db in
            guard let status = try Self.budgetStatus(db, dataset: dataset, adding: []) else { throw CofferRegistryError.noBudget(dataset) }
            return status
        }
    }

    /// The budget's state with the charged versions' segments composed, plus `adding` (a version about to be pushed).
    /// `nil` when the dataset has no budget.
    static func budgetStatus(_ db: Database, dataset: String, adding: [PrivacySegment]) throws -> BudgetStatus? {
        guard let budget = try Row.fetchOne(db, sql: "SELECT epsilon, delta FROM budgets WHERE dataset_id = ?", arguments: [dataset]) else {
            return nil
        }
        let delta: Double = budget["delta"]
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT m.name, v.version, c.override_by, vp.segments, e.version_id IS NOT NULL AS erased
                FROM budget_charges c JOIN versions v ON v.id = c.version_id JOIN models m ON m.id = v.model_id
                LEFT JOIN version_privacy vp ON vp.version_id = v.id LEFT JOIN erasures e ON e.version_id = v.id
                WHERE c.dataset_id = ? ORDER BY c.charged_at, v.id
                """,
            arguments: [dataset]
        )
        var all: [PrivacySegment] = []
        var charges: [BudgetStatus.Charge] = []
        for row in rows {
            let segments = PrivacyMetadata.segments(fromJSON: row["segments"] ?? "[]")
            all += segments
            charges.append(
                .init(
                    model: row["name"],
                    version: row["version"],
                    epsilon: composedEpsilon(segments, delta: delta),
                    overrideBy: row["override_by"],
                    erased: row["erased"]
                )
            )
        }
        let spent = composedEpsilon(all + adding, delta: delta)
        let total: Double = budget["epsilon"]
        return BudgetStatus(dataset: dataset, epsilon: total, delta: delta, spent: spent, remaining: max(0, total - spent), versions: charges)
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
    static func checkBudget(_ db: Database, dataset: String?, privacy: PrivacyMetadata, override: Bool) throws -> Bool {
        guard let dataset, let before = try budgetStatus(db, dataset: dataset, adding: []) else { return false }
        // An override lets a release exceed the budget; nothing lets one escape the accounting.
        guard privacy.mechanism != "none" else {
            throw CofferRegistryError.budgetExceeded(
                "dataset \(dataset) has a privacy budget: a model trained without differential privacy spends all of it"
            )
        }
        guard !privacy.segments.isEmpty else {
            throw CofferRegistryError.budgetExceeded(
                "dataset \(dataset) has a privacy budget: the push needs the version's accountant history (a checkpoint's privacy.json, or --privacy-from)"
            )
        }
        let after = try budgetStatus(db, dataset: dataset, adding: privacy.segments)!
        guard after.spent <= before.epsilon || override else {
            let alone = composedEpsilon(privacy.segments, delta: before.delta)
            throw CofferRegistryError.budgetExceeded(
                String(
                    format: "dataset %@ (epsilon %g at delta %g): spent %.4f, this version %.4f, together %.4f: more than the remaining %.4f",
                    dataset,
                    before.epsilon,
                    before.delta,
                    before.spent,
                    alone,
                    after.spent,
                    before.remaining
                )
            )
        }
        return true
    }
}
