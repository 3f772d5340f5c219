import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

@Suite(.ownThread) struct PLDAccountantTests {
    static let reference = PrivacySegment(sampleRate: 256.0 / 60_000, noiseMultiplier: 1.1, steps: 14_062)

    @Test func referenceIsTighterThanRDPAndMatchesDPAccounting() throws {
        let pld = try PLDAccountant().epsilon(segments: [Self.reference], delta: 1e-5)
        // dp_accounting 0.6.0's PLDAccountant gives 2.381686002 for these parameters.
        #expect(pld >= 2.381686002 && pld <= 2.381686002 * (1 + 2e-4), "\(pld)")
        var rdp = RDPAccountant()
        rdp.compose(Self.reference)
        #expect(pld < rdp.epsilon(delta: 1e-5).epsilon)
    }

    @Test func splittingASegmentComposesToTheSameEpsilon() throws {
        let whole = try PLDAccountant().epsilon(segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 1000)], delta: 1e-5)
        let split = try PLDAccountant().epsilon(
            segments: [
                PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 300),
                PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 700),
            ],
            delta: 1e-5
        )
        #expect(abs(split - whole) <= 1e-3 * whole, "\(split) vs \(whole)")
    }

    @Test func moreStepsOrLessNoiseSpendMore() throws {
        let accountant = PLDAccountant()
        func epsilon(_ sigma: Double, _ steps: Int) throws -> Double {
            try accountant.epsilon(segments: [PrivacySegment(sampleRate: 0.02, noiseMultiplier: sigma, steps: steps)], delta: 1e-5)
        }
        #expect(try epsilon(1.0, 200) < epsilon(1.0, 400))
        #expect(try epsilon(2.0, 200) < epsilon(1.0, 200))
        #expect(try accountant.epsilon(segments: [], delta: 1e-5) == 0)
        #expect(try epsilon(1.0, 0) == 0)
    }

    @Test func fullBatchGaussianMatchesTheAnalyticCurve() throws {
        // q = 1: the Gaussian mechanism, whose exact delta(eps) is known (Balle and Wang 2018); at sigma = 1,
        // eps = 3.5 gives delta = Φ(1/2 - 3.5) - e^3.5 Φ(-1/2 - 3.5).
        let exactDelta = Normal.cdf(0.5 - 3.5) - exp(3.5) * Normal.cdf(-0.5 - 3.5)
        let epsilon = try PLDAccountant().epsilon(segments: [PrivacySegment(sampleRate: 1, noiseMultiplier: 1, steps: 1)], delta: exactDelta)
        #expect(epsilon >= 3.5 && epsilon < 3.5 * (1 + PLDAccountant.safetyMargin) + 2e-4, "\(epsilon)")
    }

    @Test func refusesBadParametersAndOversizedGrids() {
        #expect(throws: CofferTrainingError.self) {
            try PLDAccountant().epsilon(segments: [PrivacySegment(sampleRate: 0, noiseMultiplier: 1, steps: 1)], delta: 1e-5)
        }
        #expect(throws: CofferTrainingError.self) {
            try PLDAccountant().epsilon(segments: [PrivacySegment(sampleRate: 0.1, noiseMultiplier: 1, steps: 10)], delta: 1)
        }
        let small = PLDAccountant(maximumGridPoints: 1 << 12)
        #expect(throws: CofferTrainingError.self) {
            try small.epsilon(segments: [PrivacySegment(sampleRate: 0.1, noiseMultiplier: 1, steps: 1000)], delta: 1e-5)
        }
    }

    @Test func fftConvolutionMatchesTheDirectSum() {
        let a = (0..<100).map { Double(($0 * 37) % 11) }
        let b = (0..<90).map { Double(($0 * 13) % 7) }
        let fft = FFT(count: 256)
        var re1 = a + [Double](repeating: 0, count: 156)
        var im1 = [Double](repeating: 0, count: 256)
        var re2 = b + [Double](repeating: 0, count: 166)
        var im2 = [Double](repeating: 0, count: 256)
        fft.transform(real: &re1, imaginary: &im1)
        fft.transform(real: &re2, imaginary: &im2)
        for i in 0..<256 {
            let r = re1[i] * re2[i] - im1[i] * im2[i]
            im1[i] = re1[i] * im2[i] + im1[i] * re2[i]
            re1[i] = r
        }
        fft.transform(real: &re1, imaginary: &im1, inverse: true)
        for k in 0..<(a.count + b.count - 1) {
            var direct = 0.0
            for i in max(0, k - b.count + 1)...min(k, a.count - 1) { direct += a[i] * b[k - i] }
            #expect(abs(re1[k] - direct) < 1e-9, "index \(k)")
        }
    }
}

/// `target_epsilon` is calibrated against PLD, the accountant whose ε a version reports.
@Suite(.ownThread)
struct PLDCalibrationTests {
    @Test func theReportedEpsilonIsWithinOnePercentBelowTheTarget() throws {
        let (q, steps, delta) = (0.1, 50, 1e-5)
        // A coarser grid than the default 1e-4: the same search, a tenth of the time of a debug build (~15 s).
        let accountant = PLDAccountant(discretization: 1e-3)
        let calibrated = try #require(try accountant.calibrateNoise(targetEpsilon: 2, sampleRate: q, steps: steps, delta: delta))
        #expect(calibrated.epsilon <= 2 && calibrated.epsilon >= 0.99 * 2, "\(calibrated)")
        let recomputed = try accountant.epsilon(
            segments: [PrivacySegment(sampleRate: q, noiseMultiplier: calibrated.noiseMultiplier, steps: steps)],
            delta: delta
        )
        #expect(recomputed == calibrated.epsilon)
        // Less noise than RDP's calibration needs: the budget it left unspent is now spent on utility.
        let rdpSigma = try RDPAccountant.calibrateNoise(targetEpsilon: 2, sampleRate: q, steps: steps, delta: delta)
        #expect(calibrated.noiseMultiplier < rdpSigma)
        var rdp = RDPAccountant()
        rdp.compose(PrivacySegment(sampleRate: q, noiseMultiplier: calibrated.noiseMultiplier, steps: steps))
        #expect(rdp.epsilon(delta: delta).epsilon > 2, "RDP, the cross-check, is looser at the PLD-calibrated sigma")
    }
}
