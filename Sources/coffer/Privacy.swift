import ArgumentParser
import CofferCrypto
import CofferTraining

extension Coffer {
    struct Privacy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The DP-SGD privacy accountant on its own (as TF Privacy's compute_dp_sgd_privacy).",
            subcommands: [Epsilon.self, Sigma.self]
        )

        struct Epsilon: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Epsilon spent by STEPS steps of Poisson-sampled Gaussian noise.")
            @Option(name: .long, help: "Poisson sampling rate q, in (0, 1].") var sampleRate: Double
            @Option(name: .long, help: "Noise multiplier sigma (> 0).") var noiseMultiplier: Double
            @Option(name: .long, help: "Number of steps.") var steps: Int
            @Option(name: .long, help: "Target delta, in (0, 1).") var delta: Double
            @Option(name: .long, help: "Accountant: rdp or pld.") var accountant: String = "rdp"
            @Flag(name: .long, help: "Print JSON: {epsilon, delta, accountant} and, for RDP, order.") var json = false

            func run() throws {
                try PrivacyParameters.validate(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: steps, delta: delta)
                let segment = PrivacySegment(sampleRate: sampleRate, noiseMultiplier: noiseMultiplier, steps: steps)
                switch accountant {
                case "rdp":
                    var rdp = RDPAccountant()
                    rdp.compose(segment)
                    let (epsilon, order) = rdp.epsilon(delta: delta)
                    if json {
                        JSONOutput.print(
                            .object(["epsilon": .number(epsilon), "order": .number(order), "delta": .number(delta), "accountant": .string("rdp")])
                        )
                    } else {
                        print("epsilon \(epsilon) at delta \(delta) (RDP, optimal order \(order))")
                    }
                case "pld":
                    let epsilon = try PLDAccountant().epsilon(segments: [segment], delta: delta)
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
            static let configuration = CommandConfiguration(abstract: "The smallest noise multiplier that keeps epsilon at or below a target.")
            @Option(name: .long, help: "Target epsilon (> 0).") var targetEpsilon: Double
            @Option(name: .long, help: "Poisson sampling rate q, in (0, 1].") var sampleRate: Double
            @Option(name: .long, help: "Number of steps.") var steps: Int
            @Option(name: .long, help: "Target delta, in (0, 1).") var delta: Double
            @Flag(name: .long, help: "Print JSON: {noise_multiplier, epsilon, order}.") var json = false

            func run() throws {
                let sigma = try RDPAccountant.calibrateNoise(targetEpsilon: targetEpsilon, sampleRate: sampleRate, steps: steps, delta: delta)
                var rdp = RDPAccountant()
                rdp.compose(PrivacySegment(sampleRate: sampleRate, noiseMultiplier: sigma, steps: steps))
                let (epsilon, order) = rdp.epsilon(delta: delta)
                if json {
                    JSONOutput.print(.object(["noise_multiplier": .number(sigma), "epsilon": .number(epsilon), "order": .number(order)]))
                } else {
                    print("noise multiplier \(sigma) gives epsilon \(epsilon) at delta \(delta) (RDP, order \(order))")
                }
            }
        }
    }
}
