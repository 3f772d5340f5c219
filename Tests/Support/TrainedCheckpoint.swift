import CofferCrypto
public import CofferTraining
import Foundation

/// A small model trained with DP-SGD on synthetic data (300 rows, 3 features, one 8-unit layer), for tests that push a
/// real checkpoint: trained once per test process, on a thread of its own.
///
/// Every server and client fixture trained its own, on the cooperative pool: the PLD accountant alone took 1-3 s in a
/// debug build, about 50 times a run, while the pool's two threads were what the servers under test ran on.
public enum TrainedCheckpoint {
    private static let safetensors = Task { try await Offload.run { () throws -> Data in Data(try Checkpoint.encode(try train())) } }

    /// Writes the checkpoint to `directory/model.safetensors` (making the directory) and returns `directory`.
    public static func write(into directory: String) async throws -> String {
        let bytes = try await safetensors.value
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try bytes.write(to: URL(fileURLWithPath: directory).appendingPathComponent("model.safetensors"))
        return directory
    }

    /// Trains the model, with `trunk` for its hidden layers' widths.
    public static func train(trunk: [Int] = [8]) throws -> TrainedModel {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-checkpoint-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let data = try SyntheticData(rows: 300, features: 3, classes: 3, seed: 4)
        try data.csv().write(to: folder.appendingPathComponent("data.csv"), atomically: true, encoding: .utf8)
        let tasks = String(decoding: try JSONEncoder().encode(data.tasks), as: UTF8.self)
        let recipe = """
            {"data": "data.csv", "features": ["x0", "x1", "x2"], "tasks": \(tasks), "trunk": \(trunk), "epochs": 1, "learning_rate": 0.05,
             "expected_batch_size": 30, "noise_multiplier": 1.0, "delta": 1e-5, "seed": 1,
             "feature_bounds": [-4, 4]}
            """
        try recipe.write(to: folder.appendingPathComponent("recipe.json"), atomically: true, encoding: .utf8)
        return try TrainingRun.run(try TrainingRecipe(contentsOf: folder.appendingPathComponent("recipe.json").path))
    }
}
