import Foundation

/// How features were standardised and targets derived: saved with the checkpoint, applied again at predict time.
public struct Preprocessing: Sendable, Equatable, Codable {
    public var features: [String]
    public var means: [Double]
    public var standardDeviations: [Double]
    public var tasks: [TrainingRecipe.TaskSource]

    public init(features: [String], means: [Double], standardDeviations: [Double], tasks: [TrainingRecipe.TaskSource]) {
        self.features = features
        self.means = means
        self.standardDeviations = standardDeviations
        self.tasks = tasks
    }

    enum CodingKeys: String, CodingKey {
        case features, means, tasks
        case standardDeviations = "standard_deviations"
    }

    /// Standardised feature rows of `table`; refuses a table that lacks a feature column.
    public func features(of table: CSVTable) throws(CofferTrainingError) -> [Float] {
        var columns: [Int] = []
        for name in features { columns.append(try table.column(name)) }
        var out: [Float] = []
        out.reserveCapacity(table.rowCount * features.count)
        for row in 0..<table.rowCount {
            for (f, column) in columns.enumerated() { out.append(Float((table.value(row: row, column: column) - means[f]) / standardDeviations[f])) }
        }
        return out
    }
}
