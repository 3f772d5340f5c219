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
            fill(out, standardDeviation: std, mode: mode)
            initialized = count
        }
    }

    /// Writes a sample of N(0, std²) to each element of `out`.
    static func fill(_ out: UnsafeMutableBufferPointer<Float>, standardDeviation std: Float, mode: Mode) {
        let count = out.count
        switch mode {
        case .standard:
            normals(count) { i, z in out[i] = Float(z * Double(std)) }
        case .secure:
            // Four draws summed have standard deviation 2: halved, the sum is N(0, std²) again.
            var sums = [Double](repeating: 0, count: count)
            defer { sums.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) } }
            for _ in 0..<4 { normals(count) { i, z in sums[i] += z } }
            for i in 0..<count { out[i] = Float(sums[i] * Double(std) / 2) }
        }
    }

    /// Standard normals by Marsaglia's polar method on 53-bit uniforms from a CSPRNG stream, handed to `body` with
    /// their index, 0 to `count - 1`.
    ///
    /// The stream is ChaCha20's keystream (RFC 8439, a nonce of zeros) under 32 fresh bytes from `randombytes_buf` (the
    /// operating system's generator) for every block: cryptographic randomness, without a system call per sample. The
    /// polar method needs no trigonometry, which makes it several times faster than Box–Muller here. The stream's bytes
    /// determine the noise, and the noise must stay secret to protect what it hides: they are wiped before they are
    /// freed, and so is the scratch below.
    ///
    /// The pairs go through in batches, one pass over the batch at a time: the candidates inside the unit circle are
    /// kept without a branch, then their logarithms are taken, then their factors. The draws and their order are those
    /// of one pair at a time.
    ///
    /// `seeding` fills each block's key: the operating system's generator, unless a test fixes it.
    @inline(__always)
    static func normals(
        _ count: Int,
        seeding: (UnsafeMutableRawBufferPointer) -> Void = { randombytes_buf($0.baseAddress!, $0.count) },
        _ body: (Int, Double) -> Void
    ) {
        _ = ready
        let batch = 256
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 4 * batch) { scratch in
            defer { sodium_memzero(scratch.baseAddress!, 8 * scratch.count) }
            let (u, v, s, factors) = (
                scratch.baseAddress!, scratch.baseAddress! + batch, scratch.baseAddress! + 2 * batch, scratch.baseAddress! + 3 * batch
            )
            var n = 0
            // About 1.28 uniform pairs per accepted pair; draw in blocks and top up if a block falls short.
            while n < count {
                let pairs = (count - n) / 2 * 135 / 100 + 16
                let bits = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 2 * pairs)
                defer {
                    sodium_memzero(bits.baseAddress!, 16 * pairs)
                    bits.deallocate()
                }
                freshKeystream(into: UnsafeMutableRawPointer(bits.baseAddress!), count: 16 * pairs, seeding: seeding)
                var first = 0
                while first < pairs && n < count {
                    var kept = 0
                    for pair in first..<min(first + batch, pairs) {
                        // Uniforms in [-1, 1), from 53 bits each (converted as signed: one instruction for it).
                        let a = Double(Int64(bitPattern: bits[2 * pair] >> 11)) * 0x1.0p-52 - 1
                        let b = Double(Int64(bitPattern: bits[2 * pair + 1] >> 11)) * 0x1.0p-52 - 1
                        let r = a * a + b * b
                        (u[kept], v[kept], s[kept]) = (a, b, r)
                        kept += r > 0 && r < 1 ? 1 : 0
                    }
                    first += batch
                    for j in 0..<kept { factors[j] = log(s[j]) }
                    for j in 0..<kept { factors[j] = (-2 * factors[j] / s[j]).squareRoot() }
                    for j in 0..<kept where n < count {
                        body(n, u[j] * factors[j])
                        if n + 1 < count { body(n + 1, v[j] * factors[j]) }
                        n += 2
                    }
                }
            }
        }
    }

    /// Writes `count` bytes of ChaCha20's keystream under a key that `seeding` fills and that is wiped at once: every
    /// block of DP-SGD's secret randomness (its noise, its batches) is drawn so. The key lives on the stack, never in
    /// an array that could be copied or freed unwiped.
    static func freshKeystream(into out: UnsafeMutableRawPointer, count: Int, seeding: (UnsafeMutableRawBufferPointer) -> Void) {
        withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { key in
            defer { sodium_memzero(key.baseAddress!, key.count) }
            seeding(key)
            keystream(into: out, count: count, key: key.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Writes `count` bytes of ChaCha20's keystream under `key` (32 bytes) from block 0 on (``ChaCha20Keystream``;
    /// `openSSL` false takes libsodium's, which tests compare).
    static func keystream(into out: UnsafeMutableRawPointer, count: Int, key: UnsafePointer<UInt8>, openSSL: Bool = ChaCha20Keystream.openSSL) {
        ChaCha20Keystream.withContext(openSSL: openSSL) { context in
            ChaCha20Keystream.write(into: out.assumingMemoryBound(to: UInt8.self), count: count, key: key, context: context)
        }
    }
}
