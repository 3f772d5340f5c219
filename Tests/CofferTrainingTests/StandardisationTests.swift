import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The standardisation statistics a model is released with: under DP from public values or a DP release whose cost is
/// in epsilon (helper-67 found them released exactly, outside the guarantee).
@Suite(.ownThread)
struct StandardisationTests {
    /// Two features: x0 = i mod 10 - 4.5 (within [-8, 8]), x1 = i mod 4 (within [0, 4]). Scaled, both are multiples of
    /// 1/16, on the release's grid: the sums are exactly the data's.
    static func table(rows: Int, extra: [[Double]] = []) throws -> CSVTable {
        try CSVTable(columns: ["x0", "x1"], rows: (0..<rows).map { [Double($0 % 10) - 4.5, Double($0 % 4)] } + extra, source: "test")
    }

    static let bounds: [(low: Double, high: Double)] = [(-8, 8), (0, 4)]

    static func zeros(_ count: Int, _ std: Double) -> [Double] { [Double](repeating: 0, count: count) }

    @Test func withoutNoiseTheReleaseIsTheExactStatisticsOfValuesWithinTheBounds() throws {
        let table = try Self.table(rows: 200)
        let rows = Array(0..<200)
        let exact = Standardisation.exact(table, columns: [0, 1], rows: rows)
        let released = Standardisation.differentiallyPrivate(
            table,
            columns: [0, 1],
            rows: rows,
            bounds: Self.bounds,
            noiseMultiplier: 10,
            noise: Self.zeros
        )
        for f in 0..<2 {
            #expect(abs(released.means[f] - exact.means[f]) < 1e-12)
            #expect(abs(released.deviations[f] - exact.deviations[f]) < 1e-12)
        }
    }

    @Test func oneRowFarOutsideTheBoundsMovesTheStatisticsNoMoreThanTheBoundsAllow() throws {
        let rows = Array(0..<201)
        let within = Standardisation.differentiallyPrivate(
            try Self.table(rows: 200, extra: [[0, 2]]),
            columns: [0, 1],
            rows: rows,
            bounds: Self.bounds,
            noiseMultiplier: 10,
            noise: Self.zeros
        )
        let outlier = Standardisation.differentiallyPrivate(
            try Self.table(rows: 200, extra: [[1e12, -1e12]]),
            columns: [0, 1],
            rows: rows,
            bounds: Self.bounds,
            noiseMultiplier: 10,
            noise: Self.zeros
        )
        // Clamped to 8 and 0: the mean moves by (8 - 0) / 201 and (2 - 0) / 201, not by 1e12 / 201.
        #expect(abs((outlier.means[0] - within.means[0]) - 8.0 / 201) < 1e-12)
        #expect(abs((outlier.means[1] - within.means[1]) + 2.0 / 201) < 1e-12)
        let exact = Standardisation.exact(try Self.table(rows: 200, extra: [[1e12, -1e12]]), columns: [0, 1], rows: rows)
        #expect(exact.means[0] > 1e9, "the exact mean shows the outlier")
    }

    @Test func theNoiseOnAMeanHasTheStandardDeviationTheSensitivityGives() throws {
        // σ_s Δ / n in units of the half-range: 10 · sqrt(4) / 400 = 0.05; over 400 releases the sample deviation is
        // within 15% of it (4.2 standard errors). Without Δ the spread would be half that, without σ a tenth.
        let table = try Self.table(rows: 400)
        let rows = Array(0..<400)
        let exact = Standardisation.exact(table, columns: [0, 1], rows: rows)
        var errors: [Double] = []
        for _ in 0..<400 {
            let released = Standardisation.differentiallyPrivate(table, columns: [0, 1], rows: rows, bounds: Self.bounds, noiseMultiplier: 10) {
                count,
                std in
                var z = [Double](repeating: 0, count: count)
                GaussianNoise.normals(count) { i, x in z[i] = x * std }
                return z
            }
            errors.append((released.means[0] - exact.means[0]) / 8)
        }
        let mean = errors.reduce(0, +) / Double(errors.count)
        let deviation = (errors.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(errors.count - 1)).squareRoot()
        #expect(abs(deviation - 0.05) < 0.05 * 0.15, "sample deviation \(deviation)")
        #expect(abs(mean) < 4 * 0.05 / 20, "mean error \(mean)")
    }

    @Test func eachSumGetsItsOwnNoiseOnTheGridAndTheStatisticsFollowTheFormula() throws {
        // Fixed noise: S0 + 3.3 (off the grid: rounded to it), S1 + 1e9 (the mean clamped to the upper bound), Q0 - 7
        // and Q1 - 1000 (the variance capped at 1 - μ², then floored).
        let table = try Self.table(rows: 200)
        let rows = Array(0..<200)
        let noise = [3.3, 1e9, -7, -1000]
        let released = Standardisation.differentiallyPrivate(table, columns: [0, 1], rows: rows, bounds: Self.bounds, noiseMultiplier: 10) {
            count,
            _ in
            #expect(count == 4)
            return noise
        }
        var sums = [0.0, 0, 0, 0]
        for row in rows {
            for f in 0..<2 {
                let (low, high) = Self.bounds[f]
                let u = (table.value(row: row, column: f) - (low + high) / 2) / ((high - low) / 2)
                sums[f] += u
                sums[2 + f] += u * u
            }
        }
        let grid = 0x1.0p-20
        let noised = (0..<4).map { sums[$0] + (noise[$0] / grid).rounded() * grid }
        #expect(noised[0] != sums[0] + 3.3, "3.3 is not on the grid")
        for f in 0..<2 {
            let (low, high) = Self.bounds[f]
            let mu = min(max(noised[f] / 200, -1), 1)
            let variance = max(min(noised[2 + f] / 200 - mu * mu, 1 - mu * mu), 0.01)
            #expect(released.means[f] == (low + high) / 2 + (high - low) / 2 * mu)
            #expect(released.deviations[f] == (high - low) / 2 * variance.squareRoot())
        }
        #expect(released.means[1] == 4, "clamped")
        #expect(released.deviations[1] == 2 * 0.1, "floored: 1 - μ² is 0")
    }

    @Test func theReleasedLowOrderBitsDoNotTellNeighbouringDatasetsApart() throws {
        // helper-68's attack on Float noise added to full-precision sums: n - 1 rows known, the last one x or x'. From a
        // released mean the attacker recovers S + Z and asks, for each candidate, whether the rest is a Float, as the
        // noise was: 40 of 40 right before. Now every sum and the noise are on one grid and both candidates fit alike.
        var generator = SeededGenerator(seed: 7)
        func value() -> Double { (Double(generator.next() >> 11) * 0x1.0p-53 - 0.5) * 6 }
        let known = (0..<999).map { _ in (0..<4).map { _ in value() } }
        let candidates = [(0..<4).map { _ in value() }, (0..<4).map { _ in value() }]
        let recipe = try EvidenceSupport.recipe(rows: 1000)
        let tables = try candidates.map { try CSVTable(columns: recipe.features, rows: known + [$0], source: "attack") }
        // The attacker knows the algorithm: each candidate's sums, scaled as the release scales them, raw and on the grid.
        func sums(_ table: CSVTable, _ round: (Double) -> Double) -> [Double] {
            (0..<4).map { f in (0..<1000).reduce(0.0) { $0 + round(min(max(table.value(row: $1, column: f), -4), 4) / 4) } }
        }
        let exact = tables.map { table in [sums(table, { $0 }), sums(table, Standardisation.onGrid)] }
        func onFloatLattice(_ r: Double) -> Bool { abs(r - Double(Float(r))) < 1e-9 }
        var right = 0
        for trial in 0..<40 {
            let released = try Standardisation.statistics(for: recipe, table: tables[trial % 2], rows: Array(0..<1000))
            let noised = released.means.map { $0 / 4 * 1000 }
            let fits = exact.map { variants in variants.contains { s in (0..<4).allSatisfy { onFloatLattice(noised[$0] - s[$0]) } } }
            if fits[trial % 2] && !fits[1 - trial % 2] { right += 1 }
        }
        // At epsilon 0.34 for this release alone, no test is right more than 58% of the time (plus delta); random
        // guessing decides in about 1 trial of 2^8 here.
        #expect(right <= 30, "the attacker told the datasets apart \(right) times of 40")
    }

    @Test func rdpCalibrationCountsTheReleaseBeforeIt() throws {
        // The fallback where PLD cannot be computed: the σ it finds keeps the composition at the target.
        let released = [PrivacySegment(sampleRate: 1, noiseMultiplier: 10, steps: 1)]
        let sigma = try RDPAccountant.calibrateNoise(targetEpsilon: 2, sampleRate: 0.01, steps: 1000, delta: 1e-5, after: released)
        func epsilon(_ sigma: Double) -> Double {
            var rdp = RDPAccountant()
            for segment in released + [PrivacySegment(sampleRate: 0.01, noiseMultiplier: sigma, steps: 1000)] { rdp.compose(segment) }
            return rdp.epsilon(delta: 1e-5).epsilon
        }
        #expect(epsilon(sigma) <= 2 && epsilon(sigma * 0.999) > 2)
        #expect(sigma > (try RDPAccountant.calibrateNoise(targetEpsilon: 2, sampleRate: 0.01, steps: 1000, delta: 1e-5)))
    }

    @Test func theDPReleaseIsAccountedAndCalibratedWith() throws {
        let recipe = try EvidenceSupport.recipe(rows: 5000) {
            $0.noiseMultiplier = nil
            $0.targetEpsilon = 4
            $0.epochs = 1
        }
        var lastProgress: Double? = nil
        let trained = try TrainingRun.run(recipe) { lastProgress = $0.epsilon }
        let privacy = trained.privacy
        #expect(privacy.standardisation == StandardisationSource(method: "dp", noiseMultiplier: 10, sensitivity: 8.0.squareRoot(), grid: 0x1.0p-20))
        #expect(privacy.batchSampling == "secret")
        #expect(privacy.segments.count == 2)
        #expect(privacy.segments.first == PrivacySegment(sampleRate: 1, noiseMultiplier: 10, steps: 1))
        // The reported epsilon is the composition's, within the calibration's window below the target.
        let composed = try PLDAccountant().epsilon(segments: privacy.segments, delta: 1e-5)
        let alone = try PLDAccountant().epsilon(segments: [privacy.segments[1]], delta: 1e-5)
        #expect(abs(privacy.epsilonPLD! - composed) < 1e-9 * composed)
        #expect(privacy.epsilon! <= 4 && privacy.epsilon! >= 4 * 0.995, "epsilon \(privacy.epsilon!)")
        #expect(alone < composed - 0.01, "the statistics cost something: \(alone) vs \(composed)")
        var rdp = RDPAccountant()
        for segment in privacy.segments { rdp.compose(segment) }
        #expect(abs(privacy.epsilonRDP! - rdp.epsilon(delta: 1e-5).epsilon) < 1e-12)
        #expect(lastProgress == privacy.epsilonRDP, "the progress shown counts the statistics too")
        // The released statistics are near the data's (N(0, 1) features): the noise on a mean is 10 · sqrt(8) / 4000 · 4
        // = 0.028, on a variance 0.11 (ten and four of those standard deviations allowed).
        #expect(trained.preprocessing.means.allSatisfy { abs($0) < 0.3 }, "\(trained.preprocessing.means)")
        #expect(trained.preprocessing.standardDeviations.allSatisfy { $0 > 0.6 && $0 < 1.4 }, "\(trained.preprocessing.standardDeviations)")
    }

    /// A target the release alone spends says so, with the release's own epsilon, whichever accountant calibrates.
    @Test func aTargetBelowTheReleasesCostNamesIt() throws {
        let recipe = try EvidenceSupport.recipe(rows: 500) {
            $0.noiseMultiplier = nil
            $0.targetEpsilon = 0.2
            $0.epochs = 1
        }
        let release = PrivacySegment(sampleRate: 1, noiseMultiplier: 10, steps: 1)
        let alone = try PLDAccountant().epsilon(segments: [release], delta: 1e-5)
        #expect(alone > 0.2 && alone < 0.5, "the default release costs \(alone)")
        do {
            _ = try TrainingRun.run(recipe)
            Issue.record("a target below the release's cost trained")
        } catch {
            guard case .unreachableEpsilon(let why) = error else { throw error }
            #expect(
                why.hasSuffix(
                    String(format: " (the standardisation statistics' release alone is epsilon %.3f: raise statistics_noise_multiplier)", alone)
                ),
                "\(why)"
            )
        }
    }

    @Test func publicValuesAreUsedAsGivenAndExactStatisticsAreSaidToBeNonPrivate() throws {
        let given = PublicStandardisation(means: [0.5, -0.5, 0, 1], standardDeviations: [2, 2, 1, 3])
        let publicRun = try TrainingRun.run(
            try EvidenceSupport.recipe(rows: 200) {
                $0.featureBounds = nil
                $0.standardisation = given
                $0.epochs = 1
            }
        )
        #expect(publicRun.preprocessing.means == given.means && publicRun.preprocessing.standardDeviations == given.standardDeviations)
        #expect(publicRun.privacy.standardisation == StandardisationSource(method: "public"))
        #expect(publicRun.privacy.segments.count == 1)

        let recipe = try EvidenceSupport.recipe(rows: 200) {
            $0.featureBounds = nil
            $0.nonprivateStatistics = true
            $0.epochs = 1
        }
        let exactRun = try TrainingRun.run(recipe)
        let table = try CSVTable(contentsOf: recipe.data)
        let exact = Standardisation.exact(table, columns: [0, 1, 2, 3], rows: TrainingRun.split(recipe, rowCount: table.rowCount).training)
        #expect(exactRun.preprocessing.means == exact.means)
        #expect(exactRun.privacy.standardisation == StandardisationSource(method: "nonprivate"))
        let encoded = try JSONSerialization.jsonObject(with: JSONEncoder().encode(exactRun.privacy)) as? [String: Any]
        #expect((encoded?["standardisation"] as? [String: Any])?.keys.sorted() == ["grid", "method", "noise_multiplier", "sensitivity"])
    }
}

extension StandardisationTests {
    /// helper-71: check took any deviation above 0, and features are standardised into Float: a deviation of 1e-300 made
    /// every standardised value infinite. The floor is the federation's statistics round's.
    @Test func aDeviationBelowTheFloorIsRefused() throws {
        for deviation in [1e-300, 1e-40, 0.9e-6, 0, -1, .infinity, .nan] {
            #expect(
                throws: CofferTrainingError.invalidConfiguration(
                    "standardisation: means must be finite and standard_deviations finite and at least 1e-06"
                )
            ) { try PublicStandardisation(means: [0], standardDeviations: [deviation]).check(features: 1) }
        }
        let floor = PublicStandardisation(means: [0], standardDeviations: [PublicStandardisation.minimumDeviation])
        try floor.check(features: 1)
        let table = try CSVTable(columns: ["x"], rows: [[1], [-3e30]], source: "rows")
        let standardised = try Preprocessing(features: ["x"], means: floor.means, standardDeviations: floor.standardDeviations, tasks: [])
            .features(of: table)
        #expect(standardised.allSatisfy { $0.isFinite }, "\(standardised)")
    }
}
