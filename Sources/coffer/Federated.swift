import ArgumentParser
import CofferCrypto
import CofferFederated
import CofferTraining
import Foundation

extension Coffer {
    struct Federated: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fl",
            abstract: "Federated training with secure aggregation and site-level DP: a coordinator, sites, the accountant, a simulator.",
            subcommands: [Serve.self, Join.self, Epsilon.self, Simulate.self]
        )
    }
}

/// Federation parameters shared by `fl serve` and `fl simulate`.
struct FederationOptions: ParsableArguments {
    @Option(name: .long, help: "Rounds of training.") var rounds: Int = 5
    @Option(name: .long, help: "q: each site joins each round with this probability (1: all sites every round).") var sampleRate: Double = 1
    @Option(name: .long, help: "Rounds with fewer sampled sites are skipped.") var minSites: Int = 3
    @Option(name: .long, help: "t: shares needed to unmask: a count (3) or a fraction of the shares, rounded up (2/3 or 0.7); more than half.")
    var threshold: String = "2/3"
    @Option(name: .long, help: "SecAgg+ neighbours per site (even), or 0 for every other site (Bonawitz et al.).") var neighbours: Int = 0
    @Option(name: .long, help: "Quantization bits b per coordinate (8 to 32).") var bits: Int = 22
    @Option(name: .long, help: "c: without DP, update coordinates are clipped to [-c, c] before quantization.") var clipRange: Double = 8
    @Option(name: .long, help: "DP-FedAvg: S, each site's update is clipped to this L2 norm.") var clipNorm: Double?
    @Option(name: .long, help: "DP-FedAvg: sigma; noise N(0, (sigma S)^2) is added to the sum once per round.") var noiseMultiplier: Double?
    @Option(name: .long, help: "DP-FedAvg: delta of the site-level guarantee.") var delta: Double = 1e-5
    @Option(name: .long, help: "Public standardisation (JSON {means, standard_deviations}); otherwise a statistics round runs first.")
    var standardisation: String?
    @Flag(name: .long, help: "With DP, allow the statistics round (its feature sums are not differentially private).")
    var nonprivateStatistics = false
    @Option(name: .long, help: "eta: the global model moves by eta times the aggregate.") var serverLearningRate: Double = 1

    func configuration() throws -> FederationConfiguration {
        var c = FederationConfiguration()
        c.rounds = rounds
        c.sampleRate = sampleRate
        c.minimumSites = minSites
        guard let t = FederationConfiguration.Threshold(argument: threshold) else {
            throw CLIError("--threshold takes a count (3) or a fraction in (0.5, 1] (2/3 or 0.7), got '\(threshold)'")
        }
        c.threshold = t
        c.neighbours = neighbours
        c.quantizationBits = bits
        c.clipRange = clipRange
        c.serverLearningRate = serverLearningRate
        switch (clipNorm, noiseMultiplier) {
        case (nil, nil): break
        case (let s?, let sigma?): c.dp = .init(clipNorm: s, noiseMultiplier: sigma, delta: delta)
        default: throw CLIError("DP-FedAvg needs both --clip-norm and --noise-multiplier")
        }
        if let standardisation {
            let bytes = try FileBytes.read(standardisation)
            guard let shared = try? JSONDecoder().decode(PublicStandardisation.self, from: Data(bytes)) else {
                throw CLIError("\(standardisation): expected JSON {\"means\": [...], \"standard_deviations\": [...]}")
            }
            c.standardisation = shared
        }
        c.nonPrivateStatistics = nonprivateStatistics
        try Federation.check { () throws(FederatedError) in try c.validate() }
        return c
    }
}

/// Helpers shared by the `fl` commands.
enum Federation {
    /// Runs `body`, turning a federation error into the CLI's one-line error.
    static func check<T>(_ body: () throws(FederatedError) -> T) throws -> T {
        do { return try body() } catch { throw CLIError(error.description) }
    }

    static func recipe(_ path: String) throws -> FederatedRecipe {
        let recipe = try TrainingRecipe(contentsOf: path)
        return try check { () throws(FederatedError) in try FederatedRecipe(recipe) }
    }

    /// The global model as a trained model, for a checkpoint (`model.safetensors`, `privacy.json`).
    static func trained(
        _ model: MultiTaskModel,
        recipe: FederatedRecipe,
        standardisation: PublicStandardisation,
        privacy: PrivacyReport
    ) -> TrainedModel {
        let r = recipe.recipe
        return TrainedModel(
            model: model,
            balancing: TaskBalancing(method: "fixed", weights: Dictionary(uniqueKeysWithValues: r.tasks.map { ($0.name, Double($0.weight ?? 1)) })),
            preprocessing: Preprocessing(
                features: r.features,
                means: standardisation.means,
                standardDeviations: standardisation.standardDeviations,
                tasks: r.tasks
            ),
            privacy: privacy,
            metrics: [],
            trainingSeconds: 0,
            examplesProcessed: 0
        )
    }

    static func line(_ text: String) { FileDescriptorStream.standardError.writeLine("coffer fl: \(text)") }
}

// MARK: - fl epsilon

extension Coffer.Federated {
    struct Epsilon: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "epsilon",
            abstract: "Site-level epsilon of DP-FedAvg after ROUNDS rounds (RDP and PLD accountants)."
        )
        @Option(name: .long, help: "q: the probability each site joins a round.") var sampleRate: Double
        @Option(name: .long, help: "sigma: noise std over the clip norm.") var noiseMultiplier: Double
        @Option(name: .long, help: "Rounds.") var rounds: Int
        @Option(name: .long, help: "delta.") var delta: Double
        @Option(name: .long, help: "rdp, pld, or both (the smaller epsilon).") var accountant: String = "both"
        @Flag(name: .long, help: "Print JSON: {epsilon, epsilon_rdp, epsilon_pld, order, accountant, delta}.") var json = false

        func run() throws {
            guard ["rdp", "pld", "both"].contains(accountant) else { throw CLIError("unknown accountant '\(accountant)': use rdp, pld or both") }
            var report = try Federation.check { () throws(FederatedError) in
                try SiteLevelPrivacy.epsilon(
                    sampleRate: sampleRate,
                    noiseMultiplier: noiseMultiplier,
                    rounds: rounds,
                    delta: delta,
                    withPLD: accountant != "rdp"
                )
            }
            if accountant == "pld" {
                guard let pld = report.epsilonPLD else { throw CLIError("the PLD grid for this epsilon is too large: use --accountant rdp") }
                report.epsilon = pld
                report.accountant = "pld"
            }
            if json {
                JSONOutput.print(
                    .object([
                        "epsilon": .number(report.epsilon), "epsilon_rdp": .number(report.epsilonRDP),
                        "epsilon_pld": report.epsilonPLD.map { .number($0) } ?? .null, "order": .number(report.order),
                        "accountant": .string(report.accountant), "delta": .number(delta),
                    ])
                )
            } else {
                print(
                    "site-level epsilon \(report.epsilon) at delta \(delta) (\(report.accountant); RDP \(report.epsilonRDP) at order \(report.order))"
                )
            }
        }
    }
}
