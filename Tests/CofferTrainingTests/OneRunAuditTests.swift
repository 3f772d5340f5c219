import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The one-run audit's estimator on cases whose answers are known.
@Suite(.ownThread)
struct OneRunAuditTests {
    static func logistic(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

    @Test func pValueIsTheBinomialTailInClosedFormCases() {
        // Every guess right, no δ: P[Binomial(r, q) >= r] = q^r.
        let p = OneRunAudit.pValue(canaries: 100, guesses: 10, correct: 10, epsilon: 1, delta: 0)
        #expect(abs(p - pow(Self.logistic(1), 10)) <= 1e-14)
        // ε = 0 is a fair coin: P[Binomial(4, 1/2) >= 3] = 5/16.
        #expect(abs(OneRunAudit.pValue(canaries: 4, guesses: 4, correct: 3, epsilon: 0, delta: 0) - 5.0 / 16) <= 1e-14)
        #expect(OneRunAudit.pValue(canaries: 10, guesses: 5, correct: 0, epsilon: 3, delta: 0.1) == 1)
        // With δ, r = v = 2 at ε = 0: β = 1/4; α = max(P[B = 1] / 1, P[0 <= B <= 1] / 2) = max(1/2, 3/8); + α δ 2m.
        #expect(abs(OneRunAudit.pValue(canaries: 10, guesses: 2, correct: 2, epsilon: 0, delta: 0.01) - (0.25 + 0.5 * 0.01 * 20)) <= 1e-14)
        // And capped at 1.
        #expect(OneRunAudit.pValue(canaries: 1000, guesses: 2, correct: 2, epsilon: 0, delta: 0.01) == 1)
    }

    @Test func theBoundIsWhereThePValueCrossesTheSignificance() {
        let (m, r, v, delta, significance) = (1000, 200, 170, 1e-5, 0.05)
        let bound = OneRunAudit.epsilonLowerBound(canaries: m, guesses: r, correct: v, significance: significance, delta: delta)
        #expect(bound > 1)
        #expect(OneRunAudit.pValue(canaries: m, guesses: r, correct: v, epsilon: bound, delta: delta) < significance)
        #expect(OneRunAudit.pValue(canaries: m, guesses: r, correct: v, epsilon: bound + 2e-6, delta: delta) >= significance)
        // More right guesses prove more; a δ term and a stricter significance prove less.
        #expect(OneRunAudit.epsilonLowerBound(canaries: m, guesses: r, correct: v + 10, significance: significance, delta: delta) > bound)
        #expect(OneRunAudit.epsilonLowerBound(canaries: m, guesses: r, correct: v, significance: significance, delta: 1e-3) < bound)
        #expect(OneRunAudit.epsilonLowerBound(canaries: m, guesses: r, correct: v, significance: 0.005, delta: delta) < bound)
        // Half right or fewer proves nothing.
        #expect(OneRunAudit.epsilonLowerBound(canaries: m, guesses: r, correct: 100, significance: significance, delta: delta) == 0)
    }

    /// Randomized response is exactly ε-DP for each canary's bit: the output shows the bit with probability e^ε/(1+e^ε).
    /// The audit's bound approaches ε with many canaries and exceeds it in at most 5% of runs (here: fixed seeds, none).
    @Test(arguments: [0.5, 1.0, 2.0])
    func randomizedResponseBoundApproachesButDoesNotPassEpsilon(epsilon: Double) throws {
        let m = 2000
        var bounds: [Double] = []
        for seed in UInt64(1)...10 {
            var generator = SeededGenerator(seed: seed)
            let included = (0..<m).map { _ in generator.next() & 1 == 1 }
            let keep = Self.logistic(epsilon)
            let scores = included.map { bit -> Double in
                let truthful = Double(generator.next() >> 11) * 0x1.0p-53 < keep
                return (bit == truthful) ? 1 : 0
            }
            bounds.append(try OneRunAudit.audit(scores: scores, included: included, delta: 0).epsilonLowerBound)
        }
        let mean = bounds.reduce(0, +) / Double(bounds.count)
        #expect(bounds.allSatisfy { $0 <= epsilon }, "bound above the mechanism's epsilon \(epsilon): \(bounds)")
        #expect(mean >= 0.7 * epsilon, "2000 canaries should come close to \(epsilon): \(bounds)")
    }

    /// The δ term only lowers the bound, and with `2 m δ` near the significance it wipes it out.
    @Test func theDeltaTermLowersTheBound() throws {
        let m = 2000
        var generator = SeededGenerator(seed: 9)
        let included = (0..<m).map { _ in generator.next() & 1 == 1 }
        let scores = included.map { bit -> Double in
            let truthful = Double(generator.next() >> 11) * 0x1.0p-53 < Self.logistic(1)
            return (bit == truthful) ? 1 : 0
        }
        let pure = try OneRunAudit.audit(scores: scores, included: included, delta: 0).epsilonLowerBound
        let approximate = try OneRunAudit.audit(scores: scores, included: included, delta: 1e-5).epsilonLowerBound
        #expect(approximate < pure && pure <= 1)
        #expect(approximate > 0.8 * pure)
        #expect(throws: CofferTrainingError.self) { try OneRunAudit.audit(scores: scores, included: included, delta: 1e-3) }
        do {
            try OneRunAudit.requireEnoughCanaries(m, delta: 0.01)
        } catch {
            #expect(error.description.hasPrefix("invalid parameter: delta 0.01 is too large for a one-run audit"))
        }
    }

    @Test func perfectGuessesReachTheLargestProvableEpsilon() throws {
        let m = 500
        var generator = SeededGenerator(seed: 3)
        // Exactly half included, so that the widest guess set (250 each way) can be all right.
        let included = ((0..<m).map { $0 < m / 2 }).shuffled(using: &generator)
        let result = try OneRunAudit.audit(scores: included.map { $0 ? 1 : 0 }, included: included, delta: 1e-5)
        #expect(result.correct == result.guesses)
        #expect(result.epsilonLowerBound == OneRunAudit.largestProvableEpsilon(canaries: m, delta: 1e-5))
        #expect(result.hypotheses == 8)
        #expect(result.kPlus + result.kMinus <= m)
    }

    @Test func theGuessGridDependsOnlyOnTheCanaryCount() {
        #expect(OneRunAudit.guessGrid(canaries: 1000).map(\.kPlus) == [10, 20, 50, 100, 200, 300, 400, 500])
        #expect(OneRunAudit.guessGrid(canaries: 30).map(\.kPlus) == [1, 3, 6, 9, 12, 15])
        #expect(OneRunAudit.guessGrid(canaries: 1001).allSatisfy { $0.kPlus + $0.kMinus <= 1001 })
    }

    @Test func tooFewCanariesAreRefusedNamingTheMinimum() throws {
        let minimum = try #require(OneRunAudit.minimumCanaries(delta: 1e-5))
        #expect(OneRunAudit.largestProvableEpsilon(canaries: minimum, delta: 1e-5) >= 1)
        #expect(OneRunAudit.largestProvableEpsilon(canaries: minimum - 1, delta: 1e-5) < 1)
        #expect(throws: CofferTrainingError.self) { try OneRunAudit.requireEnoughCanaries(minimum - 1, delta: 1e-5) }
        do {
            try OneRunAudit.requireEnoughCanaries(minimum - 1, delta: 1e-5)
        } catch {
            #expect(error.description.contains("too few for a meaningful bound"))
            #expect(error.description.contains("use at least \(minimum)"))
        }
        try OneRunAudit.requireEnoughCanaries(minimum, delta: 1e-5)
    }

    @Test func badInputIsRefusedWithOneLine() {
        #expect(throws: CofferTrainingError.invalidParameter("3 canary scores but 2 inclusion bits")) {
            _ = try OneRunAudit.audit(scores: [1, 2, 3], included: [true, false], delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.invalidParameter("correct guesses must be in 0...10 (the guesses), got 11")) {
            try OneRunAudit.validate(canaries: 20, guesses: 10, correct: 11, delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.invalidParameter("guesses must be in 0...20 (the canaries), got 21")) {
            try OneRunAudit.validate(canaries: 20, guesses: 21, correct: 1, delta: 1e-5)
        }
    }
}
