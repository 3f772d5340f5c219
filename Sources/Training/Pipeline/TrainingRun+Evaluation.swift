import Foundation

/// What training and evaluation share: targets from a table, and the validation metrics.
extension TrainingRun {
    /// Targets per task from the table: class indices, 0/1, or (transformed) values; refuses values that do not fit the task.
    /// Public so that federated sites derive their targets exactly as `coffer train` does.
    public static func targets(_ sources: [TrainingRecipe.TaskSource], table: CSVTable) throws(CofferTrainingError) -> ([TaskSpec], [[Float]]) {
        var specs: [TaskSpec] = []
        var all: [[Float]] = []
        for source in sources {
            var values: [Float] = []
            var classes = 0
            switch source.kind {
            case .classification:
                if let oneHot = source.oneHot {
                    var columns: [Int] = []
                    for name in oneHot { columns.append(try table.column(name)) }
                    classes = oneHot.count + 1
                    for row in 0..<table.rowCount {
                        let hot = columns.enumerated().filter { table.value(row: row, column: $0.element) == 1 }
                        guard hot.count <= 1 else { throw .invalidData("row \(row + 2): task '\(source.name)' has \(hot.count) one-hot columns set") }
                        values.append(Float(hot.first.map { $0.offset + 1 } ?? 0))
                    }
                } else {
                    let column = try table.column(source.column!)
                    for row in 0..<table.rowCount {
                        let v = table.value(row: row, column: column)
                        guard v >= 0, v.rounded() == v else {
                            throw .invalidData("row \(row + 2), column '\(source.column!)': class \(v) is not a class index")
                        }
                        if let labels = source.labels, Int(v) >= labels.count {
                            throw .invalidData(
                                "row \(row + 2), column '\(source.column!)': class \(Int(v)) is not one of the \(labels.count) labelled classes"
                            )
                        }
                        values.append(Float(v))
                        classes = max(classes, Int(v) + 1)
                    }
                }
                if let labels = source.labels {
                    guard labels.count >= classes else {
                        throw .invalidData("task '\(source.name)': \(classes) classes in the data, \(labels.count) labels")
                    }
                    classes = labels.count
                }
            case .binary:
                let column = try table.column(source.column!)
                for row in 0..<table.rowCount {
                    let v = table.value(row: row, column: column)
                    if let threshold = source.threshold {
                        values.append(v >= threshold ? 1 : 0)
                        continue
                    }
                    guard v == 0 || v == 1 else {
                        throw .invalidData("row \(row + 2), column '\(source.column!)': binary target \(v) is not 0 or 1 (set a threshold)")
                    }
                    values.append(Float(v))
                }
            case .regression:
                let column = try table.column(source.column!)
                for row in 0..<table.rowCount {
                    var v = table.value(row: row, column: column)
                    if source.transform == "log1p" {
                        guard v > -1 else { throw .invalidData("row \(row + 2), column '\(source.column!)': log1p of \(v)") }
                        v = log1p(v)
                    }
                    values.append(Float(v))
                }
            }
            specs.append(TaskSpec(name: source.name, kind: source.kind, classes: classes, weight: source.weight ?? 1))
            all.append(values)
        }
        return (specs, all)
    }

    /// The model's validation metrics on a labelled table (its feature and task columns, as in training).
    /// A class the model was never trained on is refused, naming the row, column and class.
    public static func evaluate(
        _ model: MultiTaskModel,
        preprocessing: Preprocessing,
        labelled table: CSVTable
    ) throws(CofferTrainingError) -> [TaskMetric] {
        evaluate(model, on: try labelled(table, model: model, preprocessing: preprocessing))
    }

    /// A labelled table's rows as the model sees them: standardised features and per-task targets. Refuses a class the
    /// model was never trained on, naming the row, column and class.
    public static func labelled(_ table: CSVTable, model: MultiTaskModel, preprocessing: Preprocessing) throws(CofferTrainingError) -> Dataset {
        let (specs, targets) = try targets(preprocessing.tasks, table: table)
        for (t, task) in model.architecture.tasks.enumerated() where task.kind == .classification && specs[t].classes > task.classes {
            let row = targets[t].firstIndex { Int($0) >= task.classes }!
            let column = preprocessing.tasks[t].column ?? task.name
            throw .invalidData(
                "row \(row + 2), column '\(column)': class \(Int(targets[t][row])) of task '\(task.name)' was not seen in training (\(task.classes) classes)"
            )
        }
        return Dataset(
            features: try preprocessing.features(of: table),
            targets: targets,
            count: table.rowCount,
            inputs: preprocessing.features.count
        )
    }

    /// Accuracy for classification, ROC AUC for binary tasks, RMSE for regression.
    public static func evaluate(_ model: MultiTaskModel, on data: Dataset) -> [TaskMetric] {
        guard data.count > 0 else { return [] }
        let predictions = model.predict(data.features, count: data.count)
        return model.architecture.tasks.enumerated().map { t, task in
            let y = data.targets[t]
            let p = predictions[t]
            switch task.kind {
            case .classification:
                let correct = (0..<data.count).filter { i in
                    let row = p[(i * task.classes)..<((i + 1) * task.classes)]
                    return row.indices.max { row[$0] < row[$1] }! - i * task.classes == Int(y[i])
                }.count
                return TaskMetric(task: task.name, metric: "accuracy", value: Double(correct) / Double(data.count))
            case .binary:
                return TaskMetric(task: task.name, metric: "auc", value: auc(scores: p, labels: y))
            case .regression:
                let mse = zip(p, y).map { Double(($0 - $1) * ($0 - $1)) }.reduce(0, +) / Double(data.count)
                return TaskMetric(task: task.name, metric: "rmse", value: mse.squareRoot())
            }
        }
    }

    /// ROC AUC by the rank-sum (Mann–Whitney) formula, ties sharing their average rank.
    static func auc(scores: [Float], labels: [Float]) -> Double {
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var ranks = [Double](repeating: 0, count: scores.count)
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
            for k in i...j { ranks[order[k]] = Double(i + j) / 2 + 1 }
            i = j + 1
        }
        let positives = labels.filter { $0 == 1 }.count
        let negatives = labels.count - positives
        guard positives > 0, negatives > 0 else { return .nan }
        let rankSum = zip(ranks, labels).filter { $0.1 == 1 }.map(\.0).reduce(0, +)
        return (rankSum - Double(positives * (positives + 1)) / 2) / Double(positives * negatives)
    }
}

extension MultiTaskModel {
    /// Fraction of weight-matrix entries (trunk and heads; biases excluded) that are exactly zero, measured.
    public var weightSparsity: Double {
        let weights = layers.flatMap(\.weight)
        return Double(weights.filter { $0 == 0 }.count) / Double(max(weights.count, 1))
    }
}
