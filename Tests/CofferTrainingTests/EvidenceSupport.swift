import Foundation

@testable import CofferTraining

/// Small recipes on synthetic data written to a temporary directory, for the evidence tests.
enum EvidenceSupport {
    /// A recipe over `rows` rows of ``SyntheticData`` (4 features, 3 classes, tasks cls/bin/reg), trunk [16], three
    /// epochs at q = 32 / training rows, σ = 1; `edit` changes it before it is validated. With `labelNoise`, that
    /// fraction of the class labels is redrawn at random, so that only memorising gets them right.
    static func recipe(
        rows: Int = 400,
        seed: UInt64 = 1,
        labelNoise: Double = 0,
        _ edit: (inout TrainingRecipe) -> Void = { _ in }
    ) throws -> TrainingRecipe {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-evidence-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let data = try SyntheticData(rows: rows, features: 4, classes: 3, seed: seed)
        var lines = data.csv().split(separator: "\n").map(String.init)
        var generator = SeededGenerator(seed: seed ^ 0x4E01_5E)
        for i in 1..<lines.count where Double(generator.next() >> 11) * 0x1.0p-53 < labelNoise {
            var cells = lines[i].split(separator: ",").map(String.init)
            cells[4] = String(generator.next() % 3)
            lines[i] = cells.joined(separator: ",")
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: directory.appendingPathComponent("data.csv"))
        let tasks = try JSONSerialization.jsonObject(with: JSONEncoder().encode(data.tasks))
        let json: [String: Any] = [
            "data": "data.csv", "features": data.featureColumns, "tasks": tasks, "trunk": [16], "epochs": 3, "learning_rate": 0.1,
            "expected_batch_size": 32, "noise_multiplier": 1.0, "delta": 1e-5, "seed": seed, "feature_bounds": [-4, 4],
        ]
        let path = directory.appendingPathComponent("recipe.json").path
        var recipe = try TrainingRecipe(json: Array(try JSONSerialization.data(withJSONObject: json)), path: path)
        edit(&recipe)
        try recipe.validate()
        return recipe
    }
}
