import ArgumentParser
import CofferCrypto
import CofferFederated
import CofferTraining
import Foundation

// MARK: - fl simulate

extension Coffer.Federated {
    struct Simulate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "simulate",
            abstract: "Run a whole federation in one process (no HTTP) on CSV shards, securely or as plain FedAvg: for benchmarks."
        )
        @Option(name: .long, help: "The training recipe.") var recipe: String
        @Option(name: .long, help: "One site's CSV; repeat for each site.") var shard: [String] = []
        @Option(name: .long, help: "Or: one CSV split across --sites sites.") var data: String?
        @Option(name: .long, help: "With --data: the number of sites.") var sites: Int = 10
        @Option(name: .long, help: "With --data: iid (row i to site i mod N), or a column name (rows sorted by it, cut into N runs).")
        var split: String = "iid"
        @OptionGroup var federation: FederationOptions
        @Flag(name: .long, help: "Plain FedAvg: updates in the clear, no secure aggregation (the baseline).") var plain = false
        @Option(name: .long, help: "Fraction of each round's sites that drop out before sending their masked input.") var dropout: Double = 0
        @Option(name: .long, help: "Evaluate the final model on this labelled CSV.") var evaluate: String?
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() throws {
            let recipe = try Federation.recipe(self.recipe)
            var configuration = try federation.configuration()
            configuration.joinTimeout = 0
            // Plain FedAvg has no DP: had it run without the DP options, a DP-against-plain comparison would compare
            // plain with plain.
            if plain, configuration.dp != nil { throw CLIError("--plain runs FedAvg without DP: drop --clip-norm and --noise-multiplier") }
            let data = try sitesData(recipe)
            guard dropout >= 0, dropout < 1 else { throw CLIError("--dropout must be in [0, 1)") }
            var rounds: [JSONValue] = []
            let model: MultiTaskModel
            let standardisation: PublicStandardisation
            var privacy = JSONValue.null
            let start = ContinuousClock.now
            if plain {
                let federation = try Federation.check { () throws(FederatedError) in
                    try PlainFederation(recipe: recipe, sites: data, configuration: configuration)
                }
                try Federation.check { () throws(FederatedError) in try federation.run() }
                rounds = zip(federation.roundSeconds, federation.roundCPUSeconds).enumerated().map {
                    .object(["round": .number(Double($0 + 1)), "seconds": .number($1.0), "cpu_seconds": .number($1.1), "outcome": .string("ok")])
                }
                model = federation.globalModel
                standardisation = federation.standardisation!
            } else {
                let coordinator = UnlockedIdentity(try Identity.generate(name: "coordinator"))
                let sites = try data.enumerated().map { i, local in
                    try Federation.check { () throws(FederatedError) in
                        try FederatedSite(
                            identity: UnlockedIdentity(try! Identity.generate(name: "site\(i)")),
                            coordinator: coordinator.publicIdentity,
                            recipe: recipe,
                            data: local,
                            rounds: configuration.rounds
                        )
                    }
                }
                let core = try Federation.check { () throws(FederatedError) in
                    try CoordinatorCore(configuration: configuration, recipe: recipe, identity: coordinator, sites: sites.map(\.publicIdentity))
                }
                // The plain federation it is measured against evaluates nothing at its sites either.
                for site in sites { site.evaluatesGlobalModels = false }
                let federation = LocalFederation(core: core, sites: sites)
                let fraction = dropout
                if fraction > 0 {
                    // The same sites drop in every round: the first ceil(fraction * n) of the roster.
                    let dropping = Set(sites.prefix(Int((fraction * Double(sites.count)).rounded(.up))).map(\.keyID))
                    federation.dropout = { round, site in round > 0 && dropping.contains(site) ? .masked : nil }
                }
                let records = try Federation.check { () throws(FederatedError) in try federation.run() }
                for record in records where record.kind == .update {
                    let stages = federation.stageSeconds[record.round] ?? [:]
                    rounds.append(
                        .object([
                            "round": .number(Double(record.round)), "seconds": .number(record.seconds),
                            "cpu_seconds": .number(federation.cpuSeconds[record.round] ?? 0), "outcome": .string(record.outcome),
                            "reason": JSONValue(record.reason), "sites": .number(Double(record.participants.count)),
                            "stages": .object(Dictionary(uniqueKeysWithValues: stages.map { ($0.key.rawValue, JSONValue.number($0.value)) })),
                        ])
                    )
                }
                model = core.globalModel
                standardisation = core.standardisation!
                if let report = try Federation.check({ () throws(FederatedError) in try core.privacyReport() }), let dp = configuration.dp {
                    privacy = .object([
                        "epsilon": .number(report.epsilon), "epsilon_rdp": .number(report.epsilonRDP),
                        "epsilon_pld": report.epsilonPLD.map { .number($0) } ?? .null, "order": .number(report.order),
                        "rounds_accounted": .number(Double(core.roundsAccounted)), "sample_rate": .number(configuration.sampleRate),
                        "noise_multiplier": .number(dp.noiseMultiplier), "delta": .number(dp.delta),
                    ])
                }
            }
            let elapsed = ContinuousClock.now - start
            var metrics: [TaskMetric] = []
            var losses: [String: Double] = [:]
            if let evaluate {
                let preprocessing = Preprocessing(
                    features: recipe.recipe.features,
                    means: standardisation.means,
                    standardDeviations: standardisation.standardDeviations,
                    tasks: recipe.recipe.tasks
                )
                let table = try CSVTable(contentsOf: evaluate)
                metrics = try TrainingRun.evaluate(model, preprocessing: preprocessing, labelled: table)
                losses = try Federation.check { () throws(FederatedError) in
                    try Evaluation.losses(model, preprocessing: preprocessing, labelled: table)
                }
            }
            if json {
                JSONOutput.print(
                    .object([
                        "mode": .string(plain ? "plain" : "secure"), "sites": .number(Double(data.count)),
                        "parameters": .number(Double(model.parameterCount)),
                        "rounds": .array(rounds),
                        "seconds": .number(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18),
                        "metrics": .object(Dictionary(uniqueKeysWithValues: metrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) })),
                        "privacy": privacy, "losses": .object(losses.mapValues { .number($0) }),
                    ])
                )
            } else {
                print("\(plain ? "plain" : "secure") FedAvg, \(data.count) sites, \(model.parameterCount) parameters")
                for case .object(let r) in rounds {
                    print(
                        "round \(Int(r["round"]?.numberValue ?? 0)): \(r["outcome"]?.stringValue ?? "") in \(String(format: "%.3f", r["seconds"]?.numberValue ?? 0)) s"
                    )
                }
                for metric in metrics { print("\(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))") }
                for (task, loss) in losses.sorted(by: { $0.key < $1.key }) { print("\(task) loss \(String(format: "%.4f", loss))") }
            }
        }

        /// Each site's data: the `--shard` files, or `--data` split into `--sites` shards. The split rows are the user's
        /// training data: their folder goes once they are read, on an interrupt, and after a kill with the next Coffer
        /// process that makes a temporary file (``TemporaryFolder``).
        private func sitesData(_ recipe: FederatedRecipe) throws -> [LocalData] {
            func read(_ paths: [String]) throws -> [LocalData] {
                try paths.map { path in try Federation.check { () throws(FederatedError) in try LocalData(path: path, recipe: recipe) } }
            }
            guard shard.isEmpty else { return try read(shard) }
            let scratch = try TemporaryFolder(in: FileManager.default.temporaryDirectory.path, prefix: "coffer-fl-sim-")
            return try read(splitData(into: scratch.path))
        }

        /// Writes `--data` split into `--sites` shards under `directory`.
        private func splitData(into directory: String) throws -> [String] {
            guard let data else { throw CLIError("give the sites' data: --shard FILE (one per site) or --data CSV --sites N") }
            guard sites >= 3 else { throw CLIError("--sites must be at least 3") }
            let text = String(decoding: try FileBytes.read(data), as: UTF8.self)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
            guard let header = lines.first else { throw CLIError("\(data) is empty") }
            var rows = Array(lines.dropFirst())
            if split != "iid" {
                guard let column = header.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }).firstIndex(of: split) else {
                    throw CLIError("--split \(split): no such column in \(data)")
                }
                let keyed = rows.enumerated().map { i, row in
                    (Double(row.split(separator: ",")[column].trimmingCharacters(in: .whitespaces)) ?? 0, i, row)
                }
                rows = keyed.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.map(\.2)
            }
            return try (0..<sites).map { s in
                let mine: [Substring] =
                    split == "iid"
                    ? stride(from: s, to: rows.count, by: sites).map { rows[$0] }
                    : Array(rows[(s * rows.count / sites)..<((s + 1) * rows.count / sites)])
                let path = "\(directory)/site\(s).csv"
                try FileBytes.write(Array(([header] + mine).joined(separator: "\n").utf8) + [0x0A], to: path, mode: 0o600, overwrite: true)
                return path
            }
        }
    }
}
