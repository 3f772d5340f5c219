import CSodium
import Foundation

/// Public feature means and standard deviations, in feature order: a recipe's `standardisation` and the file
/// `coffer fl serve --standardisation` reads (docs/FORMAT.md, "Training configuration").
public struct PublicStandardisation: Sendable, Equatable, Codable {
    public var means: [Double]
    public var standardDeviations: [Double]

    enum CodingKeys: String, CodingKey {
        case means
        case standardDeviations = "standard_deviations"
    }

    public init(means: [Double], standardDeviations: [Double]) {
        self.means = means
        self.standardDeviations = standardDeviations
    }

    /// The smallest deviation taken: the federation's statistics round gives none smaller. A zero one divides by zero,
    /// and one of 1e-300 made every standardised (Float) value infinite (helper-71).
    public static let minimumDeviation = 1e-6

    /// One finite mean and one finite deviation of at least ``minimumDeviation`` per feature.
    public func check(features: Int) throws(CofferTrainingError) {
        guard means.count == features, standardDeviations.count == features else {
            throw .invalidConfiguration("standardisation: means and standard_deviations need one value per feature (\(features))")
        }
        guard means.allSatisfy(\.isFinite), standardDeviations.allSatisfy({ $0 >= Self.minimumDeviation && $0.isFinite }) else {
            throw .invalidConfiguration("standardisation: means must be finite and standard_deviations finite and at least 1e-06")
        }
    }
}

/// Where a model's standardisation statistics came from: `privacy.json`'s `standardisation` (docs/FORMAT.md,
/// "Checkpoints").
public struct StandardisationSource: Sendable, Equatable, Codable {
    /// `dp`, `public` or `nonprivate`.
    public var method: String
    /// σ_s of the DP release; `nil` unless `dp`.
    public var noiseMultiplier: Double?
    /// Δ, the L2 bound of one row's contribution to the released sums; `nil` unless `dp`.
    public var sensitivity: Double?
    /// The grid the values, sums and noise are rounded to (2^-20); `nil` unless `dp`. A `dp` source without it was
    /// written by a release whose noise was not on a grid (not private: docs/FORMAT.md, "Checkpoints").
    public var grid: Double?

    enum CodingKeys: String, CodingKey {
        case method, sensitivity, grid
        case noiseMultiplier = "noise_multiplier"
    }

    public init(method: String, noiseMultiplier: Double? = nil, sensitivity: Double? = nil, grid: Double? = nil) {
        self.method = method
        self.noiseMultiplier = noiseMultiplier
        self.sensitivity = sensitivity
        self.grid = grid
    }

    /// The DP release as an accountant segment: one unsampled Gaussian mechanism.
    public var segment: PrivacySegment? {
        guard method == "dp", let noiseMultiplier else { return nil }
        return PrivacySegment(sampleRate: 1, noiseMultiplier: noiseMultiplier, steps: 1)
    }

    /// Every key written, `null` where there is no value.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(method, forKey: .method)
        try c.encode(noiseMultiplier, forKey: .noiseMultiplier)
        try c.encode(sensitivity, forKey: .sensitivity)
        try c.encode(grid, forKey: .grid)
    }
}

/// The feature means and standard deviations a model is trained and served with.
public enum Standardisation {
    public static let defaultNoiseMultiplier = 10.0

    /// The statistics `recipe` asks for over the training `rows`, and where they came from.
    static func statistics(
        for recipe: TrainingRecipe,
        table: CSVTable,
        rows: [Int]
    ) throws(CofferTrainingError) -> (means: [Double], deviations: [Double], source: StandardisationSource) {
        var columns: [Int] = []
        for name in recipe.features { columns.append(try table.column(name)) }
        if let given = recipe.standardisation {
            return (given.means, given.standardDeviations, StandardisationSource(method: "public"))
        }
        // The statistics are released with the model (coffer.preprocessing): under DP where they come from is a choice.
        if recipe.isPrivate, recipe.featureBounds == nil, recipe.nonprivateStatistics != true {
            throw .invalidConfiguration(
                "under DP the standardisation statistics need a source: feature_bounds (DP statistics), standardisation (public values) or nonprivate_statistics: true"
            )
        }
        if recipe.isPrivate, let featureBounds = recipe.featureBounds {
            guard rows.count < 1 << 32 else { throw .invalidData("DP standardisation statistics take fewer than 2^32 training rows") }
            // Sums plus noise stay exact below 2^33; the polar method never draws a normal beyond 12.01 (helper-69: past
            // it, rounding to even would show a sum's last grid bit).
            let sigmaOrDefault = recipe.statisticsNoiseMultiplier ?? defaultNoiseMultiplier
            guard Double(rows.count) + 13 * sigmaOrDefault * sensitivity(features: recipe.features.count) < 0x1.0p33 else {
                throw .invalidConfiguration(
                    "statistics_noise_multiplier \(sigmaOrDefault) is too large: rows + 13 sigma sqrt(2F) must stay below 2^33"
                )
            }
            let sigma = recipe.statisticsNoiseMultiplier ?? defaultNoiseMultiplier
            let (means, deviations) = differentiallyPrivate(
                table,
                columns: columns,
                rows: rows,
                bounds: try featureBounds.bounds(of: recipe.features),
                noiseMultiplier: sigma
            ) { count, std in
                var z = [Double](repeating: 0, count: count)
                GaussianNoise.normals(count) { i, x in z[i] = x * std }
                return z
            }
            // Bounds far apart (1e300) make the statistics overflow: a model would train on infinities.
            guard means.allSatisfy(\.isFinite), deviations.allSatisfy({ $0.isFinite && $0 > 0 }) else {
                throw .invalidConfiguration("feature_bounds: the DP statistics overflow with these bounds: give the features' real ranges")
            }
            return (
                means, deviations,
                StandardisationSource(method: "dp", noiseMultiplier: sigma, sensitivity: sensitivity(features: columns.count), grid: grid)
            )
        }
        let (means, deviations) = exact(table, columns: columns, rows: rows)
        return (means, deviations, StandardisationSource(method: "nonprivate"))
    }

    /// Δ for F features: one row adds `(u_1, ..., u_F, u_1², ..., u_F²)`, each entry in [-1, 1].
    static func sensitivity(features: Int) -> Double { (2 * Double(features)).squareRoot() }

    /// Exact statistics over `rows` (a constant feature's deviation is 1).
    static func exact(_ table: CSVTable, columns: [Int], rows: [Int]) -> (means: [Double], deviations: [Double]) {
        var means: [Double] = []
        var deviations: [Double] = []
        for column in columns {
            let values = rows.map { table.value(row: $0, column: column) }
            let mean = values.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            means.append(mean)
            deviations.append(variance > 0 ? variance.squareRoot() : 1)
        }
        return (means, deviations)
    }

    /// Scaled values, their squares, the sums and the noise are all multiples of 2^-20: the released sums are then the
    /// exact sums plus noise rounded to the grid, which is post-processing of the Gaussian mechanism. With Float (or any
    /// floating-point) noise added to full-precision sums instead, the low-order bits of a sum the noise does not cover
    /// told an adversary which of two neighbouring datasets it was, 40 times out of 40 (helper-68).
    static let grid = 0x1.0p-20

    /// `x` rounded to the nearest multiple of ``grid`` (halves away from zero): exact for |x| < 2^32.
    static func onGrid(_ x: Double) -> Double { (x * 0x1.0p20).rounded() * grid }

    /// The DP release of docs/FORMAT.md, "Standardisation under DP": clamped, scaled, quantised sums and sums of squares,
    /// each with N(0, (σ Δ)²) rounded to the grid; `noise(count, standardDeviation)` draws the Gaussians in Double (the
    /// CSPRNG's; tests pass fixed values). At most 2^32 rows, so that every sum is exact.
    static func differentiallyPrivate(
        _ table: CSVTable,
        columns: [Int],
        rows: [Int],
        bounds: [(low: Double, high: Double)],
        noiseMultiplier: Double,
        noise: (Int, Double) -> [Double]
    ) -> (means: [Double], deviations: [Double]) {
        precondition(rows.count < 1 << 32, "sums on the 2^-20 grid are exact for fewer than 2^32 rows")
        let features = columns.count
        var sums = [Double](repeating: 0, count: 2 * features)
        for row in rows {
            for (f, column) in columns.enumerated() {
                let (low, high) = bounds[f]
                let scaled = (min(max(table.value(row: row, column: column), low), high) - (low + high) / 2) / ((high - low) / 2)
                let u = min(max(onGrid(scaled), -1), 1)
                sums[f] += u
                sums[features + f] += onGrid(u * u)
            }
        }
        var z = noise(2 * features, noiseMultiplier * sensitivity(features: features))
        // The exact sums are what the release hides, and the noise gives them back: both wiped.
        defer {
            z.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) }
            sums.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) }
        }
        let released = sums.indices.map { sums[$0] + onGrid(z[$0]) }
        let n = Double(rows.count)
        var means: [Double] = []
        var deviations: [Double] = []
        for f in 0..<features {
            let (low, high) = bounds[f]
            let mu = min(max(released[f] / n, -1), 1)
            // Values in [-1, 1] have a variance of at most 1 - μ²; the floor keeps a deviation from vanishing.
            let variance = max(min(released[features + f] / n - mu * mu, 1 - mu * mu), 0.01)
            means.append((low + high) / 2 + (high - low) / 2 * mu)
            deviations.append((high - low) / 2 * variance.squareRoot())
        }
        return (means, deviations)
    }
}
