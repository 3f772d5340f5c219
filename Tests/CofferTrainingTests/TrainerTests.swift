import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

@Suite(.ownThread)
struct TrainerTests {
    /// Synthetic multi-task data: the class, the bit and the value are simple functions of the features.
    static func synthetic(count: Int, seed: UInt64) -> Dataset {
        var g = SeededGenerator(seed: seed)
        var features: [Float] = []
        var targets: [[Float]] = [[], [], []]
        for _ in 0..<count {
            let x = (0..<4).map { _ in g.uniform(-1, 1) }
            features += x
            targets[0].append(x[0] > 0.3 ? 2 : (x[0] > -0.3 ? 1 : 0))
            targets[1].append(x[1] + x[2] > 0 ? 1 : 0)
            targets[2].append(2 * x[3] - x[0])
        }
        return Dataset(features: features, targets: targets, count: count, inputs: 4)
    }

    static let architecture = Architecture(
        inputs: 4,
        trunk: [32],
        tasks: [TaskSpec(name: "c", kind: .classification, classes: 3), TaskSpec(name: "b", kind: .binary), TaskSpec(name: "r", kind: .regression)]
    )

    @Test(arguments: [TrainingConfiguration.Optimizer.sgd(momentum: 0.9), .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-8)])
    func dpTrainingReducesEveryTaskLossAndIsAccounted(optimizer: TrainingConfiguration.Optimizer) throws {
        let data = Self.synthetic(count: 2000, seed: 1)
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 3)
        let rate: Float = if case .adam = optimizer { 0.01 } else { 0.05 }
        let configuration = TrainingConfiguration(learningRate: rate, optimizer: optimizer, sampleRate: 0.05, noiseMultiplier: 1.0, clipNorm: 1.0)
        var trainer = try Trainer(model: model, configuration: configuration, seed: 11)
        let initial = model.gradients(data.features, count: data.count, targets: data.targets, clipNorm: nil).taskLosses
        for _ in 0..<400 { trainer.step(on: data) }
        let final = trainer.model.gradients(data.features, count: data.count, targets: data.targets, clipNorm: nil).taskLosses
        for t in initial.indices { #expect(final[t] < 0.8 * initial[t], "task \(t): \(initial[t]) -> \(final[t])") }
        #expect(trainer.steps == 400)
        #expect(trainer.accountant.segments == [PrivacySegment(sampleRate: 0.05, noiseMultiplier: 1.0, steps: 400)])
        var reference = RDPAccountant()
        reference.compose(PrivacySegment(sampleRate: 0.05, noiseMultiplier: 1.0, steps: 400))
        #expect(abs(trainer.accountant.epsilon(delta: 1e-5).epsilon - reference.epsilon(delta: 1e-5).epsilon) < 1e-9)
    }

    @Test func poissonBatchesVaryAroundTheExpectedSize() throws {
        let data = Self.synthetic(count: 1000, seed: 2)
        var trainer = try Trainer(
            model: try MultiTaskModel(architecture: Self.architecture, seed: 1),
            configuration: TrainingConfiguration(learningRate: 0.01, sampleRate: 0.02, noiseMultiplier: 1.0),
            seed: 5
        )
        let sizes = (0..<300).map { _ in trainer.step(on: data).batchSize }
        let mean = Double(sizes.reduce(0, +)) / 300
        #expect(abs(mean - 20) < 2)
        #expect(Set(sizes).count > 10, "batch sizes vary")
    }

    /// Under DP the batches are secret: two runs with one seed draw different batches (anyone could recompute a seed's
    /// and see the steps a row took part in, which voids the subsampling's amplification), while without privacy they
    /// repeat.
    @Test func dpBatchesDoNotComeFromTheSeed() throws {
        let data = Self.synthetic(count: 1000, seed: 2)
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 1)
        func batchSizes(noise: Double?) throws -> [Int] {
            let configuration = TrainingConfiguration(learningRate: 0.01, sampleRate: 0.05, noiseMultiplier: noise)
            var trainer = try Trainer(model: model, configuration: configuration, seed: 5)
            return (0..<40).map { _ in trainer.step(on: data).batchSize }
        }
        #expect(try batchSizes(noise: nil) == batchSizes(noise: nil))
        #expect(try batchSizes(noise: 1) != batchSizes(noise: 1))
    }

    @Test func emptyBatchStillAddsNoiseOfTheRightScale() throws {
        // With q tiny and one example, batches are (almost always) empty: the update is noise * lr / (qN).
        let data = Dataset(features: [0, 0, 0, 0], targets: [[0], [0], [0]], count: 1, inputs: 4)
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 1)
        let q = 1e-9
        var trainer = try Trainer(
            model: model,
            configuration: TrainingConfiguration(learningRate: 1, optimizer: .sgd(momentum: 0), sampleRate: q, noiseMultiplier: 2, clipNorm: 0.5),
            seed: 1
        )
        let report = trainer.step(on: data)
        #expect(report.batchSize == 0)
        let delta = zip(model.trunk[0].weight, trainer.model.trunk[0].weight).map { Double($0 - $1) * q }  // = noise / N, N = 1
        let mean = delta.reduce(0, +) / Double(delta.count)
        let std = (delta.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(delta.count)).squareRoot()
        #expect(abs(std - 1.0) < 0.2, "noise std should be sigma * C = 1, got \(std)")
    }

    /// Every parameter in weight, bias... order: trunk, then heads.
    static func parameters(_ model: MultiTaskModel) -> [Float] { model.layers.flatMap { $0.weight + $0.bias } }

    /// A step's rows split between threads sum to the whole batch's gradient: the same model as one thread's, to float
    /// rounding (a share dropped or counted twice moves it by a third of a step).
    @Test func rowsSplitBetweenThreadsGiveTheWholeBatchsSteps() throws {
        let data = Self.synthetic(count: 2000, seed: 4)
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 2)
        let configuration = TrainingConfiguration(learningRate: 0.05, optimizer: .sgd(momentum: 0), sampleRate: 0.1, noiseMultiplier: nil)
        var one = try Trainer(model: model, configuration: configuration, seed: 9)
        var three = try Trainer(model: model, configuration: configuration, seed: 9, threads: 3)
        for _ in 0..<20 {
            let (a, b) = (one.step(on: data), three.step(on: data))
            #expect(a.batchSize == b.batchSize && a.batchSize >= 3 * Trainer.rowsPerThread)
            for t in a.taskLosses.indices { #expect(abs(a.taskLosses[t] - b.taskLosses[t]) < 1e-4 * max(1, abs(a.taskLosses[t]))) }
        }
        let (start, single, split) = (Self.parameters(model), Self.parameters(one.model), Self.parameters(three.model))
        #expect(zip(single, split).map { abs($0 - $1) }.max()! < 1e-4)
        #expect(zip(start, single).map { abs($0 - $1) }.max()! > 1e-2, "the model moved")
    }

    /// Under DP with the rows split between threads, each thread draws a share of the noise: every parameter gets noise
    /// of standard deviation sigma * C in every step. With C tiny the clipped gradients vanish beside the noise, so each
    /// step's change times qN / lr is the noise itself; a parameter no share reached would not move.
    @Test func noiseSplitBetweenThreadsReachesEveryParameter() throws {
        let data = Self.synthetic(count: 2000, seed: 5)
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 3)
        let configuration = TrainingConfiguration(
            learningRate: 1,
            optimizer: .sgd(momentum: 0),
            sampleRate: 0.1,
            noiseMultiplier: 1e6,
            clipNorm: 1e-6
        )
        var trainer = try Trainer(model: model, configuration: configuration, seed: 3, threads: 3)
        var before = Self.parameters(model)
        var squares = [Double](repeating: 0, count: before.count)
        let steps = 20
        for _ in 0..<steps {
            #expect(trainer.step(on: data).batchSize >= 3 * Trainer.rowsPerThread)
            let after = Self.parameters(trainer.model)
            for k in squares.indices { squares[k] += pow(Double(before[k] - after[k]) * 0.1 * 2000, 2) }
            before = after
        }
        // Each parameter's RMS over 20 steps: sqrt(chi-square(20) / 20), within [0.35, 1.8] but for odds of 1e-5.
        let rms = squares.map { ($0 / Double(steps)).squareRoot() }
        #expect(rms.allSatisfy { $0 > 0.35 && $0 < 1.8 }, "RMS noise per parameter from \(rms.min()!) to \(rms.max()!)")
    }

    @Test(arguments: [GaussianNoise.Mode.standard, .secure])
    func noiseHasTheRequestedMoments(mode: GaussianNoise.Mode) {
        let samples = GaussianNoise.sample(count: 100_000, standardDeviation: 3, mode: mode).map(Double.init)
        let mean = samples.reduce(0, +) / Double(samples.count)
        let variance = samples.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(samples.count)
        #expect(abs(mean) < 0.05)
        #expect(abs(variance.squareRoot() - 3) < 0.05)
        #expect(GaussianNoise.sample(count: 5, standardDeviation: 1) != GaussianNoise.sample(count: 5, standardDeviation: 1), "not seeded")
    }

    /// Every index gets exactly one draw and no draw is used twice (moments alone would not see a value written twice),
    /// for odd counts too; an array's bounds check traps on an index past the end even in a release build.
    @Test func everyNoiseIndexGetsOneDrawOfItsOwn() {
        for count in [0, 1, 2, 3, 5, 17, 1_001] {
            var hits = [Int](repeating: 0, count: count)
            var draws: [Double] = []
            GaussianNoise.normals(count) { i, z in
                hits[i] += 1
                draws.append(z)
            }
            #expect(hits.allSatisfy { $0 == 1 }, "\(count) draws")
            #expect(Set(draws).count == count, "\(count) draws")
        }
    }

    /// Neighbours are uncorrelated (a draw written to two places gives r near 0.5), and the last element of an odd
    /// count is a normal like the others (each count-1 sample is that element).
    @Test(arguments: [GaussianNoise.Mode.standard, .secure])
    func neighbouringNoiseIsUncorrelatedAndTheOddTailIsNormal(mode: GaussianNoise.Mode) {
        let x = GaussianNoise.sample(count: 100_001, standardDeviation: 1, mode: mode).map(Double.init)
        let r = zip(x, x.dropFirst()).map(*).reduce(0, +) / x.map { $0 * $0 }.reduce(0, +)
        #expect(abs(r) < 0.02, "lag-1 correlation \(r)")
        let last = (0..<20_000).map { _ in Double(GaussianNoise.sample(count: 1, standardDeviation: 1, mode: mode)[0]) }
        #expect(abs((last.map { $0 * $0 }.reduce(0, +) / 20_000).squareRoot() - 1) < 0.03)
    }

    @Test func invalidConfigurationsNameTheField() throws {
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 1)
        #expect(throws: CofferTrainingError.invalidParameter("clipping norm must be > 0, got 0.0")) {
            _ = try Trainer(
                model: model,
                configuration: TrainingConfiguration(learningRate: 0.1, sampleRate: 0.1, noiseMultiplier: 1, clipNorm: 0),
                seed: 1
            )
        }
        #expect(throws: CofferTrainingError.invalidParameter("sample rate must be in (0, 1], got 0.0")) {
            _ = try Trainer(model: model, configuration: TrainingConfiguration(learningRate: 0.1, sampleRate: 0, noiseMultiplier: 1), seed: 1)
        }
        #expect(throws: CofferTrainingError.invalidParameter("noise multiplier must be > 0 with DP on, got -1.0")) {
            _ = try Trainer(model: model, configuration: TrainingConfiguration(learningRate: 0.1, sampleRate: 0.1, noiseMultiplier: -1), seed: 1)
        }
    }
}

@Suite(.ownThread)
struct UncertaintyWeightingTests {
    /// The log-variances' per-example gradients are part of each example's clipped norm.
    @Test func normsIncludeTheLogVarianceGradients() throws {
        let model = try MultiTaskModel(architecture: TrainerTests.architecture, seed: 2)
        let data = TrainerTests.synthetic(count: 5, seed: 4)
        let s: [Float] = [0.3, -0.2, 0.5]
        // A clipping norm no example reaches: the norms are computed, nothing is clipped.
        let with = model.gradients(data.features, count: 5, targets: data.targets, clipNorm: .greatestFiniteMagnitude, logVariances: s)
        for i in 0..<5 {
            let x = Array(data.features[(i * 4)..<(i * 4 + 4)])
            let single = model.gradients(x, count: 1, targets: data.targets.map { [$0[i]] }, clipNorm: nil, logVariances: s)
            var squared = single.layers.reduce(Float(0)) { $0 + $1.weight.reduce(0) { $0 + $1 * $1 } + $1.bias.reduce(0) { $0 + $1 * $1 } }
            squared += single.logVarianceGradients.reduce(0) { $0 + $1 * $1 }
            #expect(abs(squared.squareRoot() - with.norms[i]) <= 1e-4 * max(1, with.norms[i]))
            // d/ds (exp(-s) w loss + s) = 1 - exp(-s) w loss
            for t in 0..<3 {
                let loss = Float(single.taskLosses[t])
                #expect(abs(single.logVarianceGradients[t] - (1 - expf(-s[t]) * loss)) < 1e-4)
            }
        }
    }

    @Test func learnedWeightsFavourTheEasierTaskAndLossesFall() throws {
        let data = TrainerTests.synthetic(count: 2000, seed: 8)
        var noisy = data
        // Task r becomes pure noise of large variance: uncertainty weighting should turn its weight down.
        var g = SeededGenerator(seed: 9)
        noisy.targets[2] = noisy.targets[2].map { _ in g.uniform(-20, 20) }
        var configuration = TrainingConfiguration(
            learningRate: 0.02,
            optimizer: .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-8),
            sampleRate: 0.05,
            noiseMultiplier: 0.8
        )
        configuration.uncertaintyWeighting = true
        var trainer = try Trainer(model: try MultiTaskModel(architecture: TrainerTests.architecture, seed: 3), configuration: configuration, seed: 2)
        let initial = trainer.model.gradients(noisy.features, count: noisy.count, targets: noisy.targets, clipNorm: nil).taskLosses
        for _ in 0..<300 { trainer.step(on: noisy) }
        let final = trainer.model.gradients(noisy.features, count: noisy.count, targets: noisy.targets, clipNorm: nil).taskLosses
        #expect(final[0] < initial[0] && final[1] < initial[1])
        #expect(trainer.logVariances[2] > trainer.logVariances[0], "the noisy task's weight exp(-s) is the smallest: \(trainer.logVariances)")
    }
}
