import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// FGSM and PGD on models whose worst case is known.
@Suite(.ownThread)
struct AdversarialRobustnessTests {
    /// The input gradient agrees with central finite differences of the task's loss.
    @Test func inputGradientsMatchFiniteDifferences() throws {
        let model = try MultiTaskModel(architecture: GradientTests.architecture, seed: 4)
        var generator = SeededGenerator(seed: 2)
        let n = 4
        let x = (0..<(n * 3)).map { _ in generator.uniform(-2, 2) }
        let targets: [[Float]] = [[0, 2, 1, 1], [1, 0, 0, 1], [0.5, -1, 2, 0]]
        for task in 0..<3 {
            let analytic = model.inputGradients(x, count: n, targets: targets, task: task)
            for k in [0, 5, 11] {
                var plus = x
                var minus = x
                plus[k] += 1e-2
                minus[k] -= 1e-2
                func loss(_ input: [Float]) -> Double {
                    model.backward(input, count: n, targets: targets, logVariances: nil).taskLosses[task]
                }
                let numeric = (loss(plus) - loss(minus)) / 2e-2
                #expect(abs(numeric - Double(analytic[k])) <= 2e-2 * max(1, abs(numeric)), "task \(task), input \(k)")
            }
        }
    }

    /// Logistic regression (no trunk): the worst L∞ perturbation of size ε lowers every margin `y' (w·x + b)` by exactly
    /// ε|w|₁ (y' = ±1), and FGSM finds it in one step. So accuracy under attack is the fraction of margins above ε|w|₁.
    @Test func onALinearModelFGSMAndPGDReachTheExactWorstCase() throws {
        var model = try MultiTaskModel(architecture: Architecture(inputs: 3, trunk: [], tasks: [TaskSpec(name: "y", kind: .binary)]), seed: 1)
        model.heads[0].weight = [1.5, -0.5, 1.0]
        model.heads[0].bias = [0.2]
        var generator = SeededGenerator(seed: 7)
        let n = 3000
        let x = (0..<(n * 3)).map { _ in generator.uniform(-1, 1) }
        let y: [Float] = (0..<n).map { i in
            let z = 1.5 * x[3 * i] - 0.5 * x[3 * i + 1] + x[3 * i + 2] + 0.2
            return (z > 0) != (i % 10 == 0) ? 1 : 0  // a tenth mislabelled: accuracy 0.9 when clean
        }
        let data = Dataset(features: x, targets: [y], count: n, inputs: 3)
        let epsilons = [0.05, 0.1, 0.25]
        let result = try AdversarialRobustness.evaluate(model: model, data: data, epsilons: epsilons)
        let task = try #require(result.tasks["y"])
        func accuracyAbove(_ reduction: Float) -> Double {
            Double(
                (0..<n).filter { i in
                    let z = 1.5 * x[3 * i] - 0.5 * x[3 * i + 1] + x[3 * i + 2] + 0.2
                    return (y[i] == 1 ? z : -z) > reduction
                }.count
            ) / Double(n)
        }
        #expect(abs(task.clean - accuracyAbove(0)) < 1e-9)
        #expect(result.rows == AdversarialRobustness.maximumRows)
        for (e, epsilon) in epsilons.enumerated() {
            // The attack runs on the first 2000 rows; so does the reference.
            let expected =
                Double(
                    (0..<2000).filter { i in
                        let z = 1.5 * x[3 * i] - 0.5 * x[3 * i + 1] + x[3 * i + 2] + 0.2
                        return (y[i] == 1 ? z : -z) > Float(epsilon) * 3
                    }.count
                ) / 2000
            #expect(abs(task.fgsm[e] - expected) <= 1e-3, "epsilon \(epsilon): \(task.fgsm[e]) vs \(expected)")
            #expect(abs(task.pgd[e] - expected) <= 1e-3, "epsilon \(epsilon): \(task.pgd[e]) vs \(expected)")
        }
        #expect(accuracyAbove(0) > 0.85)
    }

    @Test func aDeeperModelLosesAccuracyAsTheRadiusGrowsAndPGDIsAtLeastAsStrong() throws {
        let recipe = try EvidenceSupport.recipe(rows: 1200, seed: 2) { r in
            r.privacy = false
            r.noiseMultiplier = nil
            r.robustnessEpsilons = [0.1, 0.5, 1.0]
        }
        let robustness = try #require(try TrainingRun.run(recipe).privacy.evidence?.robustness)
        #expect(Set(robustness.tasks.keys) == ["cls", "bin"], "regression heads are not attacked")
        for (name, task) in robustness.tasks {
            #expect(task.clean > 0.8, "\(name)")
            #expect(zip(task.fgsm, task.fgsm.dropFirst()).allSatisfy { $0 >= $1 }, "\(name): \(task.fgsm)")
            #expect(zip(task.pgd, task.fgsm).allSatisfy { $0 <= $1 + 0.02 }, "\(name): PGD \(task.pgd), FGSM \(task.fgsm)")
            #expect(task.pgd[2] < task.clean - 0.2, "\(name): a radius of one standard deviation hurts")
        }
    }

    @Test func badRadiiAreRefused() throws {
        let model = try MultiTaskModel(architecture: TrainerTests.architecture, seed: 1)
        let data = TrainerTests.synthetic(count: 10, seed: 1)
        #expect(throws: CofferTrainingError.invalidParameter("robustness epsilons must be finite and > 0, got -0.1")) {
            _ = try AdversarialRobustness.evaluate(model: model, data: data, epsilons: [0.1, -0.1])
        }
    }
}
