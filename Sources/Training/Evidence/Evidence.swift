/// The empirical side of a checkpoint's privacy claim: `privacy.json`'s `evidence` object (docs/FORMAT.md, "Evidence").
///
/// Each part is present only when it was measured. Numbers that a registry may filter or a policy may require are
/// flat fields (`audit.epsilon_lower_bound`, `membership.max_auc`, `membership.max_tpr_at_1pct_fpr`); per-task detail
/// sits in objects keyed by task name.
public struct Evidence: Sendable, Equatable, Codable {
    /// The version of this object's shape; readers refuse versions they do not know.
    public static let currentVersion = 1

    public var version: Int
    public var audit: Audit?
    public var membership: Membership?
    public var utility: Utility?
    public var robustness: Robustness?

    public init(audit: Audit? = nil, membership: Membership? = nil, utility: Utility? = nil, robustness: Robustness? = nil) {
        version = Self.currentVersion
        self.audit = audit
        self.membership = membership
        self.utility = utility
        self.robustness = robustness
    }

    public var isEmpty: Bool { audit == nil && membership == nil && utility == nil && robustness == nil }

    /// Every key is written, `null` for a part not measured.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(audit, forKey: .audit)
        try c.encode(membership, forKey: .membership)
        try c.encode(utility, forKey: .utility)
        try c.encode(robustness, forKey: .robustness)
    }

    enum CodingKeys: String, CodingKey {
        case version, audit, membership, utility, robustness
    }

    // MARK: - Parts

    /// A one-run audit (``OneRunAudit``) of the training run itself.
    public struct Audit: Sendable, Equatable, Codable {
        public static let methodName = "steinke-nasr-jagielski-2023"
        public static let scoreName = "update-projection"

        /// ``methodName``: the bound of arXiv 2305.08846, Theorem 5.2, with Bonferroni over the guess sets.
        public var method: String
        /// ``scoreName``: each canary's score is the sum over epochs of `<g, θ_start - θ_end> / |g|`, its loss gradient
        /// `g` at the epoch's start projected on that epoch's parameter change.
        public var score: String
        public var canaries: Int
        public var confidence: Double
        public var delta: Double
        public var hypotheses: Int
        public var kPlus: Int
        public var kMinus: Int
        public var guesses: Int
        public var correct: Int
        public var epsilonLowerBound: Double

        public init(_ result: AuditResult) {
            method = Self.methodName
            score = Self.scoreName
            canaries = result.canaries
            confidence = result.confidence
            delta = result.delta
            hypotheses = result.hypotheses
            kPlus = result.kPlus
            kMinus = result.kMinus
            guesses = result.guesses
            correct = result.correct
            epsilonLowerBound = result.epsilonLowerBound
        }

        enum CodingKeys: String, CodingKey {
            case method, score, canaries, confidence, delta, hypotheses, guesses, correct
            case kPlus = "k_plus"
            case kMinus = "k_minus"
            case epsilonLowerBound = "epsilon_lower_bound"
        }
    }

    /// Membership inference (``MembershipInference``) on training rows against held-out rows.
    public struct Membership: Sendable, Equatable, Codable {
        public struct AttackScore: Sendable, Equatable, Codable {
            public var auc: Double
            public var tprAt1PctFPR: Double
            /// The population attack's false-positive rate measured at its 1% threshold; `nil` for the loss attack.
            public var fpr: Double?

            enum CodingKeys: String, CodingKey {
                case auc, fpr
                case tprAt1PctFPR = "tpr_at_1pct_fpr"
            }

            public func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(auc, forKey: .auc)
                try c.encode(tprAt1PctFPR, forKey: .tprAt1PctFPR)
                try c.encodeIfPresent(fpr, forKey: .fpr)
            }
        }

        public struct TaskAttacks: Sendable, Equatable, Codable {
            public var loss: AttackScore
            public var population: AttackScore
        }

        public var members: Int
        public var nonMembers: Int
        public var population: Int
        /// The largest AUC over every task and attack.
        public var maxAUC: Double
        public var maxTPRAt1PctFPR: Double
        public var tasks: [String: TaskAttacks]

        enum CodingKeys: String, CodingKey {
            case members, population, tasks
            case nonMembers = "non_members"
            case maxAUC = "max_auc"
            case maxTPRAt1PctFPR = "max_tpr_at_1pct_fpr"
        }
    }

    /// The same recipe trained without privacy, on the same split, against this model.
    public struct Utility: Sendable, Equatable, Codable {
        public struct TaskUtility: Sendable, Equatable, Codable {
            /// `accuracy`, `auc` or `rmse`, as in the checkpoint's metrics.
            public var metric: String
            public var privateValue: Double
            public var nonPrivate: Double
            /// What privacy cost on this task: `non_private - private` for accuracy and AUC, `private - non_private`
            /// for RMSE, so a positive cost always means the private model is worse.
            public var cost: Double

            public init(metric: String, privateValue: Double, nonPrivate: Double) {
                self.metric = metric
                self.privateValue = privateValue
                self.nonPrivate = nonPrivate
                cost = metric == "rmse" ? privateValue - nonPrivate : nonPrivate - privateValue
            }

            enum CodingKeys: String, CodingKey {
                case metric, cost
                case privateValue = "private"
                case nonPrivate = "non_private"
            }

            /// An undefined metric (the AUC of a binary task whose validation rows are all one class) is `null`.
            public func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(metric, forKey: .metric)
                for (value, key) in [(privateValue, CodingKeys.privateValue), (nonPrivate, .nonPrivate), (cost, .cost)] {
                    if value.isFinite { try c.encode(value, forKey: key) } else { try c.encodeNil(forKey: key) }
                }
            }

            public init(from decoder: any Decoder) throws {
                let c = try decoder.container(keyedBy: CodingKeys.self)
                metric = try c.decode(String.self, forKey: .metric)
                privateValue = try c.decodeIfPresent(Double.self, forKey: .privateValue) ?? .nan
                nonPrivate = try c.decodeIfPresent(Double.self, forKey: .nonPrivate) ?? .nan
                cost = try c.decodeIfPresent(Double.self, forKey: .cost) ?? .nan
            }
        }

        /// `non-private`: the recipe with `privacy: false` (no clipping, no noise, no canaries), same seed.
        public var baseline: String
        public var tasks: [String: TaskUtility]
    }

    /// Accuracy under input perturbations (``AdversarialRobustness``).
    public struct Robustness: Sendable, Equatable, Codable {
        public struct TaskRobustness: Sendable, Equatable, Codable {
            public var clean: Double
            /// Accuracy at each of ``Robustness/epsilons``.
            public var fgsm: [Double]
            public var pgd: [Double]
        }

        /// `linf`, on the standardised features.
        public var norm: String = "linf"
        public var epsilons: [Double]
        public var pgdSteps: Int
        public var pgdStepFraction: Double
        public var rows: Int
        public var tasks: [String: TaskRobustness]

        enum CodingKeys: String, CodingKey {
            case norm, epsilons, rows, tasks
            case pgdSteps = "pgd_steps"
            case pgdStepFraction = "pgd_step_fraction"
        }
    }
}
