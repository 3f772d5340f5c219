import Foundation

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
    /// Where the standardisation statistics came from; `nil` in reports written before 2026-12-06.
    public var standardisation: StandardisationSource?
    /// `secret` (batches from keys the operating system gave: every DP run) or `seeded` (from the recipe's seed).
    public var batchSampling: String?

    /// A report: `TrainingRun`'s, or federated training's for its global model.
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
        pruning: Pruning,
        standardisation: StandardisationSource?,
        batchSampling: String?
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
        self.standardisation = standardisation
        self.batchSampling = batchSampling
    }

    enum CodingKeys: String, CodingKey {
        case mechanism, epsilon, delta, accountant, order, segments, pruning, evidence, standardisation
        case batchSampling = "batch_sampling"
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
        try c.encode(standardisation, forKey: .standardisation)
        try c.encode(batchSampling, forKey: .batchSampling)
    }
}
