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

/// The privacy claim of a checkpoint, computed by the accountant (the `privacy.json` document).
public struct PrivacyReport: Sendable, Equatable, Codable {
    public struct Pruning: Sendable, Equatable, Codable {
        public var method: String
        public var targetRatio: Double
        public var achievedSparsity: Double
        enum CodingKeys: String, CodingKey {
            case method
            case targetRatio = "target_ratio"
            case achievedSparsity = "achieved_sparsity"
        }

        public init(method: String, targetRatio: Double, achievedSparsity: Double) {
            self.method = method
            self.targetRatio = targetRatio
            self.achievedSparsity = achievedSparsity
        }
    }

    public var mechanism: String
    public var epsilon: Double?
    public var epsilonRDP: Double?
    public var epsilonPLD: Double?
    public var delta: Double?
    public var accountant: String?
    public var order: Double?
    public var maxGradNorm: Double?
    public var noiseMode: String?
    public var datasetSize: Int
    public var segments: [PrivacySegment]
    public var pruning: Pruning
    /// Empirical evidence beside the proven ε (docs/FORMAT.md, "Evidence"); `nil` when none was collected.
    public var evidence: Evidence? = nil

    /// A report built elsewhere than `TrainingRun` (federated training writes one for its global model).
    public init(
        mechanism: String,
        epsilon: Double?,
        epsilonRDP: Double?,
        epsilonPLD: Double?,
        delta: Double?,
        accountant: String?,
        order: Double?,
        maxGradNorm: Double?,
        noiseMode: String?,
        datasetSize: Int,
        segments: [PrivacySegment],
        pruning: Pruning
    ) {
        self.mechanism = mechanism
        self.epsilon = epsilon
        self.epsilonRDP = epsilonRDP
        self.epsilonPLD = epsilonPLD
        self.delta = delta
        self.accountant = accountant
        self.order = order
        self.maxGradNorm = maxGradNorm
        self.noiseMode = noiseMode
        self.datasetSize = datasetSize
        self.segments = segments
        self.pruning = pruning
    }

    enum CodingKeys: String, CodingKey {
        case mechanism, epsilon, delta, accountant, order, segments, pruning, evidence
        case epsilonRDP = "epsilon_rdp"
        case epsilonPLD = "epsilon_pld"
        case maxGradNorm = "max_grad_norm"
        case noiseMode = "noise_mode"
        case datasetSize = "dataset_size"
    }

    /// Every key is written, `null` where there is no value.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(epsilon, forKey: .epsilon)
        try c.encode(epsilonRDP, forKey: .epsilonRDP)
        try c.encode(epsilonPLD, forKey: .epsilonPLD)
        try c.encode(delta, forKey: .delta)
        try c.encode(accountant, forKey: .accountant)
        try c.encode(order, forKey: .order)
        try c.encode(maxGradNorm, forKey: .maxGradNorm)
        try c.encode(noiseMode, forKey: .noiseMode)
        try c.encode(datasetSize, forKey: .datasetSize)
        try c.encode(segments, forKey: .segments)
        try c.encode(pruning, forKey: .pruning)
        try c.encode(evidence, forKey: .evidence)
    }
}

/// A validation metric of one task.
public struct TaskMetric: Sendable, Equatable, Codable {
    public var task: String
    public var metric: String
    public var value: Double

    public init(task: String, metric: String, value: Double) {
        self.task = task
        self.metric = metric
        self.value = value
    }
}

/// What `coffer train` produces.
/// How the tasks' losses were weighted, and the effective weights at the end of training.
public struct TaskBalancing: Sendable, Equatable, Codable {
    public var method: String
    public var weights: [String: Double]

    public init(method: String, weights: [String: Double]) {
        self.method = method
        self.weights = weights
    }
}

public struct TrainedModel: Sendable {
    public var model: MultiTaskModel
    public var balancing: TaskBalancing
    public var preprocessing: Preprocessing
    public var privacy: PrivacyReport
    public var metrics: [TaskMetric]
    /// Wall time of the training steps alone (no data loading or evaluation), and the examples they processed.
    public var trainingSeconds: Double
    public var examplesProcessed: Int
    /// The audit's canaries, inclusion bits and scores (`coffer train --audit-report`); never written into the checkpoint.
    public var audit: AuditRecord?
    /// Wall time of the audit: scoring the canaries after each epoch, and the bound.
    public var auditSeconds: Double?

    /// Assembled by `TrainingRun`, or elsewhere (a federation's global model) for ``Checkpoint/encode(_:)``.
    public init(
        model: MultiTaskModel,
        balancing: TaskBalancing,
        preprocessing: Preprocessing,
        privacy: PrivacyReport,
        metrics: [TaskMetric],
        trainingSeconds: Double,
        examplesProcessed: Int,
        audit: AuditRecord? = nil,
        auditSeconds: Double? = nil
    ) {
        self.model = model
        self.balancing = balancing
        self.preprocessing = preprocessing
        self.privacy = privacy
        self.metrics = metrics
        self.trainingSeconds = trainingSeconds
        self.examplesProcessed = examplesProcessed
        self.audit = audit
        self.auditSeconds = auditSeconds
    }
}

/// Progress after each step: where training is, per-task mean training loss over the epoch so far, and
/// epsilon spent so far (RDP, cheap enough to recompute at every step).
public struct TrainingProgress: Sendable {
    public var phase: String
    public var epoch: Int
    public var epochs: Int
    public var step: Int
    public var steps: Int
    public var taskLosses: [Double]
    public var epsilon: Double?

    public var isEndOfEpoch: Bool { step == steps }
}

/// Loads the data, trains with DP-SGD, prunes and fine-tunes, evaluates: `coffer train`'s whole job.
public enum TrainingRun {
    /// Loads the data, trains with DP-SGD, prunes and fine-tunes, evaluates, and collects the evidence the recipe asks for.
    public static func run(_ recipe: TrainingRecipe, progress: ((TrainingProgress) -> Void)? = nil) throws(CofferTrainingError) -> TrainedModel {
        try run(recipe, progress: progress, auditWithoutPrivacy: false)
    }

    /// The rows that train and the rows that validate: a shuffle seeded by the recipe's seed, the first
    /// `validation_split` of it validating. `coffer split` writes the same rows for baselines trained elsewhere.
    public static func split(_ recipe: TrainingRecipe, rowCount: Int) -> (training: [Int], validation: [Int]) {
        var generator = SeededGenerator(seed: recipe.seed ?? 1)
        var order = Array(0..<rowCount)
        order.shuffle(using: &generator)
        let validationCount = Int(Double(rowCount) * (recipe.validationSplit ?? 0.2))
        return (Array(order.dropFirst(validationCount)), Array(order.prefix(validationCount)))
    }

    /// - Parameters:
    ///   - auditWithoutPrivacy: audit a recipe trained without DP. Only tests set it (the soundness test needs a run with
    ///     the noise off); `coffer` refuses such an audit, having no ε to compare it with.
    ///   - canarySeed: draw the canaries and their inclusion bits from a seeded generator instead of the CSPRNG (tests).
    static func run(
        _ recipe: TrainingRecipe,
        progress: ((TrainingProgress) -> Void)?,
        auditWithoutPrivacy: Bool,
        canarySeed: UInt64? = nil
    ) throws(CofferTrainingError) -> TrainedModel {
        let table = try CSVTable(contentsOf: recipe.data)
        let (trainRows, validationRows) = split(recipe, rowCount: table.rowCount)
        guard !trainRows.isEmpty else { throw .invalidData("\(recipe.data): no rows left for training after the validation split") }

        // Standardisation statistics from the training rows only.
        var means: [Double] = []
        var deviations: [Double] = []
        for name in recipe.features {
            let column = try table.column(name)
            let values = trainRows.map { table.value(row: $0, column: column) }
            let mean = values.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            means.append(mean)
            deviations.append(variance > 0 ? variance.squareRoot() : 1)
        }
        let preprocessing = Preprocessing(features: recipe.features, means: means, standardDeviations: deviations, tasks: recipe.tasks)
        let allFeatures = try preprocessing.features(of: table)
        let (tasks, allTargets) = try targets(recipe.tasks, table: table)
        func subset(_ rows: [Int]) -> Dataset {
            var x: [Float] = []
            for r in rows { x += allFeatures[(r * recipe.features.count)..<((r + 1) * recipe.features.count)] }
            return Dataset(features: x, targets: allTargets.map { t in rows.map { t[$0] } }, count: rows.count, inputs: recipe.features.count)
        }
        let training = subset(trainRows)
        let validation = subset(validationRows)

        // The evidence asked for is checked before any training spends the budget.
        let auditDelta = recipe.delta ?? 1e-5
        if let canaries = recipe.auditCanaries {
            guard recipe.isPrivate || auditWithoutPrivacy else {
                throw .invalidConfiguration(
                    "audit_canaries needs differential privacy: this recipe trains without it (privacy: false), so there is no epsilon to audit"
                )
            }
            try OneRunAudit.requireEnoughCanaries(canaries, delta: auditDelta)
        }
        if recipe.membershipAttack == true, validation.count < 2 {
            throw .invalidConfiguration(
                "membership_attack needs at least 2 validation rows (the non-members and the population): raise validation_split"
            )
        }
        if recipe.robustnessEpsilons != nil, validation.count == 0 {
            throw .invalidConfiguration("robustness_epsilons needs validation rows to attack: raise validation_split")
        }

        let architecture = Architecture(inputs: recipe.features.count, trunk: recipe.trunk, activation: recipe.activation ?? .relu, tasks: tasks)
        let model = try MultiTaskModel(architecture: architecture, seed: recipe.seed ?? 1)
        let sampleRate = min(1, Double(recipe.expectedBatchSize) / Double(training.count))
        let stepsPerEpoch = max(1, Int((1 / sampleRate).rounded()))
        let fineTuneEpochs = (recipe.pruningRatio ?? 0) > 0 ? (recipe.fineTuneEpochs ?? 1) : 0
        let totalSteps = (recipe.epochs + fineTuneEpochs) * stepsPerEpoch
        var sigma: Double? = nil
        var calibratedPLD: Double? = nil
        if recipe.isPrivate {
            if let target = recipe.targetEpsilon {
                // Calibrated against PLD, the accountant whose ε is reported; RDP where PLD cannot be computed.
                if let (noise, epsilon) = try PLDAccountant().calibrateNoise(
                    targetEpsilon: target,
                    sampleRate: sampleRate,
                    steps: totalSteps,
                    delta: recipe.delta!
                ) {
                    sigma = noise
                    calibratedPLD = epsilon
                } else {
                    sigma = try RDPAccountant.calibrateNoise(targetEpsilon: target, sampleRate: sampleRate, steps: totalSteps, delta: recipe.delta!)
                }
            } else {
                sigma = recipe.noiseMultiplier
            }
        }
        let optimizer: TrainingConfiguration.Optimizer =
            recipe.optimizer == "adam" ? .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-8) : .sgd(momentum: recipe.momentum ?? 0.9)
        let configuration = TrainingConfiguration(
            learningRate: recipe.learningRate,
            optimizer: optimizer,
            sampleRate: sampleRate,
            noiseMultiplier: sigma,
            clipNorm: recipe.clippingNorm ?? 1,
            noiseMode: recipe.noiseMode ?? .standard
        )
        var balanced = configuration
        balanced.uncertaintyWeighting = recipe.taskBalancing == "uncertainty"
        var trainer = try Trainer(model: model, configuration: balanced, seed: recipe.seed ?? 1)

        // The audit's canaries join the run before the first step; the same sampler, clipping and noise see them. The
        // noise is divided by a size that does not depend on how many of them joined.
        let canaries = recipe.auditCanaries.map { count in
            if let canarySeed {
                var generator = SeededGenerator(seed: canarySeed)
                return AuditCanaries(count: count, inputs: recipe.features.count, generator: &generator)
            }
            return AuditCanaries(count: count, inputs: recipe.features.count)
        }
        if let canaries {
            trainer.attachAudit(canaries)
            trainer.normalizingCount = training.count + canaries.count / 2
        }
        var canaryScores = [Double](repeating: 0, count: canaries?.count ?? 0)
        var auditTime = Duration.zero

        var examplesProcessed = 0
        let clock = ContinuousClock()
        var trainingTime = Duration.zero
        func runEpochs(_ count: Int, phase: String) {
            for epoch in 1...max(count, 1) where count > 0 {
                let start = canaries == nil ? nil : (trunk: trainer.model, head: trainer.auditHead!)
                var sums = [Double](repeating: 0, count: tasks.count)
                var examples = 0
                for step in 1...stepsPerEpoch {
                    let start = clock.now
                    let report = trainer.step(on: training)
                    trainingTime += clock.now - start
                    examplesProcessed += report.batchSize + report.canaries
                    for t in sums.indices { sums[t] += report.taskLosses[t] * Double(report.batchSize) }
                    examples += report.batchSize
                    guard let progress else { continue }
                    progress(
                        TrainingProgress(
                            phase: phase,
                            epoch: epoch,
                            epochs: count,
                            step: step,
                            steps: stepsPerEpoch,
                            taskLosses: sums.map { $0 / Double(max(examples, 1)) },
                            epsilon: recipe.isPrivate ? trainer.accountant.epsilon(delta: recipe.delta!).epsilon : nil
                        )
                    )
                }
                if let canaries, let start {
                    let began = clock.now
                    let scores = OneRunAudit.epochScores(canaries, trunk: start.trunk, start: start.head, end: trainer.auditHead!)
                    for i in canaryScores.indices { canaryScores[i] += scores[i] }
                    auditTime += clock.now - began
                }
            }
        }
        runEpochs(recipe.epochs, phase: "train")
        if let ratio = recipe.pruningRatio, ratio > 0 {
            trainer.prune(ratio: ratio)
            runEpochs(fineTuneEpochs, phase: "fine-tune")
        }

        let final = trainer.model
        let segments = recipe.isPrivate ? [PrivacySegment(sampleRate: sampleRate, noiseMultiplier: sigma!, steps: trainer.steps)] : []
        let (epsilonRDP, bestOrder) = recipe.isPrivate ? trainer.accountant.epsilon(delta: recipe.delta!) : (Double.nan, Double.nan)
        // PLD is tighter; when its grid would be too large the RDP bound stands alone. The calibration computed it already.
        let epsilonPLD =
            recipe.isPrivate
            ? (trainer.steps == totalSteps ? calibratedPLD : nil) ?? (try? PLDAccountant().epsilon(segments: segments, delta: recipe.delta!)) : nil
        let pldIsTighter = epsilonPLD.map { $0 < epsilonRDP } ?? false
        var privacy = PrivacyReport(
            mechanism: recipe.isPrivate ? "dp-sgd" : "none",
            epsilon: recipe.isPrivate ? (pldIsTighter ? epsilonPLD : epsilonRDP) : nil,
            epsilonRDP: recipe.isPrivate ? epsilonRDP : nil,
            epsilonPLD: epsilonPLD,
            delta: recipe.isPrivate ? recipe.delta : nil,
            accountant: recipe.isPrivate ? (pldIsTighter ? "pld" : "rdp") : nil,
            order: recipe.isPrivate ? bestOrder : nil,
            maxGradNorm: recipe.isPrivate ? Double(configuration.clipNorm) : nil,
            noiseMode: recipe.isPrivate ? configuration.noiseMode.rawValue : nil,
            datasetSize: training.count,
            segments: segments,
            pruning: .init(method: "global_magnitude", targetRatio: recipe.pruningRatio ?? 0, achievedSparsity: final.weightSparsity)
        )
        let seconds = Double(trainingTime.components.seconds) + Double(trainingTime.components.attoseconds) * 1e-18
        let balancing = TaskBalancing(
            method: balanced.uncertaintyWeighting ? "uncertainty" : "fixed",
            weights: Dictionary(
                uniqueKeysWithValues: tasks.enumerated().map { t, task in
                    (task.name, Double(task.weight) * (balanced.uncertaintyWeighting ? exp(-Double(trainer.logVariances[t])) : 1))
                }
            )
        )
        let metrics = evaluate(final, on: validation)

        // The evidence: the audit first (its bits are read only now, after every score is fixed), then the attacks.
        var evidence = Evidence()
        var auditRecord: AuditRecord? = nil
        if let canaries {
            let began = clock.now
            let result = try OneRunAudit.audit(scores: canaryScores, included: canaries.included, delta: auditDelta)
            auditTime += clock.now - began
            evidence.audit = Evidence.Audit(result)
            auditRecord = AuditRecord(canaries: canaries, scores: canaryScores, result: result)
        }
        if recipe.membershipAttack == true {
            // Non-members: the validation rows, half of them (the shuffle's first half) as the population attack's
            // population. Members: as many training rows, drawn with the recipe's seed.
            let population = validation.subset(Array(0..<(validation.count / 2)))
            let nonMembers = validation.subset(Array((validation.count / 2)..<validation.count))
            var generator = SeededGenerator(seed: (recipe.seed ?? 1) ^ 0x4D45_4D42)
            let members = training.subset(Array(Array(0..<training.count).shuffled(using: &generator).prefix(nonMembers.count)))
            evidence.membership = try MembershipInference.attack(model: final, members: members, nonMembers: nonMembers, population: population)
        }
        if let epsilons = recipe.robustnessEpsilons {
            evidence.robustness = try AdversarialRobustness.evaluate(model: final, data: validation, epsilons: epsilons)
        }
        if recipe.utilityBaseline == true {
            var baseline = recipe
            baseline.privacy = false
            baseline.noiseMultiplier = nil
            baseline.targetEpsilon = nil
            baseline.auditCanaries = nil
            baseline.membershipAttack = nil
            baseline.utilityBaseline = nil
            baseline.robustnessEpsilons = nil
            let relabelled = progress.map { report in
                { (p: TrainingProgress) in
                    var p = p
                    p.phase = "non-private \(p.phase)"
                    report(p)
                }
            }
            let nonPrivate = try run(baseline, progress: relabelled, auditWithoutPrivacy: false)
            evidence.utility = Evidence.Utility(
                baseline: "non-private",
                tasks: Dictionary(
                    uniqueKeysWithValues: zip(metrics, nonPrivate.metrics).map { mine, theirs in
                        (mine.task, .init(metric: mine.metric, privateValue: mine.value, nonPrivate: theirs.value))
                    }
                )
            )
        }
        privacy.evidence = evidence.isEmpty ? nil : evidence
        return TrainedModel(
            model: final,
            balancing: balancing,
            preprocessing: preprocessing,
            privacy: privacy,
            metrics: metrics,
            trainingSeconds: seconds,
            examplesProcessed: examplesProcessed,
            audit: auditRecord,
            auditSeconds: canaries == nil ? nil : Double(auditTime.components.seconds) + Double(auditTime.components.attoseconds) * 1e-18
        )
    }

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
