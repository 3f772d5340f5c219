import CofferTestSupport
import Testing

@testable import CofferTraining

@Suite(.ownThread)
struct RDPAccountantTests {
    /// The reference: MNIST-style DP-SGD, q = 256/60000, sigma = 1.1, 14062 steps, delta = 1e-5.
    @Test func referenceEpsilon() {
        var accountant = RDPAccountant()
        accountant.compose(PrivacySegment(sampleRate: 256.0 / 60_000, noiseMultiplier: 1.1, steps: 14_062))
        let (epsilon, order) = accountant.epsilon(delta: 1e-5)
        #expect(abs(epsilon - 2.596_555_869_794_303_6) / 2.5966 < 1e-9)  // dp_accounting 0.6.0
        #expect(order == 8.1)
    }

    @Test func defaultOrdersMatchDPAccounting() {
        let orders = RDPAccountant.defaultOrders
        #expect(orders.count == 99 + 53 + 4)
        #expect(orders.first == 1.1 && orders[98] == 10.9 && orders[99] == 11 && orders.last == 1024)
    }

    @Test func segmentsComposeBySummingRDP() {
        var split = RDPAccountant()
        split.compose(PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 300))
        split.compose(PrivacySegment(sampleRate: 0.02, noiseMultiplier: 1.0, steps: 700))
        var whole = RDPAccountant()
        whole.compose(PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 300))
        for _ in 0..<700 { whole.compose(PrivacySegment(sampleRate: 0.02, noiseMultiplier: 1.0, steps: 1)) }
        #expect(abs(split.epsilon(delta: 1e-5).epsilon - whole.epsilon(delta: 1e-5).epsilon) < 1e-9)
        #expect(split.segments == whole.segments, "consecutive steps with the same parameters extend one segment")
        #expect(split.segments.count == 2)
    }

    @Test func edgeCases() {
        var none = RDPAccountant()
        #expect(none.epsilon(delta: 1e-5).epsilon == 0)
        none.compose(PrivacySegment(sampleRate: 1, noiseMultiplier: 1, steps: 1))
        #expect(none.epsilon(delta: 0).epsilon == .infinity)
        #expect(RDPAccountant.logErfc(40) < -1600)  // erfc underflows here; the series takes over
        #expect(RDPAccountant.logErfc(40).isFinite)
    }

    @Test func calibrationFindsTheSmallestSigma() throws {
        let q = 256.0 / 60_000
        let sigma = try RDPAccountant.calibrateNoise(targetEpsilon: 2.5966, sampleRate: q, steps: 14_062, delta: 1e-5)
        #expect(abs(sigma - 1.1) < 1e-4)
        var at = RDPAccountant()
        at.compose(PrivacySegment(sampleRate: q, noiseMultiplier: sigma, steps: 14_062))
        #expect(at.epsilon(delta: 1e-5).epsilon <= 2.5966)
        var below = RDPAccountant()
        below.compose(PrivacySegment(sampleRate: q, noiseMultiplier: sigma * (1 - 1e-5), steps: 14_062))
        #expect(below.epsilon(delta: 1e-5).epsilon > 2.5966)
    }

    @Test func invalidParametersNameTheField() {
        #expect(throws: CofferTrainingError.invalidParameter("sample rate must be in (0, 1], got 1.5")) {
            _ = try RDPAccountant.calibrateNoise(targetEpsilon: 1, sampleRate: 1.5, steps: 10, delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.invalidParameter("noise multiplier must be > 0 with DP on, got 0.0")) {
            try PrivacyParameters.validate(sampleRate: 0.1, noiseMultiplier: 0, steps: 10, delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.invalidParameter("target epsilon must be > 0, got -1.0")) {
            _ = try RDPAccountant.calibrateNoise(targetEpsilon: -1, sampleRate: 0.1, steps: 10, delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.self) {
            _ = try RDPAccountant.calibrateNoise(targetEpsilon: 1e-6, sampleRate: 1, steps: 100_000, delta: 1e-5)
        }
    }
}
