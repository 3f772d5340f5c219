/// `PUT /v1/budgets/{dataset}`'s body: a dataset's total budget. The answer is a ``BudgetStatus``.
public struct SetBudgetRequest: Sendable, Equatable, Codable {
    public var epsilon: Double
    public var delta: Double
    /// The models that may be charged (`*`, a name, `NS/`); absent to keep the budget's, `["*"]` for any.
    public var models: [String]?

    public init(epsilon: Double, delta: Double, models: [String]? = nil) {
        self.epsilon = epsilon
        self.delta = delta
        self.models = models
    }
}
