import CSodium

#if canImport(Glibc)
import Glibc
#endif

/// Gaussian noise for DP-SGD, from libsodium's CSPRNG (never from a seeded generator).
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

    /// Standard normals by Box–Muller on 53-bit uniforms from `randombytes_buf`.
    static func normals(_ count: Int) -> [Double] {
        _ = ready
        var bits = [UInt64](repeating: 0, count: count + count % 2)
        bits.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        var out: [Double] = []
        out.reserveCapacity(bits.count)
        for pair in stride(from: 0, to: bits.count, by: 2) {
            let u1 = (Double(bits[pair] >> 11) + 1) * 0x1.0p-53  // (0, 1]: log is finite
            let u2 = Double(bits[pair + 1] >> 11) * 0x1.0p-53
            let radius = (-2 * log(u1)).squareRoot()
            out.append(radius * cos(2 * Double.pi * u2))
            out.append(radius * sin(2 * Double.pi * u2))
        }
        return Array(out.prefix(count))
    }
}
