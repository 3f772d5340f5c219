/// Accuracy of the classification and binary heads under L∞-bounded input perturbations of the standardised features:
/// FGSM (Goodfellow, Shlens, Szegedy 2015), one step of size ε along the sign of the input gradient, and PGD (Madry et
/// al. 2018), ``pgdSteps`` steps of ``pgdStepFraction`` · ε each, projected back onto the ε-ball after every step,
/// starting from the clean input (no random start, so the result is reproducible). Each task is attacked through its
/// own loss; a binary task's prediction is the probability ≥ 0.5.
public enum AdversarialRobustness {
    public static let defaultEpsilons: [Double] = [0.05, 0.1, 0.25, 0.5]
    public static let pgdSteps = 10
    /// PGD's step as a fraction of ε: 2.5 ε / steps, Madry et al.'s choice.
    public static let pgdStepFraction = 0.25
    /// Rows attacked at most (the first ones of the data): PGD costs `pgdSteps` backward passes per row, per ε, per task.
    public static let maximumRows = 2000

    /// Clean, FGSM and PGD accuracy of each classification and binary task on the first ``maximumRows`` rows of `data`.
    ///
    /// - Throws: ``CofferTrainingError/invalidParameter(_:)`` for an ε that is not finite and > 0, or no ε.
    public static func evaluate(
        model: MultiTaskModel,
        data: Dataset,
        epsilons: [Double] = defaultEpsilons
    ) throws(CofferTrainingError)
        -> Evidence.Robustness
    {
        guard !epsilons.isEmpty else { throw .invalidParameter("robustness needs at least one perturbation epsilon") }
        for epsilon in epsilons where !(epsilon > 0 && epsilon.isFinite) {
            throw .invalidParameter("robustness epsilons must be finite and > 0, got \(epsilon)")
        }
        let rows = data.subset(Array(0..<min(data.count, maximumRows)))
        var tasks: [String: Evidence.Robustness.TaskRobustness] = [:]
        for (t, task) in model.architecture.tasks.enumerated() where task.kind != .regression {
            let clean = accuracy(model, rows.features, rows, task: t)
            var fgsm: [Double] = []
            var pgd: [Double] = []
            let gradient = model.inputGradients(rows.features, count: rows.count, targets: rows.targets, task: t)
            for epsilon in epsilons.map(Float.init) {
                let oneStep = zip(rows.features, gradient).map { $0 + epsilon * sign($1) }
                fgsm.append(accuracy(model, oneStep, rows, task: t))
                var x = rows.features
                let step = Float(pgdStepFraction) * epsilon
                for _ in 0..<pgdSteps {
                    let g = model.inputGradients(x, count: rows.count, targets: rows.targets, task: t)
                    for k in x.indices {
                        let moved = x[k] + step * sign(g[k])
                        x[k] = min(max(moved, rows.features[k] - epsilon), rows.features[k] + epsilon)
                    }
                }
                pgd.append(accuracy(model, x, rows, task: t))
            }
            tasks[task.name] = .init(clean: clean, fgsm: fgsm, pgd: pgd)
        }
        return Evidence.Robustness(
            epsilons: epsilons,
            pgdSteps: pgdSteps,
            pgdStepFraction: pgdStepFraction,
            rows: rows.count,
            tasks: tasks
        )
    }

    static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : 0) }

    /// Accuracy of task `t` on inputs `x` (the rows of `data`, perhaps perturbed) against `data`'s targets.
    static func accuracy(_ model: MultiTaskModel, _ x: [Float], _ data: Dataset, task t: Int) -> Double {
        let task = model.architecture.tasks[t]
        let predictions = model.predict(x, count: data.count)[t]
        var correct = 0
        for i in 0..<data.count {
            let label = Int(data.targets[t][i])
            switch task.kind {
            case .classification:
                let row = predictions[(i * task.classes)..<((i + 1) * task.classes)]
                if row.indices.max(by: { row[$0] < row[$1] })! - i * task.classes == label { correct += 1 }
            case .binary:
                if (predictions[i] >= 0.5 ? 1 : 0) == label { correct += 1 }
            case .regression:
                break
            }
        }
        return Double(correct) / Double(max(data.count, 1))
    }
}
