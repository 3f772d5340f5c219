public import CofferTraining

/// A dataset's budget as the ledger builds it, and the accounting of what its charged versions spent.
extension LedgerState {
    public struct Budget: Sendable, Equatable, Codable {
        public struct Charge: Sendable, Equatable, Codable {
            public var model: String
            public var version: String
            public var digest: String
            public var segments: [PrivacySegment]
            public var overrideBy: String?

            enum CodingKeys: String, CodingKey {
                case model, version, digest, segments
                case overrideBy = "override_by"
            }
        }

        public var epsilon: Double
        public var delta: Double
        /// The scopes whose versions may be charged (`*`, a model, `NS/`); `nil` for any model.
        public var models: [String]?
        public var charges: [Charge]
        /// The RDP of every charge, summed order by order (RDPAccountant's default orders): what the budget has spent,
        /// kept as it grows so a check costs the same however many versions were charged.
        public var rdp: [Double]

        /// Whether versions of `model` may be charged to this budget.
        public func admits(model: String) -> Bool {
            models?.contains { Grant.scope($0, covers: model) } ?? true
        }
    }

    /// Whether the version with this digest is charged to a budget.
    public func isCharged(_ digest: String) -> Bool { budgets.values.contains { $0.charges.contains { $0.digest == digest } } }

    /// Every charge held for the version with this digest, by dataset: one, unless a second record for the version was
    /// appended (fsck names it; readers judge each charge against the statement).
    func charges(of digest: String) -> [(dataset: String, charge: Budget.Charge)] {
        budgets.flatMap { dataset, budget in budget.charges.filter { $0.digest == digest }.map { (dataset, $0) } }
    }

    /// Spent epsilon of `dataset` with `adding` composed in (RDP, as the budget check at push does).
    func spent(_ dataset: String, adding: [PrivacySegment] = []) -> Double? {
        guard let budget = budgets[dataset] else { return nil }
        let total = Self.sum(budget.rdp, Self.rdp(adding))
        // Nothing released spends nothing (the conversion of an empty composition is small but not 0).
        guard total.contains(where: { $0 > 0 }) else { return 0 }
        return RDPAccountant.epsilon(orders: RDPAccountant.defaultOrders, rdp: total, delta: budget.delta).epsilon
    }

    /// The RDP of a history at RDPAccountant's default orders. An order where it is infinite (no bound there) is kept
    /// as the largest finite number: it stays out of the minimum over orders, and it can be written as JSON.
    static func rdp(_ segments: [PrivacySegment]) -> [Double] {
        var accountant = RDPAccountant()
        for segment in segments where segment.steps > 0 { accountant.compose(segment) }
        return accountant.rdp.map { $0.isNaN ? .greatestFiniteMagnitude : min($0, .greatestFiniteMagnitude) }
    }

    static func sum(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { min($0 + $1, .greatestFiniteMagnitude) } }
}
