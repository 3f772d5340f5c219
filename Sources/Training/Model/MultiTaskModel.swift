#if canImport(Glibc)
import Glibc
#endif

/// A dense layer: `weight` is `outputs x inputs`, row-major (PyTorch's layout), then `bias`.
public struct DenseLayer: Sendable, Equatable {
    public let inputs: Int
    public let outputs: Int
    public var weight: [Float]
    public var bias: [Float]

    /// A layer of zeros.
    init(inputs: Int, outputs: Int) {
        self.inputs = inputs
        self.outputs = outputs
        weight = [Float](repeating: 0, count: inputs * outputs)
        bias = [Float](repeating: 0, count: outputs)
    }

    init(inputs: Int, outputs: Int, generator: inout SeededGenerator) {
        self.inputs = inputs
        self.outputs = outputs
        // Uniform(-1/sqrt(in), 1/sqrt(in)), as torch.nn.Linear initialises.
        let bound = 1 / Float(inputs).squareRoot()
        weight = (0..<(inputs * outputs)).map { _ in generator.uniform(-bound, bound) }
        bias = (0..<outputs).map { _ in generator.uniform(-bound, bound) }
    }

    /// `out[n x outputs] = x[n x inputs] W^T + b`.
    func forward(_ x: [Float], count n: Int) -> [Float] {
        guard n > 0 else { return [] }
        var out = [Float](unsafeUninitializedCapacity: n * outputs) { out, initialized in
            bias.withUnsafeBufferPointer { bias in
                for i in 0..<n { (out.baseAddress! + i * outputs).initialize(from: bias.baseAddress!, count: outputs) }
            }
            initialized = n * outputs
        }
        MatrixKernels.multiplyTransposed(x, weight, into: &out, m: n, n: outputs, k: inputs)
        return out
    }

    /// `dx[n x inputs] = g[n x outputs] W`.
    func backward(_ g: [Float], count n: Int) -> [Float] {
        var dx = [Float](repeating: 0, count: n * inputs)
        backward(g, count: n, addingTo: &dx)
        return dx
    }

    /// `dx[n x inputs] += g[n x outputs] W`: the heads' input gradients summed into one array.
    func backward(_ g: [Float], count n: Int, addingTo dx: inout [Float]) {
        guard n > 0 else { return }
        MatrixKernels.multiply(g, weight, into: &dx, m: n, n: inputs, k: outputs)
    }

    /// Gradients `sum_i r_i g_i a_i^T = (diag(r) G)^T A` and `sum_i r_i g_i` (per-example weights `r`: clipping factors, or 1).
    func weightedGradients(_ g: [Float], activations a: [Float], weights r: [Float], count n: Int) -> (weight: [Float], bias: [Float]) {
        var dw = [Float](repeating: 0, count: outputs * inputs)
        var db = [Float](repeating: 0, count: outputs)
        guard n > 0 else { return (dw, db) }
        // Unit weights (training without clipping) use g as it is: no scaled copy of it.
        var scaled = g
        if !r.allSatisfy({ $0 == 1 }) {
            scaled.withUnsafeMutableBufferPointer { scaled in
                for i in 0..<n { for o in 0..<outputs { scaled[i * outputs + o] *= r[i] } }
            }
        }
        scaled.withUnsafeBufferPointer { scaled in
            db.withUnsafeMutableBufferPointer { db in
                for i in 0..<n { MatrixKernels.axpy(1, scaled.baseAddress! + i * outputs, db.baseAddress!, outputs) }
            }
        }
        MatrixKernels.multiplyFirstTransposed(scaled, a, into: &dw, m: outputs, n: inputs, k: n)
        return (dw, db)
    }
}

/// A multi-task network: trunk layers with an activation, then one linear head per task on the last trunk output.
public struct MultiTaskModel: Sendable, Equatable {
    public let architecture: Architecture
    public var trunk: [DenseLayer]
    public var heads: [DenseLayer]

    /// A freshly initialised model; the same seed gives the same weights.
    public init(architecture: Architecture, seed: UInt64) throws(CofferTrainingError) {
        try architecture.validate()
        self.architecture = architecture
        var generator = SeededGenerator(seed: seed)
        var width = architecture.inputs
        var trunk: [DenseLayer] = []
        for hidden in architecture.trunk {
            trunk.append(DenseLayer(inputs: width, outputs: hidden, generator: &generator))
            width = hidden
        }
        self.trunk = trunk
        self.heads = architecture.tasks.map { DenseLayer(inputs: width, outputs: $0.outputs, generator: &generator) }
    }

    /// A model over given layers: the audit's view of a trainer's trunk with its own head (no copy of the weights).
    init(architecture: Architecture, trunk: [DenseLayer], heads: [DenseLayer]) {
        self.architecture = architecture
        self.trunk = trunk
        self.heads = heads
    }

    /// Every layer, trunk first, then heads in task order: the order parameters and gradients are listed in.
    public var layers: [DenseLayer] { trunk + heads }

    public var parameterCount: Int { layers.reduce(0) { $0 + $1.weight.count + $1.bias.count } }

    /// What a forward pass keeps for the backward pass.
    struct Trace {
        /// Inputs of each trunk layer (the first is the batch itself), then the trunk's output.
        var activations: [[Float]]
        /// Pre-activations of each trunk layer.
        var preActivations: [[Float]]
        /// Raw head outputs (logits / values), one array per task.
        var outputs: [[Float]]
    }

    func trace(_ x: [Float], count n: Int) -> Trace {
        var activations = [x]
        var pre: [[Float]] = []
        var current = x
        for layer in trunk {
            let z = layer.forward(current, count: n)
            pre.append(z)
            current = architecture.activation.apply(z)
            activations.append(current)
        }
        return Trace(activations: activations, preActivations: pre, outputs: heads.map { $0.forward(current, count: n) })
    }

    /// Per-task predictions for `n` rows of `inputs` features: class probabilities, a probability, or a value.
    public func predict(_ x: [Float], count n: Int) -> [[Float]] {
        let outputs = trace(x, count: n).outputs
        return zip(architecture.tasks, outputs).map { task, z in
            switch task.kind {
            case .classification:
                return (0..<n).flatMap { i in softmax(Array(z[(i * task.classes)..<((i + 1) * task.classes)])) }
            case .binary: return z.map(sigmoid)
            case .regression: return z
            }
        }
    }
}

extension Architecture.Activation {
    /// The activation of every element, in one loop per kind (the compiler vectorises ReLU's).
    func apply(_ z: [Float]) -> [Float] {
        switch self {
        case .relu:
            [Float](unsafeUninitializedCapacity: z.count) { out, initialized in
                z.withUnsafeBufferPointer { z in for k in 0..<z.count { out[k] = max(0, z[k]) } }
                initialized = z.count
            }
        case .gelu: z.map(apply)
        }
    }

    /// `g *= derivative(pre)`, element by element: a gradient brought back through the activation.
    func backpropagate(_ g: inout [Float], preActivations pre: [Float]) {
        pre.withUnsafeBufferPointer { pre in
            g.withUnsafeMutableBufferPointer { g in
                switch self {
                case .relu: for k in 0..<g.count { g[k] = pre[k] > 0 ? g[k] : 0 }
                case .gelu: for k in 0..<g.count { g[k] *= derivative(pre[k]) }
                }
            }
        }
    }

    func apply(_ x: Float) -> Float {
        switch self {
        case .relu: max(0, x)
        // tanh approximation, as PyTorch's GELU(approximate="tanh").
        case .gelu: 0.5 * x * (1 + tanhf(0.797_884_56 * (x + 0.044_715 * x * x * x)))
        }
    }

    func derivative(_ x: Float) -> Float {
        switch self {
        case .relu:
            return x > 0 ? 1 : 0
        case .gelu:
            let t = tanhf(0.797_884_56 * (x + 0.044_715 * x * x * x))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.797_884_56 * (1 + 3 * 0.044_715 * x * x)
        }
    }
}

func sigmoid(_ x: Float) -> Float { x >= 0 ? 1 / (1 + expf(-x)) : expf(x) / (1 + expf(x)) }

func softmax(_ z: [Float]) -> [Float] {
    let top = z.max() ?? 0
    let e = z.map { expf($0 - top) }
    let sum = e.reduce(0, +)
    return e.map { $0 / sum }
}

/// A small, fast, seedable PRNG (SplitMix64) for everything that must be reproducible: initialisation and sampling.
/// DP noise never comes from here.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func uniform(_ low: Float, _ high: Float) -> Float {
        low + (high - low) * Float(Double(next() >> 11) * 0x1.0p-53)
    }
}
