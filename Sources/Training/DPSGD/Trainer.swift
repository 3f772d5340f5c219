import CBLAS
import Foundation

/// Rows of features and one target array per task.
public struct Dataset: Sendable {
    public var features: [Float]
    public var targets: [[Float]]
    public var count: Int
    public var inputs: Int

    public init(features: [Float], targets: [[Float]], count: Int, inputs: Int) {
        self.features = features
        self.targets = targets
        self.count = count
        self.inputs = inputs
    }

    func rows(_ indices: [Int]) -> ([Float], [[Float]]) {
        let x = [Float](unsafeUninitializedCapacity: indices.count * inputs) { x, initialized in
            features.withUnsafeBufferPointer { features in
                for (row, i) in indices.enumerated() {
                    precondition(i >= 0 && i < count, "row \(i) of \(count)")
                    (x.baseAddress! + row * inputs).initialize(from: features.baseAddress! + i * inputs, count: inputs)
                }
            }
            initialized = indices.count * inputs
        }
        return (x, targets.map { t in indices.map { t[$0] } })
    }
}

/// How to train: the optimiser and, for DP-SGD, sampling rate, clipping norm and noise.
public struct TrainingConfiguration: Sendable, Equatable, Codable {
    public enum Optimizer: Sendable, Equatable, Codable {
        case sgd(momentum: Float)
        case adam(beta1: Float, beta2: Float, epsilon: Float)
    }

    public var learningRate: Float
    public var optimizer: Optimizer
    /// Poisson sampling rate q: each example joins each step's batch independently with this probability.
    public var sampleRate: Double
    /// σ; `nil` trains without privacy (no clipping, no noise).
    public var noiseMultiplier: Double?
    /// C, the per-example clipping norm.
    public var clipNorm: Float
    public var noiseMode: GaussianNoise.Mode
    /// Learn each task's weight by uncertainty weighting (Kendall et al. 2018) instead of keeping the fixed weights.
    public var uncertaintyWeighting = false

    public init(
        learningRate: Float,
        optimizer: Optimizer = .sgd(momentum: 0.9),
        sampleRate: Double,
        noiseMultiplier: Double?,
        clipNorm: Float = 1,
        noiseMode: GaussianNoise.Mode = .standard
    ) {
        self.learningRate = learningRate
        self.optimizer = optimizer
        self.sampleRate = sampleRate
        self.noiseMultiplier = noiseMultiplier
        self.clipNorm = clipNorm
        self.noiseMode = noiseMode
    }

    public func validate() throws(CofferTrainingError) {
        guard learningRate > 0, learningRate.isFinite else { throw .invalidParameter("learning rate must be > 0, got \(learningRate)") }
        guard sampleRate > 0, sampleRate <= 1 else { throw .invalidParameter("sample rate must be in (0, 1], got \(sampleRate)") }
        guard clipNorm > 0, clipNorm.isFinite else { throw .invalidParameter("clipping norm must be > 0, got \(clipNorm)") }
        if let noiseMultiplier, !(noiseMultiplier > 0 && noiseMultiplier.isFinite) {
            throw .invalidParameter("noise multiplier must be > 0 with DP on, got \(noiseMultiplier)")
        }
    }
}

/// DP-SGD (Abadi et al. 2016) over a ``MultiTaskModel``: Poisson-sampled batches, per-example clipping by
/// ghost norms, Gaussian noise of std σC added to the clipped sum, divided by the expected batch size qN,
/// then the optimiser step. Every step is recorded by the RDP accountant.
public struct Trainer: Sendable {
    public private(set) var model: MultiTaskModel
    public let configuration: TrainingConfiguration
    public private(set) var accountant = RDPAccountant()
    public private(set) var steps = 0
    /// Without privacy, the Poisson draws come from the seed (reproducible); under DP from ``SecretDraws``.
    private var sampler: SeededGenerator
    private let secretDraws: SecretDraws?
    private var firstMoment: [[Float]]
    private var secondMoment: [[Float]]
    /// Uncertainty weighting's log-variances `s_t`, one per task (0 at the start: weight exp(0) = 1).
    public private(set) var logVariances: [Float]
    /// The dataset size the noisy sum is divided by (as `q` times it), when it must not be the size of the data
    /// stepped on: an audit's canaries join the data at random, and how many joined must not show in the scale.
    public var normalizingCount: Int? = nil
    /// A one-run audit's head (``attachAudit(_:)``): one class per canary on a projection of the trunk's output.
    public private(set) var auditHead: AuditHead? = nil
    /// The included canaries as rows of the audit head's classes.
    private var auditRows: Dataset? = nil
    /// After ``prune(ratio:)``: which weights stay (per parameter tensor; biases are never pruned).
    private var masks: [[Bool]]? = nil

    /// Threads a step's rows (and its noise) are split between; OpenBLAS keeps to one thread when it is more than one.
    public let threads: Int
    /// The fewest rows a thread of a step takes: below it, a thread's start costs more than its share of the work.
    static let rowsPerThread = 32

    /// - Parameters:
    ///   - seed: drives batch sampling without privacy (reproducible); neither DP's batches nor its noise come from it.
    ///   - threads: how many threads each step's rows are split between (`coffer train` gives one per core; a
    ///     simulated federation, whose sites already train side by side, one).
    public init(model: MultiTaskModel, configuration: TrainingConfiguration, seed: UInt64, threads: Int = 1) throws(CofferTrainingError) {
        try self.init(model: model, configuration: configuration, seed: seed, threads: threads, secretDraws: nil)
    }

    /// `secretDraws`: the DP batches' draws, fresh from the operating system unless a test fixes them.
    init(
        model: MultiTaskModel,
        configuration: TrainingConfiguration,
        seed: UInt64,
        threads: Int = 1,
        secretDraws: SecretDraws?
    ) throws(CofferTrainingError) {
        try configuration.validate()
        // The step's own threads (its rows split between them, or under DP the noise drawn beside the rows) and
        // OpenBLAS's worker threads would fight over the cores, so OpenBLAS keeps to one thread, for the rest of the
        // process (whose work, `coffer train` or `privacy audit`, is this training). On the training
        // benchmark's two cores, splitting the rows instead of the matrix products: non-private 145-157k -> 195-203k
        // examples/s, DP-SGD 108-112k -> 122-130k (OpenBLAS on both cores with the noise beside it: 64-87k).
        if threads > 1 || (configuration.noiseMultiplier != nil && ProcessInfo.processInfo.activeProcessorCount <= 2) {
            coffer_blas_set_threads(1)
        }
        self.threads = max(1, threads)
        self.model = model
        self.configuration = configuration
        self.sampler = SeededGenerator(seed: seed ^ 0x5DEE_CE66_D)
        self.secretDraws = configuration.noiseMultiplier == nil ? nil : secretDraws ?? SecretDraws()
        logVariances = configuration.uncertaintyWeighting ? model.architecture.tasks.map { _ in 0 } : []
        // Parameter tensors: weight, bias for each layer, then the log-variances (empty without uncertainty weighting).
        let shapes = model.layers.flatMap { [$0.weight.count, $0.bias.count] } + [logVariances.count]
        firstMoment = shapes.map { [Float](repeating: 0, count: $0) }
        secondMoment = shapes.map { [Float](repeating: 0, count: $0) }
    }

    /// Adds a one-run audit to this run, before its first step: the included canaries become training rows, sampled,
    /// clipped and noised with the data's rows, each labelled with its own class of an ``AuditHead`` on the trunk (see
    /// ``AuditCanaries``). The head's trained layer takes part in every step like the model's parameters, noise included.
    public mutating func attachAudit(_ canaries: AuditCanaries) {
        precondition(steps == 0 && auditHead == nil, "an audit is attached before training")
        let head = AuditHead(
            trunkOutput: model.architecture.trunk.last ?? model.architecture.inputs,
            canaries: canaries.count,
            seed: canaries.projectionSeed
        )
        auditHead = head
        auditRows = canaries.includedRows
        for count in [head.layer.weight.count, head.layer.bias.count] {
            firstMoment.append([Float](repeating: 0, count: count))
            secondMoment.append([Float](repeating: 0, count: count))
        }
    }

    /// What one step did.
    public struct StepReport: Sendable {
        /// Rows of the data in the batch (canaries not counted).
        public var batchSize: Int
        /// Audit canaries in the batch.
        public var canaries = 0
        /// Mean per-example loss of each task over the batch (0 for an empty batch).
        public var taskLosses: [Double]
    }

    /// One step on `data`. An empty Poisson batch is a valid step: under DP it still adds noise and is accounted.
    @discardableResult
    public mutating func step(on data: Dataset) -> StepReport {
        let q = configuration.sampleRate
        // A Poisson sample of the data's rows, then the audit's canary rows (numbered after them).
        let canaryRows = auditRows?.count ?? 0
        let rows = data.count + canaryRows
        let drawn =
            if let secretDraws {
                secretDraws.poissonSample(of: rows, rate: q)
            } else {
                (0..<rows).filter { _ in Double(sampler.next() >> 11) * 0x1.0p-53 < q }
            }
        let indices = drawn.filter { $0 < data.count }
        let noise = StepNoise(count: configuration.noiseMultiplier == nil ? 0 : firstMoment.reduce(0) { $0 + $1.count })
        let batch = gradients(on: data, rows: indices, drawing: noise)

        // Flatten to weight, bias, weight, bias... in layer order, add noise, and scale.
        var gradients = batch.layers.flatMap { [$0.weight, $0.bias] } + [batch.logVarianceGradients]
        var canaryCount = 0
        if let auditRows, let auditHead {
            // Canary rows: clipped one by one like the data's rows (their gradient has no part in the task heads, the
            // data's none in the audit head), summed into the same trunk gradients before the noise.
            let canaries = drawn.dropFirst(indices.count).map { $0 - data.count }
            canaryCount = canaries.count
            if canaries.isEmpty {
                // Most steps sample no canary (q M / 2 of them on average): nothing to add but the head's zeros.
                gradients += [[Float](repeating: 0, count: auditHead.layer.weight.count), [Float](repeating: 0, count: auditHead.layer.bias.count)]
            } else {
                let (cx, ct) = auditRows.rows(canaries)
                let clipNorm = configuration.noiseMultiplier == nil ? nil : configuration.clipNorm
                let canaryBatch = model.auditGradients(cx, count: canaries.count, classes: ct[0], head: auditHead, clipNorm: clipNorm)
                for l in model.trunk.indices {
                    for (p, part) in [(2 * l, canaryBatch[l].weight), (2 * l + 1, canaryBatch[l].bias)] {
                        gradients[p].withUnsafeMutableBufferPointer { g in for k in g.indices { g[k] += part[k] } }
                    }
                }
                gradients += [canaryBatch[model.trunk.count].weight, canaryBatch[model.trunk.count].bias]
            }
        }
        // The sum becomes a mean: over the expected batch size under DP (the actual size would reveal who is in it).
        var scale = 1 / Float(max(drawn.count, 1))
        if let sigma = configuration.noiseMultiplier {
            scale = 1 / Float(q * Double(normalizingCount ?? data.count))
            precondition(noise.values.count == gradients.reduce(0) { $0 + $1.count }, "one noise value per parameter")
            var offset = 0
            for p in gradients.indices {
                gradients[p].withUnsafeMutableBufferPointer { g in
                    for k in 0..<g.count { g[k] += noise.values[offset + k] }
                }
                offset += gradients[p].count
            }
            accountant.compose(PrivacySegment(sampleRate: q, noiseMultiplier: sigma, steps: 1))
        }
        apply(gradients, scale: scale)
        steps += 1
        let n = Double(max(indices.count, 1))
        return StepReport(batchSize: indices.count, canaries: canaryCount, taskLosses: batch.taskLosses.map { indices.isEmpty ? 0 : $0 / n })
    }

    /// The clipped gradient sum of the rows `indices` of `data`, drawing the step's noise into `noise` meanwhile (nothing
    /// for an empty one). With more than one thread, each takes a share of the noise and a contiguous share of the rows,
    /// and the sums are added (clipping is per example, so the parts add up to the whole batch's). With one, the noise is
    /// drawn on a thread of its own while this one computes the gradients.
    private func gradients(on data: Dataset, rows indices: [Int], drawing noise: borrowing StepNoise) -> BatchGradients {
        let (model, configuration) = (model, configuration)
        let clipNorm = configuration.noiseMultiplier == nil ? nil : configuration.clipNorm
        let logVariances = configuration.uncertaintyWeighting ? logVariances : nil
        let noiseDeviation = Float(configuration.noiseMultiplier ?? 0) * configuration.clipNorm
        let workers = max(1, min(threads, indices.count / Self.rowsPerThread))
        @Sendable func gradients(_ share: Int) -> BatchGradients {
            let rows = Array(indices[(indices.count * share / workers)..<(indices.count * (share + 1) / workers)])
            let (x, targets) = data.rows(rows)
            return model.gradients(x, count: rows.count, targets: targets, clipNorm: clipNorm, logVariances: logVariances)
        }
        // The threads write disjoint shares of it, and the step reads it only once they are done.
        nonisolated(unsafe) let values = noise.values
        @Sendable func drawNoise(_ share: Int, of shares: Int) {
            let count = values.count
            let part = UnsafeMutableBufferPointer(rebasing: values[(count * share / shares)..<(count * (share + 1) / shares)])
            if !part.isEmpty { GaussianNoise.fill(part, standardDeviation: noiseDeviation, mode: configuration.noiseMode) }
        }
        if workers == 1 {
            guard !values.isEmpty else { return gradients(0) }
            let drawing = Background { drawNoise(0, of: 1) }
            let batch = gradients(0)
            drawing.value()
            return batch
        }
        let others = (1..<workers).map { share in
            Background {
                drawNoise(share, of: workers)
                return gradients(share)
            }
        }
        drawNoise(0, of: workers)
        var batch = gradients(0)
        for other in others { batch.add(other.value()) }
        return batch
    }

    /// Global magnitude pruning: zeroes the `ratio` fraction of all weight-matrix entries (trunk and heads together)
    /// with the smallest magnitudes, and keeps them at zero through later steps.
    public mutating func prune(ratio: Double) {
        // Every weight entry as (tensor, index, magnitude); the `cut` smallest are removed, ties broken by position.
        var entries: [(tensor: Int, index: Int, magnitude: Float)] = []
        for p in stride(from: 0, to: model.layers.count * 2, by: 2) {
            for (k, value) in parameter(p).enumerated() { entries.append((p, k, abs(value))) }
        }
        let cut = Int(Double(entries.count) * ratio)
        guard cut > 0 else { return }
        entries.sort { ($0.magnitude, $0.tensor, $0.index) < ($1.magnitude, $1.tensor, $1.index) }
        var masks = (0..<(model.layers.count * 2)).map { [Bool](repeating: true, count: parameter($0).count) }
        for entry in entries.prefix(cut) { masks[entry.tensor][entry.index] = false }
        self.masks = masks
        for p in stride(from: 0, to: masks.count, by: 2) {
            setParameter(p, zip(parameter(p), masks[p]).map { $1 ? $0 : 0 })
            firstMoment[p] = zip(firstMoment[p], masks[p]).map { $1 ? $0 : 0 }
        }
    }

    /// One optimiser step on `scale` times `gradients`.
    private mutating func apply(_ gradients: [[Float]], scale: Float) {
        let lr = configuration.learningRate
        let t = Float(steps + 1)
        for p in gradients.indices {
            var parameter = self.parameter(p)
            setParameter(p, [])  // drop the model's reference so the update below happens in place, without a copy
            let mask = masks.flatMap { p < $0.count ? $0[p] : nil }
            parameter.withUnsafeMutableBufferPointer { w in
                gradients[p].withUnsafeBufferPointer { g in
                    firstMoment[p].withUnsafeMutableBufferPointer { m in
                        switch configuration.optimizer {
                        case .sgd(let momentum):
                            for k in 0..<w.count {
                                m[k] = momentum * m[k] + scale * g[k]
                                w[k] -= lr * m[k]
                            }
                        case .adam(let beta1, let beta2, let epsilon):
                            let c1 = 1 - powf(beta1, t)
                            let c2 = 1 - powf(beta2, t)
                            secondMoment[p].withUnsafeMutableBufferPointer { v in
                                for k in 0..<w.count {
                                    let g = scale * g[k]
                                    m[k] = beta1 * m[k] + (1 - beta1) * g
                                    v[k] = beta2 * v[k] + (1 - beta2) * g * g
                                    w[k] -= lr * (m[k] / c1) / ((v[k] / c2).squareRoot() + epsilon)
                                }
                            }
                        }
                    }
                }
                if let mask { for k in 0..<w.count where !mask[k] { w[k] = 0 } }
            }
            setParameter(p, parameter)
        }
    }

    /// Parameter tensor `p` in weight, bias, weight, bias... layer order, then the log-variances, then the audit head's
    /// weight and bias.
    private func parameter(_ p: Int) -> [Float] {
        if p == model.layers.count * 2 { return logVariances }
        if p == model.layers.count * 2 + 1 { return auditHead!.layer.weight }
        if p == model.layers.count * 2 + 2 { return auditHead!.layer.bias }
        let layer = p / 2 < model.trunk.count ? model.trunk[p / 2] : model.heads[p / 2 - model.trunk.count]
        return p % 2 == 0 ? layer.weight : layer.bias
    }

    private mutating func setParameter(_ p: Int, _ values: [Float]) {
        if p == model.layers.count * 2 {
            logVariances = values
            return
        }
        if p == model.layers.count * 2 + 1 {
            auditHead!.layer.weight = values
            return
        }
        if p == model.layers.count * 2 + 2 {
            auditHead!.layer.bias = values
            return
        }
        let l = p / 2
        if l < model.trunk.count {
            if p % 2 == 0 { model.trunk[l].weight = values } else { model.trunk[l].bias = values }
        } else {
            if p % 2 == 0 { model.heads[l - model.trunk.count].weight = values } else { model.heads[l - model.trunk.count].bias = values }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A value computed on a thread of its own; `value()` waits for it.
final class Background<Value: Sendable>: @unchecked Sendable {
    private var result: Value?
    private let done = DispatchSemaphore(value: 0)

    init(_ work: @escaping @Sendable () -> Value) {
        let thread = Thread { [self] in
            result = work()
            done.signal()
        }
        thread.start()
    }

    func value() -> Value {
        done.wait()
        done.signal()
        return result!
    }
}
