public import CofferTraining
import Foundation

/// A site's training in one round: the recipe's optimiser, learning rate, batch size and epochs, started from the
/// global model (optimiser state fresh each round, as FedAvg does), optionally with DP-SGD (the recipe's privacy
/// settings: record-level privacy at this site, accounted here and reported by the site, separate from the federation's
/// site-level privacy).
public struct LocalTraining: Sendable {
    public let recipe: FederatedRecipe
    /// Poisson sampling rate of the local batches: expected batch size / training rows.
    public let sampleRate: Double
    /// Steps per round: epochs x round(1/q).
    public let stepsPerRound: Int
    /// σ of local DP-SGD; `nil` when the recipe has privacy off.
    public let noiseMultiplier: Double?

    /// - Parameter rounds: rounds the site may take part in, over which a `target_epsilon` is spread.
    public init(recipe: FederatedRecipe, trainingRows: Int, rounds: Int) throws(FederatedError) {
        let r = recipe.recipe
        sampleRate = min(1, Double(r.expectedBatchSize) / Double(trainingRows))
        stepsPerRound = r.epochs * max(1, Int((1 / sampleRate).rounded()))
        if r.isPrivate {
            if let target = r.targetEpsilon {
                do {
                    noiseMultiplier = try RDPAccountant.calibrateNoise(
                        targetEpsilon: target,
                        sampleRate: sampleRate,
                        steps: stepsPerRound * max(rounds, 1),
                        delta: r.delta!
                    )
                } catch {
                    throw .invalidParameter("local DP-SGD: \(error.description)")
                }
            } else {
                noiseMultiplier = r.noiseMultiplier
            }
        } else {
            noiseMultiplier = nil
        }
        self.recipe = recipe
    }

    /// What one round of local training produced.
    public struct Result: Sendable {
        public var model: MultiTaskModel
        public var steps: Int
        /// Mean training loss of each task over the round's steps.
        public var taskLosses: [Double]
    }

    /// Trains from `global` on `data`; `seed` drives batch sampling without DP (never DP's batches or noise).
    public func run(from global: MultiTaskModel, on data: Dataset, seed: UInt64) throws(FederatedError) -> Result {
        let r = recipe.recipe
        let optimizer: TrainingConfiguration.Optimizer =
            r.optimizer == "adam" ? .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-8) : .sgd(momentum: r.momentum ?? 0.9)
        let configuration = TrainingConfiguration(
            learningRate: r.learningRate,
            optimizer: optimizer,
            sampleRate: sampleRate,
            noiseMultiplier: noiseMultiplier,
            clipNorm: r.clippingNorm ?? 1,
            noiseMode: r.noiseMode ?? .standard
        )
        var trainer: Trainer
        do { trainer = try Trainer(model: global, configuration: configuration, seed: seed) } catch { throw .invalidParameter(error.description) }
        var sums = [Double](repeating: 0, count: recipe.architecture.tasks.count)
        var examples = 0
        for _ in 0..<stepsPerRound {
            let report = trainer.step(on: data)
            for t in sums.indices { sums[t] += report.taskLosses[t] * Double(report.batchSize) }
            examples += report.batchSize
        }
        return Result(model: trainer.model, steps: stepsPerRound, taskLosses: sums.map { $0 / Double(max(examples, 1)) })
    }

    /// The DP-SGD history of `rounds` rounds at this site, for its record-level epsilon.
    public func segments(rounds: Int) -> [PrivacySegment] {
        guard let noiseMultiplier, rounds > 0 else { return [] }
        return [PrivacySegment(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: stepsPerRound * rounds)]
    }
}

/// Site-level differential privacy of DP-FedAvg (McMahan et al. 2018): each round is one step of the Poisson-subsampled
/// Gaussian mechanism over sites, with sampling rate q and noise multiplier σ (noise σS on a sum of updates clipped to
/// S), so `rounds` rounds are the same (q, σ, steps) history DP-SGD has, fed to the same RDP and PLD accountants.
public enum SiteLevelPrivacy {
    public struct Report: Sendable, Equatable {
        public var epsilon: Double
        public var epsilonRDP: Double
        public var epsilonPLD: Double?
        public var order: Double
        /// `rdp` or `pld`: which gave the smaller (both are valid) bound.
        public var accountant: String
        public var segment: PrivacySegment
    }

    /// - Parameter withPLD: also run the PLD accountant (seconds for large epsilons; RDP alone is microseconds).
    public static func epsilon(
        sampleRate: Double,
        noiseMultiplier: Double,
        rounds: Int,
        delta: Double,
        withPLD: Bool = true
    ) throws(FederatedError) -> Report {
        do {
            try PrivacyParameters.validate(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: rounds, delta: delta)
        } catch {
            throw .invalidParameter(error.description)
        }
        let segment = PrivacySegment(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: rounds)
        var rdp = RDPAccountant()
        rdp.compose(segment)
        let (epsilonRDP, order) = rdp.epsilon(delta: delta)
        let epsilonPLD = !withPLD ? nil : rounds == 0 ? 0 : try? PLDAccountant().epsilon(segments: [segment], delta: delta)
        let pldIsTighter = epsilonPLD.map { $0 < epsilonRDP } ?? false
        return Report(
            epsilon: pldIsTighter ? epsilonPLD! : epsilonRDP,
            epsilonRDP: epsilonRDP,
            epsilonPLD: epsilonPLD,
            order: order,
            accountant: pldIsTighter ? "pld" : "rdp",
            segment: segment
        )
    }
}
