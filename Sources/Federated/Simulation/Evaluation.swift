public import CofferTraining
import Foundation

/// Per-task losses of a model on a labelled table, as the training objective measures them: cross-entropy for a
/// classification, log loss for a binary task, squared error for a regression (mean over rows). With
/// `TrainingRun.evaluate`'s metrics, what benchmarks compare against other frameworks.
public enum Evaluation {
    public static func losses(
        _ model: MultiTaskModel,
        preprocessing: Preprocessing,
        labelled table: CSVTable
    ) throws(FederatedError) -> [String: Double] {
        let targets: [[Float]]
        let features: [Float]
        do {
            (_, targets) = try TrainingRun.targets(preprocessing.tasks, table: table)
            features = try preprocessing.features(of: table)
        } catch {
            throw .localData(error.description)
        }
        let n = table.rowCount
        let predictions = model.predict(features, count: n)
        var out: [String: Double] = [:]
        for (t, task) in model.architecture.tasks.enumerated() {
            var total = 0.0
            for i in 0..<n {
                let y = targets[t][i]
                switch task.kind {
                case .classification:
                    total -= log(max(Double(predictions[t][i * task.classes + Int(y)]), 1e-12))
                case .binary:
                    let p = min(max(Double(predictions[t][i]), 1e-12), 1 - 1e-12)
                    total -= y == 1 ? log(p) : log(1 - p)
                case .regression:
                    total += (Double(predictions[t][i]) - Double(y)) * (Double(predictions[t][i]) - Double(y))
                }
            }
            out[task.name] = total / Double(max(n, 1))
        }
        return out
    }
}
