import CofferCrypto
public import CofferTraining
import Foundation

/// The shared training recipe of a federation: the `coffer train` configuration (docs/FORMAT.md, "Training
/// configuration") minus its `data`, which is each site's own.
///
/// Every site and the coordinator must hold the same recipe; they compare ``digest``s at join. The architecture has to
/// follow from the recipe alone (the coordinator has no data), so a classification task needs `labels` or `one_hot`.
///
/// ```swift
/// let recipe = try FederatedRecipe(try TrainingRecipe(contentsOf: "recipe.json"))
/// print(recipe.digest)
/// ```
public struct FederatedRecipe: Sendable {
    public let recipe: TrainingRecipe
    public let architecture: Architecture
    /// Hex SHA-256 of ``canonicalJSON``.
    public let digest: String

    public init(_ recipe: TrainingRecipe) throws(FederatedError) {
        do { try recipe.validate() } catch { throw .invalidParameter(error.description) }
        guard recipe.taskBalancing == nil || recipe.taskBalancing == "fixed" else {
            throw .invalidParameter(
                "task_balancing \(recipe.taskBalancing!) learns per-site loss weights, which federated averaging cannot merge: use fixed"
            )
        }
        guard recipe.featureBounds == nil, recipe.standardisation == nil, recipe.nonprivateStatistics == nil else {
            throw .invalidParameter(
                "feature_bounds, standardisation and nonprivate_statistics are coffer train's: a federation's standardisation is the coordinator's (fl serve --standardisation, or its statistics round)"
            )
        }
        guard (recipe.pruningRatio ?? 0) == 0 else {
            throw .invalidParameter("pruning_ratio is not supported in federated training (pruning masks differ per site)")
        }
        var tasks: [TaskSpec] = []
        for source in recipe.tasks {
            var classes = 0
            if source.kind == .classification {
                if let labels = source.labels {
                    classes = labels.count
                } else if let oneHot = source.oneHot {
                    classes = oneHot.count + 1
                } else {
                    throw .invalidParameter("task '\(source.name)': give labels, so that every site and the coordinator agree on the classes")
                }
            }
            tasks.append(TaskSpec(name: source.name, kind: source.kind, classes: classes, weight: source.weight ?? 1))
        }
        let architecture = Architecture(inputs: recipe.features.count, trunk: recipe.trunk, activation: recipe.activation ?? .relu, tasks: tasks)
        do { try architecture.validate() } catch { throw .invalidParameter(error.description) }
        self.recipe = recipe
        self.architecture = architecture
        self.digest = Digest.hex(Digest.sha256(Self.canonicalJSON(recipe)))
    }

    /// The recipe as Coffer encodes it (JSONEncoder, keys sorted, `/` unescaped, absent fields omitted) with `data` set
    /// to the empty string: what ``digest`` hashes.
    public static func canonicalJSON(_ recipe: TrainingRecipe) -> [UInt8] {
        var copy = recipe
        copy.data = ""
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(copy))
    }

    /// A fresh global model: the recipe's architecture initialised from its seed, as `coffer train` would start.
    public func initialModel() -> MultiTaskModel {
        // The architecture was validated in init.
        try! MultiTaskModel(architecture: architecture, seed: recipe.seed ?? 1)
    }

    /// Refuses a site whose recipe or features differ from this one, naming what differs.
    public func check(join: JoinRequest) throws(FederatedError) {
        if join.features != recipe.features {
            throw .recipeMismatch(
                "site \(join.site) trains on features [\(join.features.joined(separator: ", "))], the federation on [\(recipe.features.joined(separator: ", "))]"
            )
        }
        let tasks = recipe.tasks.map(\.name)
        if join.tasks != tasks {
            throw .recipeMismatch(
                "site \(join.site) trains tasks [\(join.tasks.joined(separator: ", "))], the federation [\(tasks.joined(separator: ", "))]"
            )
        }
        if join.recipeDigest != digest {
            throw .recipeMismatch(
                "site \(join.site) has recipe \(join.recipeDigest.prefix(16)), the federation \(digest.prefix(16)) (same features, other settings)"
            )
        }
    }
}

/// A model's parameters as one flat vector: for each layer (trunk, then heads in task order) its weights (row-major,
/// `[outputs, inputs]`) then its biases; the order updates are encoded and aggregated in.
public enum ModelVector {
    public static func flatten(_ model: MultiTaskModel) -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(model.parameterCount)
        for layer in model.layers {
            out += layer.weight
            out += layer.bias
        }
        return out
    }

    /// `model` with its parameters replaced by `values` (count: `model.parameterCount`).
    public static func model(_ template: MultiTaskModel, with values: [Float]) -> MultiTaskModel {
        precondition(values.count == template.parameterCount, "parameter count mismatch")
        var model = template
        var offset = 0
        for i in model.trunk.indices {
            model.trunk[i].weight = Array(values[offset..<(offset + model.trunk[i].weight.count)])
            offset += model.trunk[i].weight.count
            model.trunk[i].bias = Array(values[offset..<(offset + model.trunk[i].bias.count)])
            offset += model.trunk[i].bias.count
        }
        for i in model.heads.indices {
            model.heads[i].weight = Array(values[offset..<(offset + model.heads[i].weight.count)])
            offset += model.heads[i].weight.count
            model.heads[i].bias = Array(values[offset..<(offset + model.heads[i].bias.count)])
            offset += model.heads[i].bias.count
        }
        return model
    }
}
