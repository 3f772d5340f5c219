import CSodium

#if canImport(Glibc)
import Glibc
#endif

/// The canaries of a one-run audit (``OneRunAudit``): `count` synthetic rows, each included in the training data with
/// probability 1/2, independently, and each labelled with a class of its own in a head that only the audit has.
///
/// Why a head of their own: in a short DP-SGD run on a few tabular features, a canary labelled like the real tasks
/// shares every parameter it moves with thousands of real rows and the other canaries; its own push, `q·T` clipped
/// gradients against `√T` steps of everyone else's, drowns (measured: with the noise switched off, included and
/// excluded canaries' scores were indistinguishable, ε̂ = 0). Canary `c`'s class `c` has a row of the audit head that
/// no real row and (up to its softmax share) no other canary moves, so the audit reads the canary's own effect against
/// the DP noise alone: the white-box setting of Steinke, Nasr and Jagielski, reached through real examples.
///
/// Canary rows go through the trainer's Poisson sampler, per-example clipping (their gradient over the trunk and the
/// audit head, one ghost norm) and Gaussian noise exactly as real rows do. The audit head (``AuditHead``) is dropped
/// after training; the released trunk has been trained on the included canaries, as any one-run audit's model is.
///
/// Features are drawn in the standardised space the model sees, every coordinate `±(2 + 2u)` with a random sign and
/// `u` uniform in [0, 1): away from the data, so their trunk activations are large and distinct. Everything comes
/// from libsodium's CSPRNG unless a test supplies a generator; the inclusion bits are drawn last and read only by the
/// audit, after every score is fixed.
public struct AuditCanaries: Sendable {
    public let count: Int
    public let inputs: Int
    /// Standardised features, `count x inputs`, row-major.
    public let features: [Float]
    /// Whether each canary joined the training data.
    public let included: [Bool]
    /// Seeds the audit head's fixed projection (``AuditHead``); drawn before the inclusion bits.
    public let projectionSeed: UInt64

    public init<Generator: RandomNumberGenerator>(count: Int, inputs: Int, generator: inout Generator) {
        self.count = count
        self.inputs = inputs
        var features: [Float] = []
        features.reserveCapacity(count * inputs)
        for _ in 0..<(count * inputs) {
            let magnitude = Float(2 + 2 * Double(generator.next() >> 11) * 0x1.0p-53)
            features.append(generator.next() & 1 == 0 ? magnitude : -magnitude)
        }
        self.features = features
        projectionSeed = generator.next()
        included = (0..<count).map { _ in generator.next() & 1 == 1 }
    }

    /// Draws canaries from libsodium's CSPRNG.
    public init(count: Int, inputs: Int) {
        var generator = SodiumRandom()
        self.init(count: count, inputs: inputs, generator: &generator)
    }

    /// The included canaries as training rows: their features, and as their one target their own index (their class
    /// in the audit head).
    var includedRows: Dataset {
        let rows = included.indices.filter { included[$0] }
        var x: [Float] = []
        x.reserveCapacity(rows.count * inputs)
        for c in rows { x += features[(c * inputs)..<((c + 1) * inputs)] }
        return Dataset(features: x, targets: [rows.map(Float.init)], count: rows.count, inputs: inputs)
    }
}

/// 64-bit draws from libsodium's CSPRNG (`randombytes_buf`, the operating system's generator behind it).
public struct SodiumRandom: RandomNumberGenerator, Sendable {
    public init() { _ = GaussianNoise.ready }

    public mutating func next() -> UInt64 {
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { randombytes_buf($0.baseAddress!, 8) }
        return value
    }
}

extension Dataset {
    /// The rows `indices`, in that order.
    func subset(_ indices: [Int]) -> Dataset {
        let (x, targets) = rows(indices)
        return Dataset(features: x, targets: targets, count: indices.count, inputs: inputs)
    }
}
