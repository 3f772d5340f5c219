import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The empirical lower bound on ε of Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1) Training Run"
/// (arXiv 2305.08846), as google-deepmind/jax_privacy's `auditing.py` computes it.
///
/// `m` canaries are each included in training with probability 1/2, independently. After training, a score fixed in
/// advance ranks them; the auditor guesses "included" for the `k+` highest scores and "excluded" for the `k-` lowest,
/// and counts the `v` right guesses out of `r = k+ + k-`. If training is (ε, δ)-DP, the number of right guesses is
/// dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term (the paper's Theorem 5.2), which gives the p-value
///
///     p(ε) = min(1, β + α · δ · 2m),   β = P[Binomial(r, q) ≥ v],   q = e^ε / (1 + e^ε),
///     α = max over i in 1...v of P[v - i ≤ Binomial(r, q) ≤ v - 1] / i,
///
/// and the bound is the largest ε that is rejected at the significance level: p(ε) below it.
///
/// The guesses come from a grid of `(k+, k-)` pairs that depends only on `m` (``guessGrid(canaries:)``), fixed before
/// any inclusion bit is looked at; each is tested at significance `(1 - confidence) / grid size` (Bonferroni), so the
/// largest of their bounds holds at the stated confidence.
///
/// ```swift
/// let bound = OneRunAudit.epsilonLowerBound(canaries: 1000, guesses: 200, correct: 180, significance: 0.05, delta: 1e-5)
/// ```
public enum OneRunAudit {
    /// The grid's guess fractions: `k+ = k- = floor(f · m)` for each `f`, duplicates and zeros dropped.
    public static let guessFractions: [Double] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    /// The smallest bound (ε) that M canaries must be able to show, with every guess right, for an audit to be run.
    public static let meaningfulEpsilon = 1.0

    /// The `(k+, k-)` pairs an audit of `m` canaries tries: symmetric, from ``guessFractions``, in increasing order.
    public static func guessGrid(canaries m: Int) -> [(kPlus: Int, kMinus: Int)] {
        var seen = Set<Int>()
        var grid: [(kPlus: Int, kMinus: Int)] = []
        for f in guessFractions {
            let k = Int((f * Double(m)).rounded(.down))
            guard k >= 1, seen.insert(k).inserted else { continue }
            grid.append((k, k))
        }
        return grid
    }

    /// The p-value of `correct` right guesses out of `guesses` against the hypothesis that training is (ε, δ)-DP.
    public static func pValue(canaries m: Int, guesses r: Int, correct v: Int, epsilon: Double, delta: Double) -> Double {
        BinomialTail(guesses: r, correct: v).pValue(canaries: m, epsilon: epsilon, delta: delta)
    }

    /// Refuses guess counts no audit of `m` canaries produces, naming the field.
    public static func validate(canaries m: Int, guesses r: Int, correct v: Int, delta: Double) throws(CofferTrainingError) {
        guard m >= 1 else { throw .invalidParameter("canaries must be >= 1, got \(m)") }
        guard r >= 0, r <= m else { throw .invalidParameter("guesses must be in 0...\(m) (the canaries), got \(r)") }
        guard v >= 0, v <= r else { throw .invalidParameter("correct guesses must be in 0...\(r) (the guesses), got \(v)") }
        guard delta >= 0, delta < 1 else { throw .invalidParameter("delta must be in [0, 1), got \(delta)") }
    }

    /// The largest ε rejected at `significance` by `correct` right guesses out of `guesses` (0 when none is).
    ///
    /// Found as the reference finds it: doubling from 1 while ε is still rejected, then bisection to 1e-6; the lower
    /// end is returned, which is itself rejected, so the bound errs low.
    public static func epsilonLowerBound(canaries m: Int, guesses r: Int, correct v: Int, significance: Double, delta: Double) -> Double {
        let tail = BinomialTail(guesses: r, correct: v)
        func rejected(_ epsilon: Double) -> Bool { tail.pValue(canaries: m, epsilon: epsilon, delta: delta) < significance }
        guard rejected(0) else { return 0 }
        var low = 0.0
        var high = 1.0
        while rejected(high) {
            low = high
            high *= 2
            // p(ε) tends to 1 as ε grows; this only stops a runaway on a degenerate input.
            if high > 1e4 { return low }
        }
        while high - low > 1e-6 {
            let middle = (low + high) / 2
            if rejected(middle) { low = middle } else { high = middle }
        }
        return low
    }

    /// The audit of scored canaries: the grid's guesses, each tested at the Bonferroni-corrected significance, and
    /// the largest bound. Higher scores mean "more likely included"; ties are broken by canary index (lower first).
    ///
    /// - Parameters:
    ///   - scores: one score per canary, computed without looking at `included`.
    ///   - included: whether each canary was in the training data.
    /// - Throws: ``CofferTrainingError/invalidParameter(_:)`` for mismatched lengths, a confidence outside (0, 1), or
    ///   too few canaries to show ε ≥ ``meaningfulEpsilon`` even with every guess right.
    public static func audit(
        scores: [Double],
        included: [Bool],
        confidence: Double = 0.95,
        delta: Double
    ) throws(CofferTrainingError)
        -> AuditResult
    {
        let m = scores.count
        guard included.count == m else { throw .invalidParameter("\(m) canary scores but \(included.count) inclusion bits") }
        guard confidence > 0, confidence < 1 else { throw .invalidParameter("audit confidence must be in (0, 1), got \(confidence)") }
        guard delta >= 0, delta < 1 else { throw .invalidParameter("audit delta must be in [0, 1), got \(delta)") }
        try requireEnoughCanaries(m, confidence: confidence, delta: delta)
        let grid = guessGrid(canaries: m)
        let significance = (1 - confidence) / Double(grid.count)
        // Highest score first; equal scores keep index order, so the ranking is fixed by the scores alone. A NaN score
        // (a diverged run) ranks lowest, which keeps the order total.
        let keys = scores.map { $0.isNaN ? -Double.infinity : $0 }
        let ranking = keys.indices.sorted { keys[$0] > keys[$1] || (keys[$0] == keys[$1] && $0 < $1) }
        var best = AuditResult(
            canaries: m,
            confidence: confidence,
            delta: delta,
            hypotheses: grid.count,
            kPlus: grid[0].kPlus,
            kMinus: grid[0].kMinus,
            correct: 0,
            epsilonLowerBound: 0
        )
        var bestCorrect = -1
        for (kPlus, kMinus) in grid {
            let correct = ranking.prefix(kPlus).filter { included[$0] }.count + ranking.suffix(kMinus).filter { !included[$0] }.count
            let bound = epsilonLowerBound(canaries: m, guesses: kPlus + kMinus, correct: correct, significance: significance, delta: delta)
            // The largest bound wins; among bounds of 0, the guess set with the most right guesses is reported.
            if bound > best.epsilonLowerBound || (bound == best.epsilonLowerBound && best.epsilonLowerBound == 0 && correct > bestCorrect) {
                best.kPlus = kPlus
                best.kMinus = kMinus
                best.correct = correct
                best.epsilonLowerBound = bound
                bestCorrect = correct
            }
        }
        return best
    }

    /// The bound `m` canaries give when every guess of the grid's largest guess set is right: the most they can show.
    public static func largestProvableEpsilon(canaries m: Int, confidence: Double = 0.95, delta: Double) -> Double {
        let grid = guessGrid(canaries: m)
        guard let widest = grid.last else { return 0 }
        let r = widest.kPlus + widest.kMinus
        return epsilonLowerBound(canaries: m, guesses: r, correct: r, significance: (1 - confidence) / Double(grid.count), delta: delta)
    }

    /// The fewest canaries whose perfect guesses could show ε ≥ ``meaningfulEpsilon`` (found by doubling, then
    /// bisection), or `nil` when no count up to 2^17 can: the δ term `2 m δ` grows with the canaries, so a large δ
    /// defeats any number of them.
    public static func minimumCanaries(confidence: Double = 0.95, delta: Double) -> Int? {
        func enough(_ m: Int) -> Bool { largestProvableEpsilon(canaries: m, confidence: confidence, delta: delta) >= meaningfulEpsilon }
        var high = 16
        while !enough(high) {
            high *= 2
            if high > 1 << 17 { return nil }
        }
        var low = 1
        while high - low > 1 {
            let middle = (low + high) / 2
            if enough(middle) { high = middle } else { low = middle }
        }
        return high
    }

    /// Refuses a canary count too small for any outcome to show ε ≥ ``meaningfulEpsilon``, naming the minimum, or a δ
    /// so large that no canary count can.
    public static func requireEnoughCanaries(_ m: Int, confidence: Double = 0.95, delta: Double) throws(CofferTrainingError) {
        guard largestProvableEpsilon(canaries: m, confidence: confidence, delta: delta) < meaningfulEpsilon else { return }
        let percent = "\(Int((confidence * 100).rounded()))%"
        guard let minimum = minimumCanaries(confidence: confidence, delta: delta) else {
            throw .invalidParameter(
                "delta \(delta) is too large for a one-run audit: its term 2 * canaries * delta leaves no canary count able to show epsilon >= 1 at \(percent) confidence"
            )
        }
        guard minimum > m else {
            // Fewer canaries would do: it is the δ term, growing with them, that defeats this many.
            throw .invalidParameter(
                "delta \(delta) is too large for \(m) audit canaries: its term 2 * canaries * delta leaves even all-correct guesses unable to show epsilon >= 1 at \(percent) confidence; use a smaller delta"
            )
        }
        throw .invalidParameter(
            "\(m) audit canaries are too few for a meaningful bound: even all-correct guesses could not show epsilon >= 1 at \(percent) confidence; use at least \(minimum)"
        )
    }

    /// log(1 + e^x), without overflow.
    static func softplus(_ x: Double) -> Double { x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)) }

    /// Binomial(r, q) probabilities for one guess count, the log-binomial coefficients computed once for every ε.
    struct BinomialTail {
        let guesses: Int
        let correct: Int
        let logCoefficients: [Double]

        init(guesses r: Int, correct v: Int) {
            precondition(r >= 0 && v >= 0 && v <= r, "right guesses out of range")
            guesses = r
            correct = v
            logCoefficients = (0...r).map { RDPAccountant.logBinomial(Double(r), Double($0)) }
        }

        /// p(ε) = min(1, β + α · δ · 2m) of the type's documentation.
        func pValue(canaries m: Int, epsilon: Double, delta: Double) -> Double {
            let (r, v) = (guesses, correct)
            if v == 0 { return 1 }
            // log q and log(1 - q) for q = e^ε / (1 + e^ε), without rounding q to 1 for large ε.
            let logQ = -OneRunAudit.softplus(-epsilon)
            let log1mQ = -OneRunAudit.softplus(epsilon)
            func pmf(_ j: Int) -> Double { exp(logCoefficients[j] + Double(j) * logQ + Double(r - j) * log1mQ) }
            // β: the upper tail from v, summed from its far end.
            var beta = 0.0
            for j in stride(from: r, through: v, by: -1) { beta += pmf(j) }
            beta = min(beta, 1)
            if delta == 0 { return beta }
            // α: the largest mean of the i probabilities just below v.
            var alpha = 0.0
            var sum = 0.0
            for i in 1...v {
                sum += pmf(v - i)
                alpha = max(alpha, sum / Double(i))
            }
            return min(beta + alpha * delta * 2 * Double(m), 1)
        }
    }
}

/// What a one-run audit found: the guess set that gave the largest bound, and that bound.
public struct AuditResult: Sendable, Equatable {
    public var canaries: Int
    public var confidence: Double
    public var delta: Double
    /// How many guess sets were tried (the Bonferroni divisor of the significance).
    public var hypotheses: Int
    public var kPlus: Int
    public var kMinus: Int
    public var correct: Int
    public var epsilonLowerBound: Double

    public var guesses: Int { kPlus + kMinus }
}

// MARK: - Scoring

extension OneRunAudit {
    /// One epoch's contribution to each canary's score: how far the canary's own row of the audit head moved along
    /// the direction the canary's gradient pushes it, `<[u_c; 1], Δrow_c> / |[u_c; 1]|`, with `u_c = P h_c` the
    /// projected trunk output for canary `c` at the epoch's start and `Δrow_c` the change of row `c` (weights and
    /// bias) over the epoch.
    ///
    /// A sampled canary's cross-entropy gradient on its row is `(p_c - 1) [u_c; 1]`, so descent moves the row along
    /// `+[u_c; 1]`; no real row moves it, other canaries only by their softmax share `p_c`, and the noise by the same
    /// law whether or not `c` joined. Dividing by `|[u_c; 1]|` projects on a unit vector, on which the noise's spread
    /// does not depend on the canary. The score reads only DP-SGD's iterates (the accountant covers every one of them)
    /// and the canaries' features, so it is fixed before any inclusion bit is read.
    ///
    /// - Parameters:
    ///   - trunk: the model at the epoch's start (only its trunk is used).
    ///   - start: the audit head at the epoch's start; `end`: at its end.
    public static func epochScores(_ canaries: AuditCanaries, trunk: MultiTaskModel, start: AuditHead, end: AuditHead) -> [Double] {
        var scores: [Double] = []
        scores.reserveCapacity(canaries.count)
        let width = AuditHead.width
        // Blocks of rows bound the trace's memory for large canary counts.
        var first = 0
        while first < canaries.count {
            let last = min(first + 4096, canaries.count)
            let x = Array(canaries.features[(first * canaries.inputs)..<(last * canaries.inputs)])
            let u = start.features(trunk, x, count: last - first)
            for c in first..<last {
                let row = c * width
                var dot = Double(end.layer.bias[c] - start.layer.bias[c])
                var norm = 1.0
                for k in 0..<width {
                    let a = Double(u[(c - first) * width + k])
                    dot += a * Double(end.layer.weight[row + k] - start.layer.weight[row + k])
                    norm += a * a
                }
                scores.append(dot / norm.squareRoot())
            }
            first = last
        }
        return scores
    }
}

/// Everything about one audit that is not in `privacy.json`: the canaries, which joined, and their scores. Written
/// only where `coffer train --audit-report FILE` asks (docs/FORMAT.md, "Audit report"), so that anyone can recount the
/// right guesses and recompute the bound; never part of the checkpoint.
public struct AuditRecord: Sendable {
    public var canaries: AuditCanaries
    public var scores: [Double]
    public var result: AuditResult

    public static let format = "coffer-audit-report-v1"

    /// The audit report: JSON, keys sorted.
    public func reportJSON() throws(CofferTrainingError) -> [UInt8] {
        struct Report: Encodable {
            var format = AuditRecord.format
            var method = Evidence.Audit.methodName
            var score = Evidence.Audit.scoreName
            var canaries: Int
            var inputs: Int
            var confidence: Double
            var delta: Double
            var significance: Double
            var grid: [[Int]]
            var features: [[Float]]
            var included: [Bool]
            var scores: [Double]
            var result: Evidence.Audit
        }
        let m = canaries.count
        let grid = OneRunAudit.guessGrid(canaries: m)
        let report = Report(
            canaries: m,
            inputs: canaries.inputs,
            confidence: result.confidence,
            delta: result.delta,
            significance: (1 - result.confidence) / Double(grid.count),
            grid: grid.map { [$0.kPlus, $0.kMinus] },
            features: (0..<m).map { Array(canaries.features[($0 * canaries.inputs)..<(($0 + 1) * canaries.inputs)]) },
            included: canaries.included,
            scores: scores,
            result: Evidence.Audit(result)
        )
        let encoder = Checkpoint.encoder()
        do { return Array(try encoder.encode(report)) + [0x0a] } catch { throw .invalidCheckpoint("cannot encode the audit report: \(error)") }
    }
}
