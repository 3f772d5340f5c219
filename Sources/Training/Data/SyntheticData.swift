#if canImport(Glibc)
import Glibc
#endif

/// A synthetic multi-task dataset with learnable structure, for tests and benchmarks: features x ~ N(0, 1);
/// a class `cls` = argmax of random projections of x (`classes` classes), a binary `bin` = whether another
/// projection is positive, and a regression target `reg` = a third projection plus N(0, 0.1²) noise.
/// The same seed gives the same bytes.
public struct SyntheticData: Sendable {
    public let rows: Int
    public let features: Int
    public let classes: Int
    public let seed: UInt64

    public init(rows: Int, features: Int, classes: Int, seed: UInt64 = 0) throws(CofferTrainingError) {
        guard rows > 0 else { throw .invalidParameter("rows must be > 0, got \(rows)") }
        guard features > 0 else { throw .invalidParameter("features must be > 0, got \(features)") }
        guard classes >= 2 else { throw .invalidParameter("classes must be >= 2, got \(classes)") }
        self.rows = rows
        self.features = features
        self.classes = classes
        self.seed = seed
    }

    public var featureColumns: [String] { (0..<features).map { "x\($0)" } }

    /// The table as CSV: a header `x0,...,cls,bin,reg`, then one line per row.
    public func csv() -> String {
        var generator = SeededGenerator(seed: seed)
        func gaussian() -> Float {
            let u1 = max(Double(generator.next() >> 11) * 0x1.0p-53, .leastNonzeroMagnitude)
            let u2 = Double(generator.next() >> 11) * 0x1.0p-53
            return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
        }
        let projections = (0..<(classes + 2)).map { _ in (0..<features).map { _ in gaussian() } }
        var text = (featureColumns + ["cls", "bin", "reg"]).joined(separator: ",") + "\n"
        text.reserveCapacity(rows * features * 11)
        for _ in 0..<rows {
            let x = (0..<features).map { _ in gaussian() }
            let scores = projections.map { w in zip(w, x).reduce(0) { $0 + $1.0 * $1.1 } }
            let cls = scores[0..<classes].indices.max { scores[$0] < scores[$1] }!
            let bin = scores[classes] > 0 ? 1 : 0
            let reg = scores[classes + 1] / Float(features).squareRoot() + 0.1 * gaussian()
            text += x.map { "\($0)" }.joined(separator: ",")
            text += ",\(cls),\(bin),\(reg)\n"
        }
        return text
    }

    /// Bounds of the features for DP standardisation: they are standard normal, so ±4 holds all but 6e-5 of them, known
    /// without looking at the data.
    public var featureBounds: TrainingRecipe.FeatureBounds { .all(low: -4, high: 4) }

    /// The tasks of the table, as a training configuration names them.
    public var tasks: [TrainingRecipe.TaskSource] {
        [
            .init(name: "cls", kind: .classification, column: "cls", labels: (0..<classes).map { "c\($0)" }),
            .init(name: "bin", kind: .binary, column: "bin"),
            .init(name: "reg", kind: .regression, column: "reg"),
        ]
    }
}
