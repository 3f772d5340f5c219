#if canImport(Glibc)
import Glibc
#endif

/// One stretch of DP-SGD: `steps` steps of the Gaussian mechanism with Poisson sampling at rate `sampleRate`.
public struct PrivacySegment: Sendable, Equatable, Codable {
    public var sampleRate: Double
    public var noiseMultiplier: Double
    public var steps: Int

    enum CodingKeys: String, CodingKey {
        case sampleRate = "sample_rate"
        case noiseMultiplier = "noise_multiplier"
        case steps
    }

    public init(sampleRate: Double, noiseMultiplier: Double, steps: Int) {
        self.sampleRate = sampleRate
        self.noiseMultiplier = noiseMultiplier
        self.steps = steps
    }
}

/// Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism, as Google's dp_accounting 0.6.0
/// (`RdpAccountant`) computes it: the same orders, the same series for integer and fractional orders
/// (Mironov, Talwar, Zhang 2019, section 3.3), in log space, and the conversion to (ε, δ) of
/// Balle et al. 2020 (Proposition 12 of arXiv 2004.00010 v4).
///
/// ```swift
/// var accountant = RDPAccountant()
/// accountant.compose(PrivacySegment(sampleRate: 256.0 / 60_000, noiseMultiplier: 1.1, steps: 14_062))
/// let (epsilon, order) = accountant.epsilon(delta: 1e-5)   // 2.5966, 8.1
/// ```
public struct RDPAccountant: Sendable {
    /// dp_accounting's `DEFAULT_RDP_ORDERS`: 1.1 to 10.9 by 0.1, 11 to 63, 128, 256, 512, 1024.
    public static let defaultOrders: [Double] =
        (1...99).map { 1 + Double($0) / 10 } + (11...63).map(Double.init) + [128, 256, 512, 1024]

    public let orders: [Double]
    /// Accumulated RDP at each order.
    public private(set) var rdp: [Double]
    public private(set) var segments: [PrivacySegment] = []
    private var lastPerStep: [Double] = []

    public init(orders: [Double] = RDPAccountant.defaultOrders) {
        self.orders = orders
        self.rdp = Array(repeating: 0, count: orders.count)
    }

    /// Adds a segment: RDP composes by summing, order by order. A segment with the parameters of the last one
    /// extends it (DP-SGD composes one step at a time), and reuses its per-step RDP.
    public mutating func compose(_ segment: PrivacySegment) {
        if let last = segments.last, last.sampleRate == segment.sampleRate, last.noiseMultiplier == segment.noiseMultiplier {
            // Saturating: a crafted history must not trap whoever replays it (its steps are bounded upstream).
            segments[segments.count - 1].steps =
                segments[segments.count - 1].steps.addingReportingOverflow(segment.steps).overflow
                ? Int.max : segments[segments.count - 1].steps + segment.steps
        } else {
            lastPerStep = Self.rdp(sampleRate: segment.sampleRate, noiseMultiplier: segment.noiseMultiplier, orders: orders)
            segments.append(segment)
        }
        for i in rdp.indices { rdp[i] += lastPerStep[i] * Double(segment.steps) }
    }

    /// The smallest ε over the orders for `delta`, and the order that achieves it.
    public func epsilon(delta: Double) -> (epsilon: Double, order: Double) {
        Self.epsilon(orders: orders, rdp: rdp, delta: delta)
    }

    /// The smallest noise multiplier whose ε after `steps` steps at `sampleRate`, composed `after` the releases
    /// already made (e.g. DP standardisation statistics), is at most `targetEpsilon` (to 1e-6 relative).
    ///
    /// - Throws: ``CofferTrainingError/unreachableEpsilon(_:)`` when even σ = 10,000 does not reach the target.
    public static func calibrateNoise(
        targetEpsilon: Double,
        sampleRate: Double,
        steps: Int,
        delta: Double,
        after released: [PrivacySegment] = [],
        orders: [Double] = defaultOrders
    )
        throws(CofferTrainingError) -> Double
    {
        try PrivacyParameters.validate(sampleRate: sampleRate, noiseMultiplier: 1, steps: steps, delta: delta)
        guard targetEpsilon > 0, targetEpsilon.isFinite else { throw .invalidParameter("target epsilon must be > 0, got \(targetEpsilon)") }
        func epsilon(_ sigma: Double) -> Double {
            var accountant = RDPAccountant(orders: orders)
            for segment in released { accountant.compose(segment) }
            accountant.compose(PrivacySegment(sampleRate: sampleRate, noiseMultiplier: sigma, steps: steps))
            return accountant.epsilon(delta: delta).epsilon
        }
        var high = 1.0
        while epsilon(high) > targetEpsilon {
            high *= 2
            if high > 10_000 {
                throw .unreachableEpsilon(
                    "epsilon \(targetEpsilon) is out of reach within \(steps) steps at sample rate \(sampleRate), delta \(delta), even with noise multiplier 10000"
                )
            }
        }
        var low = high / 2
        if epsilon(low) <= targetEpsilon { low = 0 }
        while high - low > 1e-6 * high {
            let middle = (low + high) / 2
            if epsilon(middle) <= targetEpsilon { high = middle } else { low = middle }
        }
        return high
    }

    // MARK: - The mechanism

    /// RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.
    static func rdp(sampleRate q: Double, noiseMultiplier sigma: Double, orders: [Double]) -> [Double] {
        orders.map { alpha in
            if q == 0 { return 0 }
            if alpha.isInfinite || sigma == 0 { return .infinity }
            if q == 1 { return alpha / (2 * sigma * sigma) }
            let logA =
                alpha.rounded() == alpha ? logAInteger(q: q, sigma: sigma, alpha: Int(alpha)) : logAFractional(q: q, sigma: sigma, alpha: alpha)
            return logA / (alpha - 1)
        }
    }

    static func logAInteger(q: Double, sigma: Double, alpha: Int) -> Double {
        var logA = -Double.infinity
        let log1mq = log1p(-q)
        let logq = log(q)
        for i in 0...alpha {
            let d = Double(i)
            let coefficient = logBinomial(Double(alpha), d) + d * logq + Double(alpha - i) * log1mq
            logA = logAdd(logA, coefficient + (d * d - d) / (2 * sigma * sigma))
        }
        return logA
    }

    static func logAFractional(q: Double, sigma: Double, alpha: Double) -> Double {
        var logA0 = -Double.infinity
        var logA1 = -Double.infinity
        let z0 = sigma * sigma * log(1 / q - 1) + 0.5
        let log1mq = log1p(-q)
        let logq = log(q)
        var lastS0 = -Double.infinity
        var lastS1 = -Double.infinity
        for step in 0..<1000 {
            let i = Double(step)
            let coefficient = logBinomial(alpha, i)
            let j = alpha - i
            let logT0 = coefficient + i * logq + j * log1mq
            let logT1 = coefficient + j * logq + i * log1mq
            let logE0 = log(0.5) + logErfc((i - z0) / (2.0.squareRoot() * sigma))
            let logE1 = log(0.5) + logErfc((z0 - j) / (2.0.squareRoot() * sigma))
            let logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0
            let logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1
            logA0 = logAdd(logA0, logS0)
            logA1 = logAdd(logA1, logS1)
            let total = logAdd(logA0, logA1)
            if logS0 < lastS0 && logS1 < lastS1 && max(logS0, logS1) < total - 30 { return total }
            lastS0 = logS0
            lastS1 = logS1
        }
        return .infinity  // did not converge: the order is excluded, as dp_accounting does
    }

    /// ε from RDP, minimised over orders; 0 where the KL bound already gives δ.
    public static func epsilon(orders: [Double], rdp: [Double], delta: Double) -> (epsilon: Double, order: Double) {
        if delta == 0 { return rdp.allSatisfy { $0 == 0 } ? (0, 0) : (.infinity, 0) }
        var best = (epsilon: Double.infinity, order: orders.first ?? 0)
        for (a, r) in zip(orders, rdp) {
            let epsilon: Double
            if r < 0 {
                epsilon = 0
            } else if delta * delta + expm1(-r) > 0 {
                epsilon = 0
            } else if a > 1.01 {
                epsilon = r + log1p(-1 / a) - log(delta * a) / (a - 1)
            } else {
                epsilon = .infinity
            }
            if epsilon < best.epsilon { best = (epsilon, a) }  // the first minimum, as numpy's argmin
        }
        return (max(0, best.epsilon), best.order)
    }

    // MARK: - Log-space arithmetic

    static func logAdd(_ x: Double, _ y: Double) -> Double {
        let (a, b) = (min(x, y), max(x, y))
        if a == -.infinity { return b }
        return log1p(exp(a - b)) + b
    }

    static func logBinomial(_ n: Double, _ k: Double) -> Double {
        logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1)
    }

    /// log|Γ(x)|, thread-safe (`lgamma_r`, not `lgamma`, which writes the global `signgam`).
    static func logGamma(_ x: Double) -> Double {
        var sign: Int32 = 0
        return lgamma_r(x, &sign)
    }

    /// log(erfc(x)), accurate far into the tail where erfc underflows.
    static func logErfc(_ x: Double) -> Double {
        let r = erfc(x)
        if r > 1e-300 { return log(r) }
        // Laurent series at infinity: erfc(x) ~ exp(-x^2 - .5/x^2 + .625/x^4 ...) / (x sqrt(pi)).
        let x2 = x * x
        return -log(Double.pi) / 2 - log(x) - x2 - 0.5 / x2 + 0.625 / (x2 * x2) - 37.0 / 24.0 / (x2 * x2 * x2) + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
    }
}
