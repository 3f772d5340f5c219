public import CofferTraining
import Foundation

/// A site's own CSV, read once: its rows split into training and validation as `coffer train` splits them (shuffled
/// by the recipe's seed), its targets derived as `coffer train` derives them. Raw rows never leave this type; what the
/// site sends is derived from them and masked.
public final class LocalData: @unchecked Sendable {
    public let path: String
    let table: CSVTable
    let recipe: FederatedRecipe
    public let trainRows: [Int]
    public let validationRows: [Int]
    let targets: [[Float]]

    /// - Throws: ``FederatedError/localData(_:)`` naming a missing column, a bad cell, or a class the recipe does not
    ///   know.
    public init(path: String, recipe: FederatedRecipe) throws(FederatedError) {
        let table: CSVTable
        let targets: [[Float]]
        let specs: [TaskSpec]
        do {
            table = try CSVTable(contentsOf: path)
            for name in recipe.recipe.features { _ = try table.column(name) }
            (specs, targets) = try TrainingRun.targets(recipe.recipe.tasks, table: table)
        } catch {
            throw .localData(error.description)
        }
        for (spec, task) in zip(specs, recipe.architecture.tasks) where task.kind == .classification && spec.classes > task.classes {
            throw .localData("\(path): task '\(task.name)' has \(spec.classes) classes here, the recipe \(task.classes)")
        }
        var generator = SeededGenerator(seed: recipe.recipe.seed ?? 1)
        var order = Array(0..<table.rowCount)
        order.shuffle(using: &generator)
        let validationCount = Int(Double(table.rowCount) * (recipe.recipe.validationSplit ?? 0.2))
        let trainRows = Array(order.dropFirst(validationCount))
        guard !trainRows.isEmpty else { throw .localData("\(path): no rows left for training after the validation split") }
        self.path = path
        self.table = table
        self.recipe = recipe
        self.trainRows = trainRows
        self.validationRows = Array(order.prefix(validationCount))
        self.targets = targets
    }

    public var trainingCount: Int { trainRows.count }

    /// The statistics round's vector: n, then the sum of each feature, then the sum of each feature's square, over the
    /// training rows, in exact fixed point (``FixedPoint``).
    public func statisticsVector() throws(FederatedError) -> [UInt64] {
        let features = recipe.recipe.features
        var sums = [Double](repeating: 0, count: features.count)
        var squares = [Double](repeating: 0, count: features.count)
        var columns: [Int] = []
        for name in features { columns.append(try! table.column(name)) }
        for row in trainRows {
            for (f, column) in columns.enumerated() {
                let x = table.value(row: row, column: column)
                sums[f] += x
                squares[f] += x * x
            }
        }
        let values = [Double(trainRows.count)] + sums + squares
        guard values.allSatisfy({ abs($0) < FixedPoint.limit / 1024 }) else {
            throw .localData("\(path): feature sums too large for the fixed-point statistics round (|sum| must stay below 1.3e11)")
        }
        return values.map(FixedPoint.encode)
    }

    /// Standardised training and validation sets under the federation's shared standardisation.
    public func datasets(_ standardisation: PublicStandardisation) throws(FederatedError) -> (training: Dataset, validation: Dataset) {
        let preprocessing = Preprocessing(
            features: recipe.recipe.features,
            means: standardisation.means,
            standardDeviations: standardisation.standardDeviations,
            tasks: recipe.recipe.tasks
        )
        // The coordinator's (a site checks what it is sent) or the configuration's (the plain baseline).
        try standardisation.checkForFederation(features: recipe.recipe.features.count)
        let all: [Float]
        do { all = try preprocessing.features(of: table) } catch { throw .localData(error.description) }
        let inputs = recipe.recipe.features.count
        func subset(_ rows: [Int]) -> Dataset {
            var x: [Float] = []
            x.reserveCapacity(rows.count * inputs)
            for r in rows { x += all[(r * inputs)..<((r + 1) * inputs)] }
            return Dataset(features: x, targets: targets.map { t in rows.map { t[$0] } }, count: rows.count, inputs: inputs)
        }
        return (subset(trainRows), subset(validationRows))
    }
}

extension PublicStandardisation {
    /// ``check(features:)``, a refusal being an invalid federation parameter.
    func checkForFederation(features: Int) throws(FederatedError) {
        do { try check(features: features) } catch {
            guard case .invalidConfiguration(let why) = error else { throw .invalidParameter(error.description) }
            throw .invalidParameter(why)
        }
    }
}

/// Standardisation from the statistics round's decoded sum: means, and deviations (1 for a constant feature, as
/// `coffer train` does).
public enum FederatedStatistics {
    public static func standardisation(fromSum sum: [UInt64], features: Int) throws(FederatedError) -> PublicStandardisation {
        guard sum.count == 1 + 2 * features else {
            throw .malformedMessage("the statistics sum has \(sum.count) elements, \(1 + 2 * features) are due")
        }
        let values = sum.map(FixedPoint.decode)
        let n = values[0]
        guard n >= 1 else { throw .invalidParameter("the statistics round counted no training rows") }
        var means: [Double] = []
        var deviations: [Double] = []
        for f in 0..<features {
            let mean = values[1 + f] / n
            let variance = max(0, values[1 + features + f] / n - mean * mean)
            means.append(mean)
            deviations.append(variance > 1e-12 ? variance.squareRoot() : 1)
        }
        return PublicStandardisation(means: means, standardDeviations: deviations)
    }
}
