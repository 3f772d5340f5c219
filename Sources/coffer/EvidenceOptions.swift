import ArgumentParser
import CofferCrypto
import CofferTraining
import Foundation

/// The evidence `coffer train` collects beside the proven ε (docs/FORMAT.md, "Evidence"); each option sets the
/// recipe field of the same name.
struct EvidenceOptions: ParsableArguments {
    @Option(name: .long, help: "One-run privacy audit: train M canaries in this run and record the lower bound on epsilon (needs DP).")
    var auditCanaries: Int?
    @Option(name: .long, help: "With an audit: write its canaries, inclusion bits and scores to FILE (JSON, mode 0600), never into the checkpoint.")
    var auditReport: String?
    @Flag(name: .long, help: "Record the loss-threshold and population membership-inference attacks (training against validation rows).")
    var membership = false
    @Flag(name: .long, help: "Also train the recipe without privacy on the same split, and record both models' metrics and the gap.")
    var utilityBaseline = false
    @Flag(name: .long, help: "Record FGSM and PGD accuracy of the classification heads at L-inf radii 0.05, 0.1, 0.25 and 0.5.")
    var robustness = false
    @Option(name: .long, help: "FGSM and PGD at these L-inf radii instead (comma-separated, in standard deviations of the features).")
    var robustnessEpsilons: String?
    @Flag(name: .long, help: "All of --membership, --utility-baseline and --robustness.")
    var evidence = false

    /// The recipe with the options' fields set.
    func apply(to loaded: TrainingRecipe) throws -> TrainingRecipe {
        var recipe = loaded
        if let auditCanaries { recipe.auditCanaries = auditCanaries }
        if membership || evidence { recipe.membershipAttack = true }
        if utilityBaseline || evidence { recipe.utilityBaseline = true }
        if let robustnessEpsilons {
            let values = robustnessEpsilons.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard !values.isEmpty, values.allSatisfy({ $0 != nil }) else {
                throw CLIError("--robustness-epsilons must be comma-separated numbers, got '\(robustnessEpsilons)'")
            }
            recipe.robustnessEpsilons = values.map { $0! }
        } else if robustness || evidence, recipe.robustnessEpsilons == nil {
            recipe.robustnessEpsilons = AdversarialRobustness.defaultEpsilons
        }
        if auditReport != nil, recipe.auditCanaries == nil { throw CLIError("--audit-report needs an audit: give --audit-canaries M") }
        try recipe.validate()
        return recipe
    }

    /// Writes the audit report where `--audit-report` asks.
    func writeReport(_ trained: TrainedModel) throws {
        guard let auditReport, let record = trained.audit else { return }
        try FileBytes.write(try record.reportJSON(), to: auditReport, mode: 0o600, overwrite: true)
    }

    /// Human lines for the evidence beside a proven ε.
    static func summary(_ evidence: Evidence?, proven epsilon: Double?, auditSeconds: Double?) -> [String] {
        guard let evidence else { return [] }
        func f(_ x: Double) -> String { String(format: "%.4f", x) }
        var lines: [String] = []
        if let a = evidence.audit {
            let proven = epsilon.map { " (proven epsilon \(f($0)))" } ?? ""
            lines.append(
                "audit: epsilon >= \(f(a.epsilonLowerBound)) at \(Int(a.confidence * 100))% confidence\(proven); \(a.canaries) canaries, "
                    + "\(a.correct) of \(a.guesses) guesses right (k+ \(a.kPlus), k- \(a.kMinus)), \(String(format: "%.2f", auditSeconds ?? 0)) s"
            )
        }
        if let m = evidence.membership {
            for (task, attacks) in m.tasks.sorted(by: { $0.key < $1.key }) {
                lines.append(
                    "membership \(task): loss attack AUC \(f(attacks.loss.auc)), TPR \(f(attacks.loss.tprAt1PctFPR)) at 1% FPR; "
                        + "population attack AUC \(f(attacks.population.auc)), TPR \(f(attacks.population.tprAt1PctFPR)) at FPR \(f(attacks.population.fpr ?? 0))"
                )
            }
        }
        if let u = evidence.utility {
            for (task, t) in u.tasks.sorted(by: { $0.key < $1.key }) {
                lines.append(
                    "utility \(task) \(t.metric): private \(f(t.privateValue)), non-private \(f(t.nonPrivate)), cost of privacy \(f(t.cost))"
                )
            }
        }
        if let r = evidence.robustness {
            let radii = r.epsilons.map { String(format: "%g", $0) }.joined(separator: "/")
            for (task, t) in r.tasks.sorted(by: { $0.key < $1.key }) {
                lines.append(
                    "robustness \(task): clean \(f(t.clean)); at L-inf \(radii): FGSM \(t.fgsm.map(f).joined(separator: "/")), PGD \(t.pgd.map(f).joined(separator: "/"))"
                )
            }
        }
        return lines
    }
}

extension JSONValue {
    /// Any encodable value as a JSON value (`null` for nil).
    init(encoding value: some Encodable) throws {
        self = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(value))
    }
}
