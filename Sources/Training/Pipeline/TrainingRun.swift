import Foundation

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

        // Standardisation statistics from the training rows only; under DP from public values or a DP release.
        let (means, deviations, standardisation) = try Standardisation.statistics(for: recipe, table: table, rows: trainRows)
        let released = standardisation.segment.map { [$0] } ?? []
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
                do {
                    // Calibrated against PLD, the accountant whose ε is reported; RDP where PLD cannot be computed.
                    if let (noise, epsilon) = try PLDAccountant().calibrateNoise(
                        targetEpsilon: target,
                        sampleRate: sampleRate,
                        steps: totalSteps,
                        delta: recipe.delta!,
                        after: released
                    ) {
                        sigma = noise
                        calibratedPLD = epsilon
                    } else {
                        sigma = try RDPAccountant.calibrateNoise(
                            targetEpsilon: target,
                            sampleRate: sampleRate,
                            steps: totalSteps,
                            delta: recipe.delta!,
                            after: released
                        )
                    }
                } catch .unreachableEpsilon(let why) where !released.isEmpty {
                    // The statistics' release may be what spends the target: say so, with what it costs alone.
                    let alone = (try? PLDAccountant().epsilon(segments: released, delta: recipe.delta!)) ?? .nan
                    throw .unreachableEpsilon(
                        why
                            + String(
                                format: " (the standardisation statistics' release alone is epsilon %.3f: raise statistics_noise_multiplier)",
                                alone
                            )
                    )
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
        var trainer = try Trainer(
            model: model,
            configuration: balanced,
            seed: recipe.seed ?? 1,
            threads: min(ProcessInfo.processInfo.activeProcessorCount, 8)
        )

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

        /// The trainer's steps composed with the statistics' release.
        func accountant() -> RDPAccountant {
            var accountant = trainer.accountant
            for segment in released { accountant.compose(segment) }
            return accountant
        }
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
                            epsilon: recipe.isPrivate ? accountant().epsilon(delta: recipe.delta!).epsilon : nil
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
        let segments = recipe.isPrivate ? released + [PrivacySegment(sampleRate: sampleRate, noiseMultiplier: sigma!, steps: trainer.steps)] : []
        let (epsilonRDP, bestOrder) = recipe.isPrivate ? accountant().epsilon(delta: recipe.delta!) : (Double.nan, Double.nan)
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
            pruning: .init(method: "global_magnitude", targetRatio: recipe.pruningRatio ?? 0, achievedSparsity: final.weightSparsity),
            standardisation: standardisation,
            batchSampling: recipe.isPrivate ? "secret" : "seeded"
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
            baseline.featureBounds = nil
            baseline.statisticsNoiseMultiplier = nil
            baseline.nonprivateStatistics = nil
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
}
