import Foundation

/// The `coffer train --config FILE` document (JSON; docs/FORMAT.md, "Training configuration").
public struct TrainingRecipe: Sendable, Equatable, Codable {
    /// Where a task's target comes from.
    public struct TaskSource: Sendable, Equatable, Codable {
        public var name: String
        public var kind: TaskSpec.Kind
        /// The target column (regression, binary, or classification by class index).
        public var column: String?
        /// `log1p` for regression targets such as counts.
        public var transform: String?
        /// Classification from one-hot columns: class k+1 when column k is 1, class 0 when all are 0.
        public var oneHot: [String]?
        /// Class labels, class 0 first.
        public var labels: [String]?
        public var weight: Float?
        /// Binary tasks: targets at or above this value are 1, below are 0 (without it, targets must be 0 or 1).
        public var threshold: Double?

        enum CodingKeys: String, CodingKey {
            case name, kind, column, transform, labels, weight, threshold
            case oneHot = "one_hot"
        }

        public init(
            name: String,
            kind: TaskSpec.Kind,
            column: String? = nil,
            transform: String? = nil,
            oneHot: [String]? = nil,
            labels: [String]? = nil,
            weight: Float? = nil,
            threshold: Double? = nil
        ) {
            self.name = name
            self.kind = kind
            self.column = column
            self.transform = transform
            self.oneHot = oneHot
            self.labels = labels
            self.weight = weight
            self.threshold = threshold
        }
    }

    public var data: String
    public var features: [String]
    public var tasks: [TaskSource]
    public var trunk: [Int]
    public var activation: Architecture.Activation?
    public var epochs: Int
    public var learningRate: Float
    public var optimizer: String?
    public var momentum: Float?
    public var expectedBatchSize: Int
    public var clippingNorm: Float?
    public var noiseMultiplier: Double?
    public var targetEpsilon: Double?
    public var delta: Double?
    public var pruningRatio: Double?
    public var fineTuneEpochs: Int?
    public var seed: UInt64?
    public var validationSplit: Double?
    public var noiseMode: GaussianNoise.Mode?
    /// `false` trains without differential privacy (no clipping, no noise, no privacy claim).
    public var privacy: Bool?
    /// `fixed` (default: the tasks' weights) or `uncertainty` (learned, Kendall et al. 2018).
    public var taskBalancing: String?
    /// Canaries of a one-run privacy audit (``OneRunAudit``) trained in the same run; needs DP.
    public var auditCanaries: Int?
    /// Run the membership-inference attacks (``MembershipInference``) on training against validation rows.
    public var membershipAttack: Bool?
    /// Also train the recipe without privacy on the same split, and record both models' metrics.
    public var utilityBaseline: Bool?
    /// FGSM and PGD accuracy (``AdversarialRobustness``) at these L∞ radii on the standardised features.
    public var robustnessEpsilons: [Double]?
    /// Public bounds of the features, from which DP standardisation statistics are computed (``Standardisation``).
    public var featureBounds: FeatureBounds?
    /// σ of the DP standardisation statistics (default 10).
    public var statisticsNoiseMultiplier: Double?
    /// Public standardisation values, used as given.
    public var standardisation: PublicStandardisation?
    /// Under DP, standardise with the exact statistics of the training rows, outside the DP guarantee.
    public var nonprivateStatistics: Bool?

    enum CodingKeys: String, CodingKey {
        case data, features, tasks, trunk, activation, epochs, optimizer, momentum, delta, seed, privacy
        case learningRate = "learning_rate"
        case expectedBatchSize = "expected_batch_size"
        case clippingNorm = "clipping_norm"
        case noiseMultiplier = "noise_multiplier"
        case targetEpsilon = "target_epsilon"
        case pruningRatio = "pruning_ratio"
        case fineTuneEpochs = "fine_tune_epochs"
        case validationSplit = "validation_split"
        case noiseMode = "noise_mode"
        case taskBalancing = "task_balancing"
        case auditCanaries = "audit_canaries"
        case membershipAttack = "membership_attack"
        case utilityBaseline = "utility_baseline"
        case robustnessEpsilons = "robustness_epsilons"
        case featureBounds = "feature_bounds"
        case statisticsNoiseMultiplier = "statistics_noise_multiplier"
        case standardisation
        case nonprivateStatistics = "nonprivate_statistics"
    }

    /// `[low, high]` for every feature, or `{"column": [low, high], ...}` naming each.
    public enum FeatureBounds: Sendable, Equatable, Codable {
        case all(low: Double, high: Double)
        case each([String: [Double]])

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let pair = try? container.decode([Double].self) {
                guard pair.count == 2 else {
                    throw DecodingError.dataCorruptedError(in: container, debugDescription: "feature_bounds: expected [low, high]")
                }
                self = .all(low: pair[0], high: pair[1])
            } else {
                self = .each(try container.decode([String: [Double]].self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .all(let low, let high): try container.encode([low, high])
            case .each(let bounds): try container.encode(bounds)
            }
        }

        /// Each feature's bounds in feature order; refuses a missing, unknown or empty range.
        public func bounds(of features: [String]) throws(CofferTrainingError) -> [(low: Double, high: Double)] {
            let pairs: [(String, [Double])]
            switch self {
            case .all(let low, let high): pairs = features.map { ($0, [low, high]) }
            case .each(let named):
                if let unknown = named.keys.sorted().first(where: { !features.contains($0) }) {
                    throw .invalidConfiguration("feature_bounds: '\(unknown)' is not one of the features")
                }
                var list: [(String, [Double])] = []
                for feature in features {
                    guard let pair = named[feature] else { throw .invalidConfiguration("feature_bounds: feature '\(feature)' has no bounds") }
                    list.append((feature, pair))
                }
                pairs = list
            }
            var out: [(low: Double, high: Double)] = []
            for (feature, pair) in pairs {
                // The midpoint and half-range must be finite and the half-range a normal number: the values are scaled by it.
                guard pair.count == 2, pair[0].isFinite, pair[1].isFinite, pair[0] < pair[1], (pair[1] - pair[0]).isFinite,
                    (pair[0] + pair[1]).isFinite, (pair[1] - pair[0]) / 2 >= Double.leastNormalMagnitude
                else {
                    throw .invalidConfiguration("feature_bounds: '\(feature)' needs finite [low, high] with low < high, got \(pair)")
                }
                out.append((pair[0], pair[1]))
            }
            return out
        }
    }

    /// Reads a recipe; a relative `data` path is resolved against the recipe's directory.
    public init(contentsOf path: String) throws(CofferTrainingError) {
        guard let bytes = FileManager.default.contents(atPath: path) else { throw .invalidConfiguration("\(path): cannot read") }
        try self.init(json: Array(bytes), path: path)
    }

    /// Parses a recipe's JSON; `path` names it in errors and anchors a relative `data` path.
    public init(json bytes: [UInt8], path: String) throws(CofferTrainingError) {
        do {
            self = try JSONDecoder().decode(TrainingRecipe.self, from: Data(bytes))
        } catch let DecodingError.keyNotFound(key, _) {
            throw .invalidConfiguration("\(path): field '\(key.stringValue)' is required")
        } catch let DecodingError.typeMismatch(_, context) {
            throw .invalidConfiguration("\(path): field '\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type")
        } catch let DecodingError.dataCorrupted(context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw .invalidConfiguration("\(path): \(field.isEmpty ? "not valid JSON" : "field '\(field)' has an invalid value")")
        } catch {
            throw .invalidConfiguration("\(path): \(error)")
        }
        if !data.hasPrefix("/") {
            data = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent(data).standardizedFileURL.path
        }
        try validate()
    }

    public var isPrivate: Bool { privacy ?? true }

    public func validate() throws(CofferTrainingError) {
        guard !features.isEmpty else { throw .invalidConfiguration("features: at least one column is required") }
        guard !tasks.isEmpty else { throw .invalidConfiguration("tasks: at least one task is required") }
        guard epochs >= 1 else { throw .invalidConfiguration("epochs must be >= 1, got \(epochs)") }
        guard expectedBatchSize >= 1 else { throw .invalidConfiguration("expected_batch_size must be >= 1, got \(expectedBatchSize)") }
        guard learningRate > 0 else { throw .invalidConfiguration("learning_rate must be > 0, got \(learningRate)") }
        if let clippingNorm, !(clippingNorm > 0) { throw .invalidConfiguration("clipping_norm must be > 0, got \(clippingNorm)") }
        if let pruningRatio, !(pruningRatio >= 0 && pruningRatio < 1) {
            throw .invalidConfiguration("pruning_ratio must be in [0, 1), got \(pruningRatio)")
        }
        if let validationSplit, !(validationSplit >= 0 && validationSplit < 1) {
            throw .invalidConfiguration("validation_split must be in [0, 1), got \(validationSplit)")
        }
        if let taskBalancing, taskBalancing != "fixed", taskBalancing != "uncertainty" {
            throw .invalidConfiguration("task_balancing must be fixed or uncertainty, got \(taskBalancing)")
        }
        if let auditCanaries, auditCanaries < 1 || auditCanaries > 1_000_000 {
            throw .invalidConfiguration("audit_canaries must be in 1...1000000, got \(auditCanaries)")
        }
        if let robustnessEpsilons {
            guard !robustnessEpsilons.isEmpty, robustnessEpsilons.allSatisfy({ $0 > 0 && $0.isFinite }) else {
                throw .invalidConfiguration("robustness_epsilons must be finite numbers > 0, got \(robustnessEpsilons)")
            }
        }
        if let optimizer, optimizer != "sgd", optimizer != "adam" { throw .invalidConfiguration("optimizer must be sgd or adam, got \(optimizer)") }
        if let featureBounds { _ = try featureBounds.bounds(of: features) }
        if let statisticsNoiseMultiplier {
            guard featureBounds != nil else { throw .invalidConfiguration("statistics_noise_multiplier needs feature_bounds") }
            guard statisticsNoiseMultiplier > 0, statisticsNoiseMultiplier.isFinite else {
                throw .invalidConfiguration("statistics_noise_multiplier must be > 0, got \(statisticsNoiseMultiplier)")
            }
        }
        try standardisation?.check(features: features.count)
        if isPrivate {
            guard let delta, delta > 0, delta < 1 else { throw .invalidConfiguration("delta must be in (0, 1) with privacy on") }
            if [featureBounds != nil, standardisation != nil, nonprivateStatistics == true].filter({ $0 }).count > 1 {
                throw .invalidConfiguration("give one of feature_bounds, standardisation and nonprivate_statistics: true, not several")
            }
            switch (noiseMultiplier, targetEpsilon) {
            case (nil, nil): throw .invalidConfiguration("give noise_multiplier or target_epsilon (or set privacy to false)")
            case (.some, .some): throw .invalidConfiguration("give noise_multiplier or target_epsilon, not both")
            case (.some(let sigma), nil):
                guard sigma > 0 else { throw .invalidConfiguration("noise_multiplier must be > 0 with privacy on, got \(sigma)") }
            case (nil, .some(let epsilon)): guard epsilon > 0 else { throw .invalidConfiguration("target_epsilon must be > 0, got \(epsilon)") }
            }
        }
        for task in tasks {
            switch task.kind {
            case .classification:
                guard (task.column == nil) != (task.oneHot == nil) else {
                    throw .invalidConfiguration("task '\(task.name)': give column or one_hot")
                }
                // The head's width is released with the model: counted from the data, it would reveal the largest class.
                if isPrivate, task.column != nil, task.labels == nil {
                    throw .invalidConfiguration("task '\(task.name)': under DP a classification by column needs labels (the class count is public)")
                }
            case .binary, .regression:
                guard task.column != nil else { throw .invalidConfiguration("task '\(task.name)': column is required") }
            }
            if let transform = task.transform, transform != "log1p" {
                throw .invalidConfiguration("task '\(task.name)': unknown transform '\(transform)'")
            }
        }
    }
}
