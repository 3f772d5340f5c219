/// `PUT /v1/budgets/{dataset}`'s body: a dataset's total budget. The answer is a ``BudgetStatus``.
public struct SetBudgetRequest: Sendable, Equatable, Codable {
    public var epsilon: Double
    public var delta: Double

    public init(epsilon: Double, delta: Double) {
        self.epsilon = epsilon
        self.delta = delta
    }
}
