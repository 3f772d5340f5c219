import Foundation

/// Where a model's standardisation statistics came from: `privacy.json`'s `standardisation` (docs/FORMAT.md,
/// "Checkpoints").
public struct StandardisationSource: Sendable, Equatable, Codable {
    /// `dp`, `public` or `nonprivate`.
    public var method: String
    /// σ_s of the DP release; `nil` unless `dp`.
    public var noiseMultiplier: Double?
    /// Δ, the L2 bound of one row's contribution to the released sums; `nil` unless `dp`.
    public var sensitivity: Double?

    enum CodingKeys: String, CodingKey {
        case method, sensitivity
        case noiseMultiplier = "noise_multiplier"
    }

    public init(method: String, noiseMultiplier: Double? = nil, sensitivity: Double? = nil) {
        self.method = method
        self.noiseMultiplier = noiseMultiplier
        self.sensitivity = sensitivity
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
            let sigma = recipe.statisticsNoiseMultiplier ?? defaultNoiseMultiplier
            let mode = recipe.noiseMode ?? .standard
            let (means, deviations) = differentiallyPrivate(
                table,
                columns: columns,
                rows: rows,
                bounds: try featureBounds.bounds(of: recipe.features),
                noiseMultiplier: sigma
            ) { count, std in GaussianNoise.sample(count: count, standardDeviation: Float(std), mode: mode).map(Double.init) }
            return (means, deviations, StandardisationSource(method: "dp", noiseMultiplier: sigma, sensitivity: sensitivity(features: columns.count)))
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

    /// The DP release of docs/FORMAT.md, "Standardisation under DP": clamped, scaled sums and sums of squares, each
    /// with N(0, (σ Δ)²) from `noise(count, standardDeviation)` (the CSPRNG's Gaussian; tests pass zeros).
    static func differentiallyPrivate(
        _ table: CSVTable,
        columns: [Int],
        rows: [Int],
        bounds: [(low: Double, high: Double)],
        noiseMultiplier: Double,
        noise: (Int, Double) -> [Double]
    ) -> (means: [Double], deviations: [Double]) {
        let features = columns.count
        var sums = [Double](repeating: 0, count: 2 * features)
        for row in rows {
            for (f, column) in columns.enumerated() {
                let (low, high) = bounds[f]
                let u = (min(max(table.value(row: row, column: column), low), high) - (low + high) / 2) / ((high - low) / 2)
                sums[f] += u
                sums[features + f] += u * u
            }
        }
        let z = noise(2 * features, noiseMultiplier * sensitivity(features: features))
        let n = Double(rows.count)
        var means: [Double] = []
        var deviations: [Double] = []
        for f in 0..<features {
            let (low, high) = bounds[f]
            let mu = min(max((sums[f] + z[f]) / n, -1), 1)
            let variance = max((sums[features + f] + z[features + f]) / n - mu * mu, 0.01)
            means.append((low + high) / 2 + (high - low) / 2 * mu)
            deviations.append((high - low) / 2 * variance.squareRoot())
        }
        return (means, deviations)
    }
}
