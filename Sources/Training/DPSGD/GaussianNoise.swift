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
        [Float](unsafeUninitializedCapacity: count) { out, initialized in
            let samples = out
            switch mode {
            case .standard:
                normals(count) { i, z in samples[i] = Float(z * Double(std)) }
            case .secure:
                // Four draws summed have standard deviation 2: halved, the sum is N(0, std²) again.
                var sums = [Double](repeating: 0, count: count)
                defer { sums.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) } }
                for _ in 0..<4 { normals(count) { i, z in sums[i] += z } }
                for i in 0..<count { samples[i] = Float(sums[i] * Double(std) / 2) }
            }
            initialized = count
        }
    }

    /// Standard normals by Marsaglia's polar method on 53-bit uniforms from a CSPRNG stream, handed to `body` with
    /// their index, 0 to `count - 1`.
    ///
    /// The stream is libsodium's `randombytes_buf_deterministic` (ChaCha20) keyed with 32 fresh bytes from
    /// `randombytes_buf` (the operating system's generator) for every block: cryptographic randomness, without
    /// a system call per sample. The polar method needs no trigonometry, which makes it several times faster
    /// than Box–Muller here. Each draw goes straight to its place, without appending to an array. The stream's bytes
    /// determine the noise, and the noise must stay secret to protect what it hides: they are wiped before they are
    /// freed.
    static func normals(_ count: Int, _ body: (Int, Double) -> Void) {
        _ = ready
        var seed = [UInt8](repeating: 0, count: Int(randombytes_SEEDBYTES))
        defer { sodium_memzero(&seed, seed.count) }
        var n = 0
        // About 1.28 uniform pairs per accepted pair; draw in blocks and top up if a block falls short.
        while n < count {
            randombytes_buf(&seed, seed.count)
            let pairs = (count - n) / 2 * 135 / 100 + 16
            let bits = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 2 * pairs)
            defer {
                sodium_memzero(bits.baseAddress!, 16 * pairs)
                bits.deallocate()
            }
            randombytes_buf_deterministic(bits.baseAddress!, 16 * pairs, seed)
            var k = 0
            while k < bits.count && n < count {
                let u = Double(bits[k] >> 11) * 0x1.0p-52 - 1  // uniform in [-1, 1)
                let v = Double(bits[k + 1] >> 11) * 0x1.0p-52 - 1
                k += 2
                let s = u * u + v * v
                guard s > 0, s < 1 else { continue }
                let factor = (-2 * log(s) / s).squareRoot()
                body(n, u * factor)
                if n + 1 < count { body(n + 1, v * factor) }
                n += 2
            }
        }
    }
}
