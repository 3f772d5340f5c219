#if canImport(Glibc)
import Glibc
#endif

/// The one-run audit's head on the trunk: a fixed random projection of the trunk's output to ``width`` dimensions,
/// then a trained dense layer to one logit per canary, softmax cross-entropy against the canary's own class.
///
/// Why a projection: the head has `M x (width + 1)` trained parameters, and every step draws noise for, adds noise
/// to and updates each of them. On the trunk's full output (256 wide in the benchmark model) 1000 canaries tripled the
/// parameters and made training 2.4x slower (tools/bench/audit); through 8 fixed directions they add 9,000. The
/// projection has no parameters: its entries are N(0, 1/width) from a seeded generator, fixed before training, so
/// `|P h|` is about `|h|` and the canary's own row still carries most of its clipped gradient.
public struct AuditHead: Sendable {
    /// Dimensions of the projection.
    public static let width = 8

    /// `width x trunk output`, fixed; bias zero.
    public let projection: DenseLayer
    /// `canaries x width`, trained; zero at the start.
    public var layer: DenseLayer

    init(trunkOutput: Int, canaries: Int, seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        var projection = DenseLayer(inputs: trunkOutput, outputs: Self.width)
        // Box–Muller normals of variance 1/width.
        let scale = 1 / Double(Self.width).squareRoot()
        projection.weight = (0..<(trunkOutput * Self.width)).map { _ in
            let u1 = max(Double(generator.next() >> 11) * 0x1.0p-53, .leastNonzeroMagnitude)
            let u2 = Double(generator.next() >> 11) * 0x1.0p-53
            return Float(scale * (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
        }
        self.projection = projection
        layer = DenseLayer(inputs: Self.width, outputs: canaries)
    }

    /// The projected trunk output `P h` of `n` rows.
    func features(_ model: MultiTaskModel, _ x: [Float], count n: Int) -> [Float] {
        projection.forward(model.trace(x, count: n).activations.last!, count: n)
    }
}

extension MultiTaskModel {
    /// The clipped, summed gradients of `n` canary rows, each of class `classes[i]` of the audit head: as
    /// ``gradients(_:count:targets:clipNorm:logVariances:)`` computes them for data rows (ghost norms over the trunk
    /// and the audit head's layer together, Opacus's factor), with the projection passed through but not trained.
    ///
    /// - Returns: one `(weight, bias)` per trunk layer, then the audit head layer's.
    func auditGradients(_ x: [Float], count n: Int, classes: [Float], head: AuditHead, clipNorm: Float?) -> [(weight: [Float], bias: [Float])] {
        let trace = trace(x, count: n)
        let h = trace.activations.last!
        let projected = head.projection.forward(h, count: n)
        let z = head.layer.forward(projected, count: n)
        let m = head.layer.outputs
        // Softmax cross-entropy gradient p - onehot, in place.
        var g = z
        for i in 0..<n {
            let row = (i * m)..<((i + 1) * m)
            let top = g[row].max() ?? 0
            var sum: Float = 0
            for k in row {
                g[k] = expf(g[k] - top)
                sum += g[k]
            }
            for k in row { g[k] /= sum }
            g[i * m + Int(classes[i])] -= 1
        }
        var delta = head.projection.backward(head.layer.backward(g, count: n), count: n)
        var trunkGradients = [[Float]](repeating: [], count: trunk.count)
        for l in stride(from: trunk.count - 1, through: 0, by: -1) {
            architecture.activation.backpropagate(&delta, preActivations: trace.preActivations[l])
            trunkGradients[l] = delta
            if l > 0 { delta = trunk[l].backward(delta, count: n) }
        }
        // Ghost norms, as for data rows: |g_i|^2 (|a_i|^2 + 1) summed over the trained layers.
        var squared = [Float](repeating: 0, count: n)
        func accumulate(_ g: [Float], outputs: Int, _ a: [Float], inputs: Int) {
            for i in 0..<n {
                var gg: Float = 0
                for o in 0..<outputs { gg += g[i * outputs + o] * g[i * outputs + o] }
                var aa: Float = 1
                for k in 0..<inputs { aa += a[i * inputs + k] * a[i * inputs + k] }
                squared[i] += gg * aa
            }
        }
        for (l, layer) in trunk.enumerated() { accumulate(trunkGradients[l], outputs: layer.outputs, trace.activations[l], inputs: layer.inputs) }
        accumulate(g, outputs: m, projected, inputs: AuditHead.width)
        let factors = clipNorm.map { c in squared.map { min(1, c / ($0.squareRoot() + 1e-6)) } } ?? [Float](repeating: 1, count: n)
        var out: [(weight: [Float], bias: [Float])] = []
        for (l, layer) in trunk.enumerated() {
            out.append(layer.weightedGradients(trunkGradients[l], activations: trace.activations[l], weights: factors, count: n))
        }
        out.append(head.layer.weightedGradients(g, activations: projected, weights: factors, count: n))
        return out
    }
}
