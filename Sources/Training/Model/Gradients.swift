#if canImport(Glibc)
import Glibc
#endif

/// The result of one backward pass over a batch.
public struct BatchGradients: Sendable {
    /// `sum_i r_i * grad_i` per layer (trunk then heads), with `r_i` the clipping factor (1 when not clipping).
    public var layers: [(weight: [Float], bias: [Float])]
    /// Each example's gradient norm over all parameters jointly, before clipping; empty when not clipping.
    public var norms: [Float]
    /// Sum over the batch of each task's (unweighted) loss.
    public var taskLosses: [Double]
    /// With uncertainty weighting: `sum_i r_i * d(loss_i)/d(s_t)` for each task's log-variance `s_t`.
    public var logVarianceGradients: [Float] = []

    /// Adds the gradients of other rows of the same step, with the same clipping: the sums of the two sets of rows.
    mutating func add(_ other: BatchGradients) {
        func add(_ values: inout [Float], _ more: [Float]) {
            values.withUnsafeMutableBufferPointer { v in more.withUnsafeBufferPointer { m in for k in v.indices { v[k] += m[k] } } }
        }
        for l in layers.indices {
            add(&layers[l].weight, other.layers[l].weight)
            add(&layers[l].bias, other.layers[l].bias)
        }
        norms += other.norms
        taskLosses = zip(taskLosses, other.taskLosses).map(+)
        add(&logVarianceGradients, other.logVarianceGradients)
    }
}

extension MultiTaskModel {
    /// Gradients of the batch's summed loss, with optional per-example clipping to `clipNorm`.
    ///
    /// Per-example gradients are never materialised: for a dense layer the per-example gradient is
    /// `g_i a_i^T` (plus `g_i` for the bias), whose squared norm is `|g_i|^2 (|a_i|^2 + 1)` (the
    /// "ghost norm"); the norms over all layers give the clipping factors `r_i = min(1, C / |grad_i|)`,
    /// and the clipped sum is `sum_i r_i g_i a_i^T = G^T diag(r) A`, from the same backward pass.
    ///
    /// - Parameters:
    ///   - targets: one array of `n` values per task: class index, 0/1, or the regression target.
    ///   - logVariances: uncertainty weighting (Kendall, Gal, Cipolla 2018): each example's loss is
    ///     `sum_t exp(-s_t) w_t loss_t + s_t`, and the `s_t` are parameters too, their per-example gradients
    ///     `1 - exp(-s_t) w_t loss_t` counted in the clipping norm. `nil` for fixed weights.
    public func gradients(_ x: [Float], count n: Int, targets: [[Float]], clipNorm: Float?, logVariances: [Float]? = nil) -> BatchGradients {
        let tasks = architecture.tasks
        let pass = backward(x, count: n, targets: targets, logVariances: logVariances)
        let trace = pass.trace
        let last = trace.activations[trace.activations.count - 1]
        // Uncertainty weighting: each s_t is a scalar parameter with per-example gradient 1 - exp(-s_t) w_t loss_t.
        let logVarianceExampleGradients: [[Float]] =
            logVariances == nil ? [] : tasks.indices.map { t in (0..<n).map { 1 - pass.weights[t] * pass.exampleLosses[t][$0] } }
        // The norms only serve clipping: without it they are not computed (about 1% of a step's instructions).
        var norms: [Float] = []
        if clipNorm != nil {
            var squaredNorms = ghostSquaredNorms(pass, count: n)
            for g in logVarianceExampleGradients { for i in 0..<n { squaredNorms[i] += g[i] * g[i] } }
            norms = squaredNorms.map { $0.squareRoot() }
        }
        // Opacus's factor: C / (norm + 1e-6), capped at 1.
        let factors = clipNorm.map { c in norms.map { min(1, c / ($0 + 1e-6)) } } ?? [Float](repeating: 1, count: n)

        var layers: [(weight: [Float], bias: [Float])] = []
        for (l, layer) in trunk.enumerated() {
            layers.append(layer.weightedGradients(pass.trunkGradients[l], activations: trace.activations[l], weights: factors, count: n))
        }
        for (t, head) in heads.enumerated() {
            layers.append(head.weightedGradients(pass.headGradients[t], activations: last, weights: factors, count: n))
        }
        let logVarianceGradients = logVarianceExampleGradients.map { g in zip(g, factors).reduce(Float(0)) { $0 + $1.0 * $1.1 } }
        return BatchGradients(layers: layers, norms: norms, taskLosses: pass.taskLosses, logVarianceGradients: logVarianceGradients)
    }

    /// The gradient of task `task`'s summed (unweighted) loss with respect to the inputs, `n x inputs`: what FGSM and
    /// PGD step along.
    func inputGradients(_ x: [Float], count n: Int, targets: [[Float]], task: Int) -> [Float] {
        let trace = trace(x, count: n)
        var delta = heads[task].backward(
            headGradient(task: task, outputs: trace.outputs[task], targets: targets[task], weight: 1, count: n).g,
            count: n
        )
        for l in stride(from: trunk.count - 1, through: 0, by: -1) {
            architecture.activation.backpropagate(&delta, preActivations: trace.preActivations[l])
            delta = trunk[l].backward(delta, count: n)
        }
        return delta
    }

    /// What one backward pass keeps: the forward trace, each layer's output gradients and each task's losses.
    struct BackwardPass {
        var trace: Trace
        /// dLoss/dOutput of each head, scaled by the task's weight (`n x outputs` each).
        var headGradients: [[Float]]
        /// dLoss/dPreActivation of each trunk layer.
        var trunkGradients: [[Float]]
        /// Each task's per-example (unweighted) loss, and its sum over the batch.
        var exampleLosses: [[Float]]
        var taskLosses: [Double]
        /// The effective task weights `w_t exp(-s_t)`.
        var weights: [Float]
    }

    func backward(_ x: [Float], count n: Int, targets: [[Float]], logVariances: [Float]?) -> BackwardPass {
        let tasks = architecture.tasks
        let weights = zip(tasks, logVariances ?? tasks.map { _ in 0 }).map { $0.weight * expf(-$1) }
        let trace = trace(x, count: n)
        var headGradients: [[Float]] = []
        var exampleLosses: [[Float]] = []
        for t in tasks.indices {
            let (g, losses) = headGradient(task: t, outputs: trace.outputs[t], targets: targets[t], weight: weights[t], count: n)
            headGradients.append(g)
            exampleLosses.append(losses)
        }
        let taskLosses = exampleLosses.map { $0.reduce(0) { $0 + Double($1) } }

        // Back through the trunk, keeping each layer's output gradient for the weighted sums.
        var delta = [Float](repeating: 0, count: n * (architecture.trunk.last ?? architecture.inputs))
        for (t, head) in heads.enumerated() { head.backward(headGradients[t], count: n, addingTo: &delta) }
        var trunkGradients = [[Float]](repeating: [], count: trunk.count)
        for l in stride(from: trunk.count - 1, through: 0, by: -1) {
            architecture.activation.backpropagate(&delta, preActivations: trace.preActivations[l])
            trunkGradients[l] = delta
            if l > 0 { delta = trunk[l].backward(trunkGradients[l], count: n) }
        }
        return BackwardPass(
            trace: trace,
            headGradients: headGradients,
            trunkGradients: trunkGradients,
            exampleLosses: exampleLosses,
            taskLosses: taskLosses,
            weights: weights
        )
    }

    /// dLoss/dOutput of one head for each example, scaled by `weight`, and each example's (unweighted) loss.
    func headGradient(task t: Int, outputs z: [Float], targets: [Float], weight w: Float, count n: Int) -> (g: [Float], losses: [Float]) {
        let task = architecture.tasks[t]
        var g = [Float](repeating: 0, count: z.count)
        var losses = [Float](repeating: 0, count: n)
        for i in 0..<n {
            let y = targets[i]
            switch task.kind {
            case .classification:
                // Softmax in place in g (no array per example), then its gradient p - onehot.
                let k = task.classes
                let base = i * k
                var top = z[base]
                for c in 1..<k { top = max(top, z[base + c]) }
                var sum: Float = 0
                for c in 0..<k {
                    let e = expf(z[base + c] - top)
                    g[base + c] = e
                    sum += e
                }
                let label = Int(y)
                losses[i] = -logf(max(g[base + label] / sum, 1e-30))
                for c in 0..<k { g[base + c] = w * (g[base + c] / sum - (c == label ? 1 : 0)) }
            case .binary:
                // log(1 + e^z) - y z, stably.
                losses[i] = max(z[i], 0) - z[i] * y + log1pf(expf(-abs(z[i])))
                g[i] = w * (sigmoid(z[i]) - y)
            case .regression:
                let d = z[i] - y
                losses[i] = d * d
                g[i] = w * 2 * d
            }
        }
        return (g, losses)
    }

    /// Ghost norms: |grad_i|^2 = sum over layers of |g_i|^2 (|a_i|^2 + 1). Each activation's row norms are computed
    /// once (the heads share the trunk's output), eight lanes at a time.
    func ghostSquaredNorms(_ pass: BackwardPass, count n: Int) -> [Float] {
        var squaredNorms = [Float](repeating: 0, count: n)
        func rowSquaredNorms(_ m: [Float], width: Int) -> [Float] {
            m.withUnsafeBufferPointer { m in (0..<n).map { i in MatrixKernels.dot(m.baseAddress! + i * width, m.baseAddress! + i * width, width) } }
        }
        func accumulate(_ g: [Float], outputs: Int, activationNorms aa: [Float]) {
            let gg = rowSquaredNorms(g, width: outputs)
            for i in 0..<n { squaredNorms[i] += gg[i] * (aa[i] + 1) }
        }
        let trace = pass.trace
        let activationNorms = zip(trace.activations, [architecture.inputs] + architecture.trunk).map { rowSquaredNorms($0, width: $1) }
        for (l, layer) in trunk.enumerated() {
            accumulate(pass.trunkGradients[l], outputs: layer.outputs, activationNorms: activationNorms[l])
        }
        for (t, head) in heads.enumerated() {
            accumulate(pass.headGradients[t], outputs: head.outputs, activationNorms: activationNorms[activationNorms.count - 1])
        }
        return squaredNorms
    }

    /// The batch's summed, weighted loss (for tests and reporting).
    public func loss(_ x: [Float], count n: Int, targets: [[Float]]) -> Double {
        let result = gradients(x, count: n, targets: targets, clipNorm: nil)
        return zip(result.taskLosses, architecture.tasks).reduce(0) { $0 + $1.0 * Double($1.1.weight) }
    }
}
