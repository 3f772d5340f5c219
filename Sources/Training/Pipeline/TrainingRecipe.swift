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
        if isPrivate {
            guard let delta, delta > 0, delta < 1 else { throw .invalidConfiguration("delta must be in (0, 1) with privacy on") }
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
            case .binary, .regression:
                guard task.column != nil else { throw .invalidConfiguration("task '\(task.name)': column is required") }
            }
            if let transform = task.transform, transform != "log1p" {
                throw .invalidConfiguration("task '\(task.name)': unknown transform '\(transform)'")
            }
        }
    }
}
