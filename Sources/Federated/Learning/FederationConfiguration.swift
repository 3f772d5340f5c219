public import CofferTraining
import Foundation

/// How a federation runs: rounds, sampling, the secure aggregation's threshold and neighbours, quantization, and
/// site-level DP (DP-FedAvg) when ``dp`` is set.
public struct FederationConfiguration: Sendable, Equatable {
    /// Site-level differential privacy (McMahan et al. 2018): clip each site's update to `clipNorm` (S), add
    /// N(0, (σS)²) to the sum once, divide by the expected number of sites per round (qN).
    public struct DP: Sendable, Equatable {
        public var clipNorm: Double
        public var noiseMultiplier: Double
        public var delta: Double

        public init(clipNorm: Double, noiseMultiplier: Double, delta: Double) {
            self.clipNorm = clipNorm
            self.noiseMultiplier = noiseMultiplier
            self.delta = delta
        }
    }

    /// t, as a count, or as a fraction of the shares per secret (rounded up).
    public enum Threshold: Sendable, Equatable {
        case count(Int)
        case fraction(Double)

        /// Parses `3`, `0.7` or `2/3`.
        public init?(argument: String) {
            let parts = argument.split(separator: "/")
            if parts.count == 2, let a = Double(parts[0]), let b = Double(parts[1]), b > 0, a / b > 0.5, a / b <= 1 {
                self = .fraction(a / b)
            } else if let count = Int(argument) {
                self = .count(count)
            } else if let fraction = Double(argument), fraction > 0.5, fraction <= 1 {
                self = .fraction(fraction)
            } else {
                return nil
            }
        }

        /// t for a round whose secrets each have `shares` shares.
        public func resolve(shares: Int) throws(FederatedError) -> Int {
            let t: Int
            switch self {
            case .count(let count): t = count
            case .fraction(let fraction): t = max(2, Int((fraction * Double(shares)).rounded(.up)))
            }
            try SecAggSite.checkThreshold(t, shares: shares)
            return t
        }
    }

    public var rounds: Int = 5
    /// q: each site joins each round independently with this probability (1: every site every round).
    public var sampleRate: Double = 1
    /// Rounds with fewer sampled sites are skipped (secure aggregation of one or two sites would reveal too much).
    public var minimumSites: Int = 3
    public var threshold: Threshold = .fraction(2.0 / 3.0)
    /// k for SecAgg+'s ring, or 0 for the complete graph.
    public var neighbours: Int = 0
    public var quantizationBits: Int = 22
    /// c of plain FedAvg's quantization; DP-FedAvg uses S.
    public var clipRange: Double = 8
    public var dp: DP?
    /// η: the global model moves by η times the aggregated update.
    public var serverLearningRate: Double = 1
    /// Public standardisation; without it the federation first runs a statistics round (round 0).
    public var standardisation: PublicStandardisation?
    /// With `dp`, run the (not differentially private) statistics round anyway.
    public var nonPrivateStatistics = false
    /// Seconds a site has to train and advertise its keys.
    public var trainTimeout: Double = 600
    /// Seconds a site has for each later stage.
    public var stageTimeout: Double = 60
    /// Seconds the coordinator waits for every enrolled site to join before it starts with those that did.
    public var joinTimeout: Double = 300

    public init() {}

    /// Sites may weigh at most this much (their training rows, capped) in plain FedAvg.
    public static let maximumWeight: UInt64 = 1 << 24

    public var mechanism: String { dp == nil ? "fedavg" : "dp-fedavg" }

    public func validate() throws(FederatedError) {
        guard rounds >= 1 else { throw .invalidParameter("rounds must be >= 1, got \(rounds)") }
        guard sampleRate > 0, sampleRate <= 1 else { throw .invalidParameter("the site sampling rate must be in (0, 1], got \(sampleRate)") }
        guard minimumSites >= 3 else { throw .invalidParameter("at least 3 sites per round are needed for secure aggregation, got \(minimumSites)") }
        guard neighbours >= 0, neighbours % 2 == 0 else { throw .invalidParameter("neighbours must be 0 (all) or even, got \(neighbours)") }
        if case .fraction(let f) = threshold, !(f > 0.5 && f <= 1) { throw .invalidParameter("a threshold fraction must be in (0.5, 1], got \(f)") }
        if case .count(let c) = threshold, c < 2 { throw .invalidParameter("a threshold must be at least 2, got \(c)") }
        _ = try Quantizer(clipRange: dp?.clipNorm ?? clipRange, bits: quantizationBits)
        guard serverLearningRate > 0, serverLearningRate.isFinite else { throw .invalidParameter("the server learning rate must be > 0") }
        guard trainTimeout > 0, stageTimeout > 0, joinTimeout >= 0 else { throw .invalidParameter("timeouts must be positive") }
        if let dp {
            guard dp.clipNorm > 0, dp.clipNorm.isFinite else { throw .invalidParameter("the clip norm must be > 0, got \(dp.clipNorm)") }
            guard dp.noiseMultiplier > 0, dp.noiseMultiplier.isFinite else {
                throw .invalidParameter("the noise multiplier must be > 0, got \(dp.noiseMultiplier)")
            }
            guard dp.delta > 0, dp.delta < 1 else { throw .invalidParameter("delta must be in (0, 1), got \(dp.delta)") }
            guard standardisation != nil || nonPrivateStatistics else {
                throw .invalidParameter(
                    "dp-fedavg: the statistics round would release feature sums without differential privacy; give public standardisation or allow non-private statistics"
                )
            }
        }
    }

    /// The quantizer of update rounds: c = S under DP (a clipped update's coordinates are within S), else ``clipRange``.
    public func quantizer() throws(FederatedError) -> Quantizer {
        try Quantizer(clipRange: dp?.clipNorm ?? clipRange, bits: quantizationBits)
    }

    /// Under DP, the L2 norm a site clips its update to before quantizing, so that the quantized update's norm stays
    /// within S: S (1 - 2 sqrt(P) / (2^b - 1)), since each coordinate moves by less than 2S / (2^b - 1) in rounding.
    public static func preQuantizationNorm(clipNorm: Double, bits: Int, parameters: Int) throws(FederatedError) -> Double {
        let slack = 2 * Double(parameters).squareRoot() / Double((1 << UInt64(bits)) - 1)
        guard slack < 0.5 else {
            throw .invalidParameter("\(bits)-bit quantization is too coarse for DP on \(parameters) parameters: use more bits")
        }
        return clipNorm * (1 - slack)
    }
}
