import CSodium

#if canImport(Glibc)
import Glibc
#endif

/// Gaussian noise for DP-SGD, from a CSPRNG seeded by the operating system through libsodium (never from a seeded generator).
///
/// Floating-point caveat (Mironov 2012, "On significance of the least significant bits for differential
/// privacy"): a textbook Gaussian sampler in floating point leaves gaps and biases in its low-order bits
/// that can, in principle, reveal the unnoised value. The `secure` mode follows Opacus's secure_mode:
/// each coordinate is the sum of four independent Gaussians of standard deviation σ, halved (still
/// N(0, σ²)), which smooths the low-order bits at four times the sampling cost. Neither mode is a
/// discrete Gaussian with an exact privacy proof; see docs/FORMAT.md, "privacy.json".
public enum GaussianNoise {
    public enum Mode: String, Sendable, Codable {
        case standard, secure
    }

    static let ready: Void = {
        guard sodium_init() >= 0 else { fatalError("libsodium failed to initialise: no usable random source") }
    }()

    /// `count` samples of N(0, std²).
    public static func sample(count: Int, standardDeviation std: Float, mode: Mode = .standard) -> [Float] {
        switch mode {
        case .standard:
            return normals(count).map { Float($0 * Double(std)) }
        case .secure:
            let draws = normals(4 * count)
            return (0..<count).map { i in Float((draws[4 * i] + draws[4 * i + 1] + draws[4 * i + 2] + draws[4 * i + 3]) * Double(std) / 2) }
        }
    }

    /// Standard normals by Marsaglia's polar method on 53-bit uniforms from a CSPRNG stream.
    ///
    /// The stream is libsodium's `randombytes_buf_deterministic` (ChaCha20) keyed with 32 fresh bytes from
    /// `randombytes_buf` (the operating system's generator) for every call: cryptographic randomness, without
    /// a system call per sample. The polar method needs no trigonometry, which makes it several times faster
    /// than Box–Muller here.
    static func normals(_ count: Int) -> [Double] {
        _ = ready
        var out: [Double] = []
        out.reserveCapacity(count + 1)
        var seed = [UInt8](repeating: 0, count: Int(randombytes_SEEDBYTES))
        defer { sodium_memzero(&seed, seed.count) }
        // About 1.28 uniform pairs per accepted pair; draw in blocks and top up if a block falls short.
        while out.count < count {
            randombytes_buf(&seed, seed.count)
            let pairs = (count - out.count) / 2 * 135 / 100 + 16
            var bits = [UInt64](repeating: 0, count: 2 * pairs)
            bits.withUnsafeMutableBytes { randombytes_buf_deterministic($0.baseAddress!, $0.count, seed) }
            var k = 0
            while k < bits.count && out.count < count {
                let u = Double(bits[k] >> 11) * 0x1.0p-52 - 1  // uniform in [-1, 1)
                let v = Double(bits[k + 1] >> 11) * 0x1.0p-52 - 1
                k += 2
                let s = u * u + v * v
                guard s > 0, s < 1 else { continue }
                let factor = (-2 * log(s) / s).squareRoot()
                out.append(u * factor)
                out.append(v * factor)
            }
        }
        return Array(out.prefix(count))
    }
}
