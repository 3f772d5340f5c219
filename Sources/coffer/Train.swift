import ArgumentParser
import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation

extension Coffer {
    struct Train: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "train",
            abstract: "Train a multi-task model with DP-SGD; write model.safetensors and privacy.json (claims computed by the accountant)."
        )

        @Option(name: .long, help: "Training configuration (JSON; docs/FORMAT.md).") var config: String
        @Option(name: .long, help: "Output directory for the checkpoint.") var out: String
        @Option(name: .long, help: "Also push the checkpoint to the registry as NAME (needs --identity).") var push: String?
        @Option(name: .long, help: "Your private identity (NAME.key), for --push (default: $COFFER_IDENTITY, else identity in the config file).")
        var identity: String?
        @Option(name: .long, help: "With --push: another identity (NAME.pub) that may decrypt; repeat for several.") var recipient: [String] = []
        @Option(name: .long, help: "With --push: point this alias at the new version.") var alias: String?
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Flag(name: .long, help: "Print the final report as JSON.") var json = false
        @OptionGroup var evidence: EvidenceOptions

        func validate() throws {
            if push != nil && UserConfig.identity(identity) == nil { throw CLIError("--push needs --identity (or COFFER_IDENTITY)") }
        }

        func run() async throws {
            let recipe = try evidence.apply(to: TrainingRecipe(contentsOf: config))
            // Fail early on registry and identity problems, before spending the privacy budget on training.
            let store = await push == nil ? nil : try registry.open()
            let publisher = try (push == nil ? identity : UserConfig.identity(identity)).map { path throws(CofferCryptoError) in
                try passphraseOptions.unlockIdentity(at: path)
            }
            let bar = EpochProgress(tasks: recipe.tasks.map(\.name), quiet: json)
            let trained = try TrainingRun.run(recipe, progress: bar.update)
            try evidence.writeReport(trained)
            try Checkpoint.write(trained, to: out)
            let p = trained.privacy
            // The noise on a DP mean, as a fraction of the feature's half-range: past a twentieth the features are scaled
            // by little more than the bounds (helper-68 saw 76% of the means clamped with 3,000 features and 240 rows).
            if let source = p.standardisation, source.method == "dp", let sigma = source.noiseMultiplier, let sensitivity = source.sensitivity,
                sigma * sensitivity / Double(max(p.datasetSize, 1)) > 0.05
            {
                FileDescriptorStream.standardError.writeLine(
                    "coffer: warning: the DP standardisation's noise is "
                        + String(format: "%.2f", sigma * sensitivity / Double(max(p.datasetSize, 1)))
                        + " of each feature's half-range on its mean (\(p.datasetSize) rows): lower statistics_noise_multiplier, tighten feature_bounds or give public standardisation values"
                )
            }
            if json {
                JSONOutput.print(
                    .object([
                        "epsilon": p.epsilon.map { .number($0) } ?? .null, "delta": p.delta.map { .number($0) } ?? .null,
                        // DP-SGD's segment is the last: the statistics' release, when there is one, comes first.
                        "noise_multiplier": p.segments.last.map { .number($0.noiseMultiplier) } ?? .null,
                        "standardisation": p.standardisation.map { .string($0.method) } ?? .null,
                        "achieved_sparsity": .number(p.pruning.achievedSparsity),
                        "training_seconds": .number(trained.trainingSeconds), "examples": .number(Double(trained.examplesProcessed)),
                        "audit_seconds": trained.auditSeconds.map { .number($0) } ?? .null,
                        "evidence": try JSONValue(encoding: p.evidence),
                        "metrics": .object(
                            Dictionary(uniqueKeysWithValues: trained.metrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) })
                        ),
                    ])
                )
            } else {
                for metric in trained.metrics { print("validation \(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))") }
                if let epsilon = p.epsilon, let delta = p.delta, let segment = p.segments.last {
                    let method =
                        p.accountant == "pld"
                        ? "PLD accounting (RDP: \(String(format: "%.4f", p.epsilonRDP ?? 0)))" : "RDP accounting, order \(p.order ?? 0)"
                    print(
                        "privacy: (\(String(format: "%.4f", epsilon)), \(delta))-DP by \(method); "
                            + "sigma \(String(format: "%.4f", segment.noiseMultiplier)), q \(String(format: "%.6f", segment.sampleRate)), \(segment.steps) steps, C \(p.maxGradNorm ?? 0)"
                    )
                } else {
                    print("privacy: none (trained without differential privacy)")
                }
                if let source = p.standardisation, p.mechanism != "none" {
                    switch source.method {
                    case "dp":
                        print(
                            "standardisation: DP statistics (sigma \(source.noiseMultiplier ?? 0), sensitivity \(String(format: "%.4f", source.sensitivity ?? 0))), counted in epsilon"
                        )
                    case "public": print("standardisation: the recipe's public values")
                    default: print("standardisation: exact statistics of the training rows, released WITHOUT differential privacy")
                    }
                }
                print("pruning: target \(p.pruning.targetRatio), achieved sparsity \(String(format: "%.4f", p.pruning.achievedSparsity))")
                for line in EvidenceOptions.summary(p.evidence, proven: p.epsilon, auditSeconds: trained.auditSeconds) { print(line) }
                print("wrote \(out)/\(Checkpoint.modelFile) and \(out)/\(Checkpoint.privacyFile)")
            }
            if let store, let push, let publisher {
                var request = PushRequest(model: push, paths: [out])
                request.privacy = try PrivacyMetadata(contentsOf: "\(out)/\(Checkpoint.privacyFile)")
                request.datasetID = (recipe.data as NSString).lastPathComponent
                request.datasetDigest = "sha256:" + Digest.hex(try Digest.sha256(file: recipe.data))
                request.trainingConfigDigest = "sha256:" + Digest.hex(try Digest.sha256(file: config))
                request.recipients = try recipient.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                request.alias = alias
                let result = try await store.push(request, publisher: publisher)
                print("pushed \(result.model):\(result.version) sha256:\(result.digest)")
            }
        }
    }

    struct Predict: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "predict",
            abstract: "Per-task predictions of a plaintext checkpoint on a CSV (development use)."
        )

        @Option(name: .long, help: "Checkpoint directory (model.safetensors).") var checkpoint: String
        @Option(name: .long, help: "CSV with the model's feature columns.") var input: String
        @Flag(name: .long, help: "Print JSON: one object per row, keyed by task.") var json = false
        @Flag(name: .long, help: "The CSV also holds the task columns: print per-task metrics instead of predictions.") var evaluate = false

        func run() throws {
            let (model, preprocessing) = try Checkpoint.load(directory: checkpoint)
            let table = try CSVTable(contentsOf: input)
            if evaluate {
                let metrics = try TrainingRun.evaluate(model, preprocessing: preprocessing, labelled: table)
                if json {
                    return JSONOutput.print(
                        .object(Dictionary(uniqueKeysWithValues: metrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) }))
                    )
                }
                for metric in metrics { print("\(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))") }
                return
            }
            let predictions = model.predict(try preprocessing.features(of: table), count: table.rowCount)
            printPredictions(predictions, tasks: model.architecture.tasks, preprocessing: preprocessing, rows: table.rowCount, json: json)
        }
    }
}

/// Prints per-task predictions, one row per input row: `coffer predict` and `coffer infer` alike.
func printPredictions(_ predictions: [[Float]], tasks: [TaskSpec], preprocessing: Preprocessing, rows count: Int, json: Bool) {
    printPredictionRows(predictionRows(predictions, tasks: tasks, preprocessing: preprocessing, rows: count), json: json)
}

/// Prediction rows (``predictionRows``, or a server's answer) as JSON or as one `row N: task=value` line per row.
func printPredictionRows(_ rows: [JSONValue], json: Bool) {
    if json { return JSONOutput.print(.array(rows)) }
    for (i, row) in rows.enumerated() {
        guard case .object(let fields) = row else { continue }
        let text = fields.keys.sorted().map { key -> String in
            switch fields[key]! {
            case .number(let v): "\(key)=\(String(format: "%.4f", v))"
            case .object(let o): "\(key)=\(o["class"].map { "\($0.stringValue ?? String(format: "%g", $0.numberValue ?? 0))" } ?? "?")"
            default: key
            }
        }
        print("row \(i + 1): \(text.joined(separator: "  "))")
    }
}

extension Coffer {
    struct Synth: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "synth",
            abstract: "Write a synthetic multi-task dataset (DIR/data.csv) and a DP training configuration for it (DIR/recipe.json)."
        )

        @Option(name: .long, help: "Rows.") var rows: Int = 10_000
        @Option(name: .long, help: "Feature columns x0, x1, ...") var features: Int = 16
        @Option(name: .long, help: "Classes of the classification task.") var classes: Int = 4
        @Option(name: .long, help: "Seed: the same seed writes the same bytes.") var seed: UInt64 = 0
        @Option(name: .long, help: "Output directory.") var out: String

        func run() throws {
            let data = try SyntheticData(rows: rows, features: features, classes: classes, seed: seed)
            let tasks = try JSONSerialization.jsonObject(with: JSONEncoder().encode(data.tasks))
            let recipe: [String: Any] = [
                "data": "data.csv", "features": data.featureColumns, "tasks": tasks, "trunk": [64, 64], "activation": "relu",
                "epochs": 2, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.9, "expected_batch_size": min(256, max(1, rows / 10)),
                "clipping_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5, "validation_split": 0.2, "seed": 1,
                "feature_bounds": try JSONSerialization.jsonObject(with: JSONEncoder().encode(data.featureBounds)),
            ]
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try FileBytes.write(Array(data.csv().utf8), to: "\(out)/data.csv", mode: 0o644, overwrite: true)
            let json = try JSONSerialization.data(withJSONObject: recipe, options: [.prettyPrinted, .sortedKeys])
            try FileBytes.write(Array(json) + [0x0A], to: "\(out)/recipe.json", mode: 0o644, overwrite: true)
            print("wrote \(out)/data.csv (\(rows) rows, \(features) features, tasks cls/bin/reg) and \(out)/recipe.json")
        }
    }
}

extension Coffer {
    struct Split: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "split",
            abstract:
                "Write the training and validation rows of a recipe's split (DIR/train.csv, DIR/validation.csv), for baselines trained elsewhere."
        )

        @Option(name: .long, help: "Training configuration (JSON; docs/FORMAT.md).") var config: String
        @Option(name: .long, help: "Output directory.") var out: String

        func run() throws {
            let recipe = try TrainingRecipe(contentsOf: config)
            guard let bytes = FileManager.default.contents(atPath: recipe.data) else { throw CLIError("\(recipe.data): cannot read") }
            // The table parses the same bytes, so its row r is line r + 1 here (blank lines only at the end).
            let table = try CSVTable(contentsOf: recipe.data)
            var lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map {
                $0.hasSuffix("\r") ? $0.dropLast() : $0
            }
            while let last = lines.last, last.trimmingCharacters(in: .whitespaces).isEmpty { lines.removeLast() }
            guard lines.count == table.rowCount + 1 else { throw CLIError("\(recipe.data): \(lines.count - 1) lines but \(table.rowCount) rows") }
            let (training, validation) = TrainingRun.split(recipe, rowCount: table.rowCount)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for (name, rows) in [("train.csv", training), ("validation.csv", validation)] {
                let text = ([lines[0]] + rows.map { lines[$0 + 1] }).joined(separator: "\n") + "\n"
                try FileBytes.write(Array(text.utf8), to: "\(out)/\(name)", mode: 0o644, overwrite: true)
            }
            print("wrote \(out)/train.csv (\(training.count) rows) and \(out)/validation.csv (\(validation.count) rows)")
        }
    }
}
