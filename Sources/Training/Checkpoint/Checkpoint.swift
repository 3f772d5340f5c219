import Foundation

/// A trained model on disk: `model.safetensors` (weights and metadata) and `privacy.json` (docs/FORMAT.md, "Checkpoints").
public enum Checkpoint {
    public static let modelFile = "model.safetensors"
    public static let privacyFile = "privacy.json"
    public static let format = "coffer-multitask-v1"

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return encoder
    }

    /// The safetensors bytes: tensors `trunk.<i>.weight|bias`, `heads.<task>.weight|bias`; metadata holds the
    /// architecture, preprocessing, privacy report (pruning included) and metrics as JSON strings.
    public static func encode(_ trained: TrainedModel) throws(CofferTrainingError) -> [UInt8] {
        let model = trained.model
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for (i, layer) in model.trunk.enumerated() {
            tensors.append(("trunk.\(i).weight", [layer.outputs, layer.inputs], layer.weight))
            tensors.append(("trunk.\(i).bias", [layer.outputs], layer.bias))
        }
        for (task, head) in zip(model.architecture.tasks, model.heads) {
            tensors.append(("heads.\(task.name).weight", [head.outputs, head.inputs], head.weight))
            tensors.append(("heads.\(task.name).bias", [head.outputs], head.bias))
        }
        func json(_ value: some Encodable) throws(CofferTrainingError) -> String {
            do { return String(decoding: try encoder().encode(value), as: UTF8.self) } catch {
                throw .invalidCheckpoint("cannot encode metadata: \(error)")
            }
        }
        let metadata = [
            "format": format,
            "coffer.architecture": try json(model.architecture),
            "coffer.preprocessing": try json(trained.preprocessing),
            "coffer.privacy": try json(trained.privacy),
            "coffer.metrics": try json(trained.metrics),
            "coffer.task_balancing": try json(trained.balancing),
        ]
        return try Safetensors.encode(tensors: tensors, metadata: metadata)
    }

    /// The checkpoint's files in memory, with their modes on disk: the model (owner only) and `privacy.json`.
    public static func files(_ trained: TrainedModel) throws(CofferTrainingError) -> [(name: String, bytes: [UInt8], mode: UInt32)] {
        [(modelFile, try encode(trained), 0o600), (privacyFile, try privacyJSON(trained.privacy), 0o644)]
    }

    /// `privacy.json`: the privacy report, pretty-printed.
    public static func privacyJSON(_ report: PrivacyReport) throws(CofferTrainingError) -> [UInt8] {
        let encoder = encoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        do { return Array(try encoder.encode(report)) + [0x0a] } catch { throw .invalidCheckpoint("cannot encode privacy.json: \(error)") }
    }

    /// Reads a checkpoint directory's model back, with its preprocessing.
    public static func load(directory: String) throws(CofferTrainingError) -> (MultiTaskModel, Preprocessing) {
        let (file, bytes) = try Safetensors.read(contentsOf: "\(directory)/\(modelFile)")
        guard file.metadata["format"] == format else {
            throw .invalidCheckpoint("not a Coffer multi-task checkpoint (metadata format is \(file.metadata["format"] ?? "missing"))")
        }
        func decode<T: Decodable>(_ type: T.Type, _ key: String) throws(CofferTrainingError) -> T {
            guard let text = file.metadata[key], let value = try? JSONDecoder().decode(T.self, from: Data(text.utf8)) else {
                throw .invalidCheckpoint("metadata \(key) is missing or malformed")
            }
            return value
        }
        let architecture = try decode(Architecture.self, "coffer.architecture")
        let preprocessing = try decode(Preprocessing.self, "coffer.preprocessing")
        var model = try MultiTaskModel(architecture: architecture, seed: 0)
        func load(_ name: String, into values: inout [Float]) throws(CofferTrainingError) {
            guard let tensor = file.tensor(named: name) else { throw .invalidCheckpoint("tensor \(name) is missing") }
            let floats = try file.floats(tensor, in: bytes)
            guard floats.count == values.count else {
                throw .invalidCheckpoint("tensor \(name) has \(floats.count) values, the architecture needs \(values.count)")
            }
            values = floats
        }
        for i in model.trunk.indices {
            try load("trunk.\(i).weight", into: &model.trunk[i].weight)
            try load("trunk.\(i).bias", into: &model.trunk[i].bias)
        }
        for (t, task) in architecture.tasks.enumerated() {
            try load("heads.\(task.name).weight", into: &model.heads[t].weight)
            try load("heads.\(task.name).bias", into: &model.heads[t].bias)
        }
        return (model, preprocessing)
    }
}
