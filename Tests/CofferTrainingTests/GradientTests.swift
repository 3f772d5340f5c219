import CofferTestSupport
import Testing

@testable import CofferTraining

@Suite(.ownThread)
struct GradientTests {
    static let architecture = Architecture(
        inputs: 3,
        trunk: [5, 4],
        activation: .gelu,
        tasks: [
            TaskSpec(name: "health", kind: .classification, classes: 3, weight: 0.7),
            TaskSpec(name: "limited", kind: .binary, weight: 1.3),
            TaskSpec(name: "visits", kind: .regression),
        ]
    )

    private func batch(_ n: Int, seed: UInt64) -> ([Float], [[Float]]) {
        var g = SeededGenerator(seed: seed)
        let x = (0..<(n * 3)).map { _ in g.uniform(-2, 2) }
        let targets: [[Float]] = [
            (0..<n).map { _ in Float(Int(g.next() % 3)) }, (0..<n).map { _ in Float(g.next() % 2) }, (0..<n).map { _ in g.uniform(-1, 3) },
        ]
        return (x, targets)
    }

    /// The analytic gradient of the summed loss agrees with central finite differences, for every layer.
    @Test(arguments: [Architecture.Activation.gelu, .relu])
    func gradientMatchesFiniteDifferences(activation: Architecture.Activation) throws {
        var architecture = Self.architecture
        architecture.activation = activation
        let model = try MultiTaskModel(architecture: architecture, seed: 42)
        let (x, targets) = batch(6, seed: 1)
        let analytic = model.gradients(x, count: 6, targets: targets, clipNorm: nil)
        let h: Float = 1e-2
        for layerIndex in 0..<model.layers.count {
            for p in [0, model.layers[layerIndex].weight.count - 1] {
                var plus = model
                var minus = model
                if layerIndex < model.trunk.count {
                    plus.trunk[layerIndex].weight[p] += h
                    minus.trunk[layerIndex].weight[p] -= h
                } else {
                    plus.heads[layerIndex - model.trunk.count].weight[p] += h
                    minus.heads[layerIndex - model.trunk.count].weight[p] -= h
                }
                let numeric = (plus.loss(x, count: 6, targets: targets) - minus.loss(x, count: 6, targets: targets)) / Double(2 * h)
                let value = Double(analytic.layers[layerIndex].weight[p])
                #expect(abs(numeric - value) <= 2e-2 * max(1, abs(numeric)), "layer \(layerIndex) weight \(p): \(value) vs \(numeric)")
            }
        }
    }

    /// Ghost clipping equals computing, clipping and summing each example's gradient one by one.
    @Test func ghostClippingEqualsExplicitPerExampleClipping() throws {
        let model = try MultiTaskModel(architecture: Self.architecture, seed: 7)
        let n = 9
        let (x, targets) = batch(n, seed: 3)
        let clip: Float = 0.8
        let ghost = model.gradients(x, count: n, targets: targets, clipNorm: clip)
        var expected = model.layers.map { (weight: [Float](repeating: 0, count: $0.weight.count), bias: [Float](repeating: 0, count: $0.bias.count)) }
        for i in 0..<n {
            let single = model.gradients(Array(x[(i * 3)..<(i * 3 + 3)]), count: 1, targets: targets.map { [$0[i]] }, clipNorm: nil)
            let norm = single.layers.reduce(Float(0)) { $0 + $1.weight.reduce(0) { $0 + $1 * $1 } + $1.bias.reduce(0) { $0 + $1 * $1 } }.squareRoot()
            #expect(abs(norm - ghost.norms[i]) <= 1e-4 * max(1, norm), "ghost norm of example \(i)")
            let factor = min(1, clip / (norm + 1e-6))
            for l in expected.indices {
                for k in expected[l].weight.indices { expected[l].weight[k] += factor * single.layers[l].weight[k] }
                for k in expected[l].bias.indices { expected[l].bias[k] += factor * single.layers[l].bias[k] }
            }
        }
        #expect(ghost.norms.contains { $0 > clip }, "the test must actually clip something")
        for l in expected.indices {
            for k in expected[l].weight.indices { #expect(abs(expected[l].weight[k] - ghost.layers[l].weight[k]) <= 1e-4) }
            for k in expected[l].bias.indices { #expect(abs(expected[l].bias[k] - ghost.layers[l].bias[k]) <= 1e-4) }
        }
    }

    @Test func sameSeedSameModelAndPredictionsAreDistributions() throws {
        let a = try MultiTaskModel(architecture: Self.architecture, seed: 5)
        let b = try MultiTaskModel(architecture: Self.architecture, seed: 5)
        #expect(a == b)
        #expect(a != (try MultiTaskModel(architecture: Self.architecture, seed: 6)))
        let (x, _) = batch(4, seed: 2)
        let predictions = a.predict(x, count: 4)
        for i in 0..<4 { #expect(abs(predictions[0][(i * 3)..<(i * 3 + 3)].reduce(0, +) - 1) < 1e-5) }
        #expect(predictions[1].allSatisfy { $0 > 0 && $0 < 1 })
        #expect(a.parameterCount == (3 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3) + (4 + 1) + (4 + 1))
    }

    @Test func invalidArchitecturesNameTheProblem() {
        #expect(throws: CofferTrainingError.invalidParameter("task 'h': a classification needs >= 2 classes")) {
            _ = try MultiTaskModel(
                architecture: Architecture(inputs: 2, trunk: [3], tasks: [TaskSpec(name: "h", kind: .classification, classes: 1)]),
                seed: 1
            )
        }
        #expect(throws: CofferTrainingError.invalidParameter("task name 'a' is used twice")) {
            _ = try MultiTaskModel(
                architecture: Architecture(
                    inputs: 2,
                    trunk: [3],
                    tasks: [TaskSpec(name: "a", kind: .binary), TaskSpec(name: "a", kind: .regression)]
                ),
                seed: 1
            )
        }
    }
}
