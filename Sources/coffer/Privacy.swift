import ArgumentParser
import CofferCrypto
import CofferTraining
import Foundation

extension Coffer {
    struct Privacy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "privacy",
            abstract: "The DP-SGD privacy accountant on its own, and the empirical side: audits and membership-inference attacks.",
            subcommands: [Epsilon.self, Sigma.self, Audit.self, AuditBound.self, Attack.self]
        )

        struct Epsilon: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "epsilon",
                abstract: "Epsilon spent by STEPS steps of Poisson-sampled Gaussian noise (after the releases given with --after)."
            )
            @Option(name: .long, help: "Poisson sampling rate q, in (0, 1].") var sampleRate: Double
            @Option(name: .long, help: "Noise multiplier sigma (> 0).") var noiseMultiplier: Double
            @Option(name: .long, help: "Number of steps.") var steps: Int
            @Option(name: .long, help: "Target delta, in (0, 1).") var delta: Double
            @Option(name: .long, help: "Accountant: rdp or pld.") var accountant: String = "rdp"
            @OptionGroup var released: EarlierReleases
            @Flag(name: .long, help: "Print JSON: {epsilon, delta, accountant} and, for RDP, order.") var json = false

            func run() throws {
                try PrivacyParameters.validate(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: steps, delta: delta)
                let segments = try released.segments() + [PrivacySegment(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: steps)]
                switch accountant {
                case "rdp":
                    var rdp = RDPAccountant()
                    for segment in segments { rdp.compose(segment) }
                    let (epsilon, order) = rdp.epsilon(delta: delta)
                    if json {
                        JSONOutput.print(
                            .object(["epsilon": .number(epsilon), "order": .number(order), "delta": .number(delta), "accountant": .string("rdp")])
                        )
                    } else {
                        print("epsilon \(epsilon) at delta \(delta) (RDP, optimal order \(order))")
                    }
                case "pld":
                    let epsilon = try PLDAccountant().epsilon(segments: segments, delta: delta)
                    if json {
                        JSONOutput.print(.object(["epsilon": .number(epsilon), "delta": .number(delta), "accountant": .string("pld")]))
                    } else {
                        print("epsilon \(epsilon) at delta \(delta) (PLD, discretization 1e-4)")
                    }
                default:
                    throw CLIError("unknown accountant '\(accountant)': use rdp or pld")
                }
            }
        }

        struct Sigma: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "sigma",
                abstract: "The smallest noise multiplier that keeps epsilon at or below a target."
            )
            @Option(name: .long, help: "Target epsilon (> 0).") var targetEpsilon: Double
            @Option(name: .long, help: "Poisson sampling rate q, in (0, 1].") var sampleRate: Double
            @Option(name: .long, help: "Number of steps.") var steps: Int
            @Option(name: .long, help: "Target delta, in (0, 1).") var delta: Double
            @Option(name: .long, help: "Accountant: rdp, or pld (epsilon within 0.5% below the target, as coffer train calibrates).")
            var accountant: String = "rdp"
            @OptionGroup var earlier: EarlierReleases
            @Flag(name: .long, help: "Print JSON: {noise_multiplier, epsilon, accountant} and, for RDP, order.") var json = false

            func run() throws {
                guard accountant == "rdp" || accountant == "pld" else { throw CLIError("unknown accountant '\(accountant)': use rdp or pld") }
                let released = try earlier.segments()
                do { try calibrate(after: released) } catch CofferTrainingError.unreachableEpsilon(let why) where !released.isEmpty {
                    // The releases may be what spends the target: say so, with what they cost alone.
                    var rdp = RDPAccountant()
                    for segment in released { rdp.compose(segment) }
                    let alone =
                        accountant == "pld" ? (try? PLDAccountant().epsilon(segments: released, delta: delta)) : rdp.epsilon(delta: delta).epsilon
                    throw CofferTrainingError.unreachableEpsilon(
                        why + String(format: " (the releases given with --after alone are epsilon %.3f)", alone ?? .nan)
                    )
                }
            }

            private func calibrate(after released: [PrivacySegment]) throws {
                if accountant == "pld",
                    let (sigma, epsilon) = try PLDAccountant().calibrateNoise(
                        targetEpsilon: targetEpsilon,
                        sampleRate: sampleRate,
                        steps: steps,
                        delta: delta,
                        after: released
                    )
                {
                    if json {
                        return JSONOutput.print(
                            .object(["noise_multiplier": .number(sigma), "epsilon": .number(epsilon), "accountant": .string("pld")])
                        )
                    }
                    return print("noise multiplier \(sigma) gives epsilon \(epsilon) at delta \(delta) (PLD)")
                }
                let sigma = try RDPAccountant.calibrateNoise(
                    targetEpsilon: targetEpsilon,
                    sampleRate: sampleRate,
                    steps: steps,
                    delta: delta,
                    after: released
                )
                var rdp = RDPAccountant()
                for segment in released + [PrivacySegment(sampleRate: sampleRate, noiseMultiplier: sigma, steps: steps)] { rdp.compose(segment) }
                let (epsilon, order) = rdp.epsilon(delta: delta)
                if json {
                    JSONOutput.print(
                        .object([
                            "noise_multiplier": .number(sigma), "epsilon": .number(epsilon), "order": .number(order), "accountant": .string("rdp"),
                        ])
                    )
                } else {
                    print("noise multiplier \(sigma) gives epsilon \(epsilon) at delta \(delta) (RDP, order \(order))")
                }
            }
        }

        /// `--after`: releases of the same data made before the steps a command accounts for, composed first.
        struct EarlierReleases: ParsableArguments {
            @Option(
                name: .long,
                help: ArgumentHelp(
                    "A release already made, composed before these steps: RATE:SIGMA:STEPS (coffer train's DP release of the standardisation statistics is 1:SIGMA:1); may be repeated.",
                    valueName: "rate:sigma:steps"
                )
            )
            var after: [String] = []

            func segments() throws -> [PrivacySegment] { try after.map(Self.segment) }

            /// `RATE:SIGMA:STEPS`: a rate in (0, 1], a noise multiplier over 0, at least one step.
            static func segment(_ text: String) throws -> PrivacySegment {
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 3, let rate = Double(parts[0]), let sigma = Double(parts[1]), let steps = Int(parts[2]), rate > 0,
                    rate <= 1, sigma > 0, sigma.isFinite, steps >= 1
                else {
                    throw CLIError("--after \(text): expected RATE:SIGMA:STEPS with a rate in (0, 1], a sigma over 0 and at least one step")
                }
                return PrivacySegment(sampleRate: rate, noiseMultiplier: sigma, steps: steps)
            }
        }

        struct Audit: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "audit",
                abstract: "Train a recipe with M audit canaries and print the one-run lower bound on epsilon beside the proven one (no checkpoint)."
            )
            @Option(name: .long, help: "Training configuration (JSON; docs/FORMAT.md); it must train with DP.") var config: String
            @Option(name: .long, help: "Canaries (each included with probability 1/2).") var canaries: Int
            @Option(name: .long, help: "Also write the canaries, inclusion bits and scores to FILE (JSON, mode 0600).") var auditReport: String?
            @Flag(name: .long, help: "Print JSON: {epsilon, epsilon_lower_bound, audit, audit_seconds, training_seconds}.") var json = false

            func run() throws {
                var recipe = try TrainingRecipe(contentsOf: config)
                recipe.auditCanaries = canaries
                try recipe.validate()
                let trained = try TrainingRun.run(recipe)
                if let auditReport, let record = trained.audit {
                    try FileBytes.write(try record.reportJSON(), to: auditReport, mode: 0o600, overwrite: true)
                }
                let p = trained.privacy
                guard let audit = p.evidence?.audit else { throw CLIError("the training run produced no audit") }
                if json {
                    return JSONOutput.print(
                        .object([
                            "epsilon": p.epsilon.map { .number($0) } ?? .null, "delta": p.delta.map { .number($0) } ?? .null,
                            "epsilon_lower_bound": .number(audit.epsilonLowerBound), "audit": try JSONValue(encoding: audit),
                            "audit_seconds": .number(trained.auditSeconds ?? 0), "training_seconds": .number(trained.trainingSeconds),
                        ])
                    )
                }
                for line in EvidenceOptions.summary(p.evidence, proven: p.epsilon, auditSeconds: trained.auditSeconds) { print(line) }
            }
        }

        struct AuditBound: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "audit-bound",
                abstract: "The one-run audit's bound from counts: the largest epsilon that CORRECT right guesses of GUESSES reject."
            )
            @Option(name: .long, help: "Canaries m.") var canaries: Int
            @Option(name: .long, help: "Guesses r = k+ + k-.") var guesses: Int
            @Option(name: .long, help: "Right guesses v.") var correct: Int
            @Option(name: .long, help: "Delta, in [0, 1).") var delta: Double
            @Option(name: .long, help: "Significance level of the test, in (0, 1).") var significance: Double = 0.05
            @Option(name: .long, help: "Also print the p-value of the hypothesis (epsilon, delta)-DP at this epsilon; repeat for several.")
            var epsilon: [Double] = []
            @Flag(name: .long, help: "Print JSON: {epsilon_lower_bound} and, with --epsilon, p_values (in the order given).") var json = false

            func run() throws {
                try OneRunAudit.validate(canaries: canaries, guesses: guesses, correct: correct, delta: delta)
                guard significance > 0, significance < 1 else { throw CLIError("significance must be in (0, 1), got \(significance)") }
                for e in epsilon where !(e >= 0 && e.isFinite) { throw CLIError("epsilon must be a finite number >= 0, got \(e)") }
                let bound = OneRunAudit.epsilonLowerBound(
                    canaries: canaries,
                    guesses: guesses,
                    correct: correct,
                    significance: significance,
                    delta: delta
                )
                let p = epsilon.map { OneRunAudit.pValue(canaries: canaries, guesses: guesses, correct: correct, epsilon: $0, delta: delta) }
                if json {
                    var fields: [String: JSONValue] = ["epsilon_lower_bound": .number(bound)]
                    if !p.isEmpty { fields["p_values"] = .array(p.map { .number($0) }) }
                    return JSONOutput.print(.object(fields))
                }
                print("epsilon >= \(bound) at significance \(significance)")
                for (e, value) in zip(epsilon, p) { print("p-value of (\(e), \(delta))-DP: \(value)") }
            }
        }

        struct Attack: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "attack",
                abstract: "Membership inference on a checkpoint: loss-threshold and population attacks, AUC and TPR at 1% FPR per task."
            )
            @Option(name: .long, help: "Checkpoint directory (model.safetensors).") var checkpoint: String
            @Option(name: .long, help: "CSV with the model's feature and task columns and 'member' (1: trained on, 0: not).") var members: String
            @Option(name: .long, help: "Population CSV for the population attack's thresholds (default: every other non-member).")
            var population: String?
            @Flag(name: .long, help: "Print JSON: the membership object of docs/FORMAT.md, \"Evidence\".") var json = false

            func run() throws {
                let (model, preprocessing) = try Checkpoint.load(directory: checkpoint)
                let table = try CSVTable(contentsOf: members)
                let populationTable = try population.map { path throws(CofferTrainingError) in (table: try CSVTable(contentsOf: path), source: path) }
                let result = try MembershipInference.attack(
                    model: model,
                    preprocessing: preprocessing,
                    members: table,
                    source: members,
                    population: populationTable
                )
                if json { return JSONOutput.print(try JSONValue(encoding: result)) }
                print("\(result.members) members, \(result.nonMembers) non-members, population \(result.population)")
                for line in EvidenceOptions.summary(CofferTraining.Evidence(membership: result), proven: nil, auditSeconds: nil) { print(line) }
            }
        }
    }
}
