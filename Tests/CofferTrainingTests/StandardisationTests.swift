import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The standardisation statistics a model is released with: under DP from public values or a DP release whose cost is
/// in epsilon (helper-67 found them released exactly, outside the guarantee).
@Suite(.ownThread)
struct StandardisationTests {
    /// Two features: x0 = i mod 10 - 4.5 (within [-5, 5]), x1 = i mod 4 (within [0, 4]).
    static func table(rows: Int, extra: [[Double]] = []) throws -> CSVTable {
        try CSVTable(columns: ["x0", "x1"], rows: (0..<rows).map { [Double($0 % 10) - 4.5, Double($0 % 4)] } + extra, source: "test")
    }

    static let bounds: [(low: Double, high: Double)] = [(-5, 5), (0, 4)]

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
        // Clamped to 5 and 0: the mean moves by (5 - 0) / 201 and (2 - 0) / 201, not by 1e12 / 201.
        #expect(abs((outlier.means[0] - within.means[0]) - 5.0 / 201) < 1e-12)
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
                std in GaussianNoise.sample(count: count, standardDeviation: Float(std)).map(Double.init)
            }
            errors.append((released.means[0] - exact.means[0]) / 5)
        }
        let mean = errors.reduce(0, +) / Double(errors.count)
        let deviation = (errors.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(errors.count - 1)).squareRoot()
        #expect(abs(deviation - 0.05) < 0.05 * 0.15, "sample deviation \(deviation)")
        #expect(abs(mean) < 4 * 0.05 / 20, "mean error \(mean)")
    }

    @Test func theDPReleaseIsAccountedAndCalibratedWith() throws {
        let recipe = try EvidenceSupport.recipe(rows: 5000) {
            $0.noiseMultiplier = nil
            $0.targetEpsilon = 4
            $0.epochs = 1
        }
        let trained = try TrainingRun.run(recipe)
        let privacy = trained.privacy
        #expect(privacy.standardisation == StandardisationSource(method: "dp", noiseMultiplier: 10, sensitivity: 8.0.squareRoot()))
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
        // The released statistics are near the data's (N(0, 1) features): the noise on a mean is 10 · sqrt(8) / 4000 · 4
        // = 0.028, on a variance 0.11 (ten and four of those standard deviations allowed).
        #expect(trained.preprocessing.means.allSatisfy { abs($0) < 0.3 }, "\(trained.preprocessing.means)")
        #expect(trained.preprocessing.standardDeviations.allSatisfy { $0 > 0.6 && $0 < 1.4 }, "\(trained.preprocessing.standardDeviations)")
    }

    @Test func publicValuesAreUsedAsGivenAndExactStatisticsAreSaidToBeNonPrivate() throws {
        let given = TrainingRecipe.PublicStandardisation(means: [0.5, -0.5, 0, 1], standardDeviations: [2, 2, 1, 3])
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
        #expect((encoded?["standardisation"] as? [String: Any])?.keys.sorted() == ["method", "noise_multiplier", "sensitivity"])
    }
}
