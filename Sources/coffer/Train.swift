import ArgumentParser
import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation

extension Coffer {
    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Train a multi-task model with DP-SGD; write model.safetensors and privacy.json (claims computed by the accountant)."
        )

        @Option(name: .long, help: "Training configuration (JSON; docs/FORMAT.md).") var config: String
        @Option(name: .long, help: "Output directory for the checkpoint.") var out: String
        @Option(name: .long, help: "Also push the checkpoint to the registry as NAME (needs --identity).") var push: String?
        @Option(name: .long, help: "Your private identity (NAME.key), for --push.") var identity: String?
        @Option(name: .long, help: "With --push: another identity (NAME.pub) that may decrypt; repeat for several.") var recipient: [String] = []
        @Option(name: .long, help: "With --push: point this alias at the new version.") var alias: String?
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Flag(name: .long, help: "Print the final report as JSON.") var json = false

        func validate() throws {
            if push != nil && identity == nil { throw ValidationError("--push needs --identity") }
        }

        func run() throws {
            let recipe = try TrainingRecipe(contentsOf: config)
            // Fail early on registry and identity problems, before spending the privacy budget on training.
            let store = push == nil ? nil : try registry.open()
            let publisher = try identity.map { path throws(CofferCryptoError) in try passphraseOptions.unlockIdentity(at: path) }
            let tty = isatty(STDERR_FILENO) == 1
            let trained = try TrainingRun.run(recipe) { report in
                guard tty || !json else { return }
                let losses = zip(recipe.tasks, report.taskLosses).map { "\($0.name) \(String(format: "%.4f", $1))" }.joined(separator: ", ")
                let epsilon = report.epsilon.map { String(format: ", epsilon %.3f", $0) } ?? ""
                FileDescriptorStream.standardError.writeLine("\(report.phase) epoch \(report.epoch)/\(report.epochs): loss \(losses)\(epsilon)")
            }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try FileBytes.write(try Checkpoint.encode(trained), to: "\(out)/\(Checkpoint.modelFile)", mode: 0o600, overwrite: true)
            try FileBytes.write(try Checkpoint.privacyJSON(trained.privacy), to: "\(out)/\(Checkpoint.privacyFile)", mode: 0o644, overwrite: true)
            let p = trained.privacy
            if json {
                JSONOutput.print(
                    .object([
                        "epsilon": p.epsilon.map { .number($0) } ?? .null, "delta": p.delta.map { .number($0) } ?? .null,
                        "noise_multiplier": p.segments.first.map { .number($0.noiseMultiplier) } ?? .null,
                        "achieved_sparsity": .number(p.pruning.achievedSparsity),
                        "training_seconds": .number(trained.trainingSeconds), "examples": .number(Double(trained.examplesProcessed)),
                        "metrics": .object(
                            Dictionary(uniqueKeysWithValues: trained.metrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) })
                        ),
                    ])
                )
            } else {
                for metric in trained.metrics { print("validation \(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))") }
                if let epsilon = p.epsilon, let delta = p.delta, let segment = p.segments.first {
                    print(
                        "privacy: (\(String(format: "%.4f", epsilon)), \(delta))-DP by RDP accounting, order \(p.order ?? 0); "
                            + "sigma \(String(format: "%.4f", segment.noiseMultiplier)), q \(String(format: "%.6f", segment.sampleRate)), \(segment.steps) steps, C \(p.maxGradNorm ?? 0)"
                    )
                } else {
                    print("privacy: none (trained without differential privacy)")
                }
                print("pruning: target \(p.pruning.targetRatio), achieved sparsity \(String(format: "%.4f", p.pruning.achievedSparsity))")
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
                let result = try store.push(request, publisher: publisher)
                print("pushed \(result.model):\(result.version) sha256:\(result.digest)")
            }
        }
    }

    struct Predict: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Per-task predictions of a plaintext checkpoint on a CSV (development use).")

        @Option(name: .long, help: "Checkpoint directory (model.safetensors).") var checkpoint: String
        @Option(name: .long, help: "CSV with the model's feature columns.") var input: String
        @Flag(name: .long, help: "Print JSON: one object per row, keyed by task.") var json = false

        func run() throws {
            let (model, preprocessing) = try Checkpoint.load(directory: checkpoint)
            let table = try CSVTable(contentsOf: input)
            let predictions = model.predict(try preprocessing.features(of: table), count: table.rowCount)
            var rows: [JSONValue] = []
            for i in 0..<table.rowCount {
                var row: [String: JSONValue] = [:]
                for (t, task) in model.architecture.tasks.enumerated() {
                    switch task.kind {
                    case .classification:
                        let probabilities = Array(predictions[t][(i * task.classes)..<((i + 1) * task.classes)])
                        let best = probabilities.indices.max { probabilities[$0] < probabilities[$1] }!
                        let labels = preprocessing.tasks[t].labels
                        row[task.name] = .object([
                            "class": labels.map { .string($0[best]) } ?? .number(Double(best)),
                            "probabilities": .array(probabilities.map { .number(Double($0)) }),
                        ])
                    case .binary, .regression:
                        row[task.name] = .number(Double(predictions[t][i]))
                    }
                }
                rows.append(.object(row))
            }
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
    }
}
