import CSodium
import CofferCrypto

/// Fixed-point quantization of model updates into the ring Z_{2^64}, with stochastic rounding.
///
/// A coordinate x is clipped to [-c, c] and mapped to y = (x + c) * s with s = (2^b - 1) / (2c); its integer is
/// floor(y) + 1 with probability frac(y), else floor(y), so it is unbiased: E[q] = y. The uniforms come from a CSPRNG
/// (the ChaCha20 keystream under a fresh key from libsodium's `randombytes_buf`), never from a seeded generator, since
/// the rounding noise is part of what the aggregate reveals. A site with weight w sends w * q for each coordinate and w itself as
/// one more element; the sum of n such vectors decodes to the weighted mean of the clipped updates with an error below
/// 1/s = 2c / (2^b - 1) per coordinate (each q is within 1 of its y, and a weighted mean of errors below 1 is below 1),
/// and zero in expectation. Nothing wraps as long as (sum of weights) * (2^b - 1) < 2^64, which
/// ``validate(maximumWeight:sites:)`` checks.
///
/// ```swift
/// let quantizer = try Quantizer(clipRange: 8, bits: 22)
/// quantizer.encode(update, weight: 120, into: vector)       // vector.count == update.count + 1
/// let (mean, totalWeight) = quantizer.decodeMean(sum)
/// ```
public struct Quantizer: Sendable, Equatable {
    /// c: coordinates are clipped to [-c, c].
    public let clipRange: Double
    /// b: each clipped coordinate becomes an integer in [0, 2^b - 1].
    public let bits: Int

    public init(clipRange: Double, bits: Int) throws(FederatedError) {
        guard clipRange > 0, clipRange.isFinite else { throw .invalidParameter("the clipping range must be > 0, got \(clipRange)") }
        guard (8...32).contains(bits) else { throw .invalidParameter("quantization bits must be 8 to 32, got \(bits)") }
        self.clipRange = clipRange
        self.bits = bits
    }

    /// 2^b - 1, the largest quantized value.
    public var levels: UInt64 { (1 << UInt64(bits)) - 1 }
    /// s = (2^b - 1) / (2c): quantized units per unit of the update.
    public var scale: Double { Double(levels) / (2 * clipRange) }
    /// The largest error of one decoded coordinate of a weighted mean: 1/s.
    public var errorBound: Double { 1 / scale }

    /// Refuses parameters under which a sum could wrap around 2^64.
    public func validate(maximumWeight: UInt64, sites: Int) throws(FederatedError) {
        let (product, overflow) = maximumWeight.multipliedReportingOverflow(by: levels)
        let (total, overflow2) = product.multipliedReportingOverflow(by: UInt64(max(sites, 1)))
        guard !overflow, !overflow2, total < UInt64.max else {
            throw .invalidParameter("\(sites) sites of weight up to \(maximumWeight) at \(bits) bits could wrap the 64-bit ring")
        }
    }

    /// Writes `weight * q(x_j)` for each coordinate, then `weight`, into `vector` (count: `values.count + 1`), adding to
    /// what is there (mod 2^64). Returns how many coordinates were clipped.
    ///
    /// - Parameter expander: supplies the uniforms, as a ChaCha20 keystream under a fresh random key.
    @discardableResult
    public func encode(
        _ values: [Float],
        weight: UInt64,
        into vector: UnsafeMutableBufferPointer<UInt64>,
        expander: MaskExpander = MaskExpander()
    ) -> Int {
        precondition(vector.count == values.count + 1, "the vector holds the values and the weight")
        let c = clipRange
        let s = scale
        let top = Double(levels)
        var clipped = 0
        let key = SecureBytes.random(count: 32)
        values.withUnsafeBufferPointer { x in
            key.withUnsafeBytes { key in
                expander.keystream(seed: key.baseAddress!, count: x.count) { start, u in
                    for k in 0..<u.count {
                        let j = start + k
                        var v = Double(x[j])
                        if !(v >= -c && v <= c) {
                            clipped += 1
                            v = v.isNaN ? 0 : min(max(v, -c), c)
                        }
                        let y = min(max((v + c) * s, 0), top)
                        let low = y.rounded(.down)
                        // u is uniform on [0, 1) in steps of 2^-53: P(u < frac) = frac, exactly for any double frac.
                        let q = UInt64(low) + (Double(UInt64(littleEndian: u[k]) >> 11) * 0x1.0p-53 < y - low ? 1 : 0)
                        vector[j] &+= weight &* q
                    }
                }
            }
        }
        vector[values.count] &+= weight
        return clipped
    }

    /// Decodes a sum of encoded vectors to the weighted mean of the updates and the total weight.
    public func decodeMean(_ sum: [UInt64]) -> (mean: [Double], totalWeight: UInt64) {
        let weight = sum[sum.count - 1]
        guard weight > 0 else { return ([Double](repeating: 0, count: sum.count - 1), 0) }
        let divisor = Double(weight) * scale
        let c = clipRange
        return (sum.dropLast().map { Double($0) / divisor - c }, weight)
    }

    /// Decodes a sum of encoded vectors to the weighted sum of the updates (what DP-FedAvg noises) and the total weight.
    public func decodeSum(_ sum: [UInt64]) -> (sum: [Double], totalWeight: UInt64) {
        let weight = sum[sum.count - 1]
        let s = scale
        let offset = clipRange * Double(weight)
        return (sum.dropLast().map { Double($0) / s - offset }, weight)
    }
}

/// Exact fixed-point encoding of signed reals (the feature statistics round): round(x * 2^16) as a two's-complement
/// element of Z_{2^64}. Sums stay exact while every partial sum's magnitude is below 2^47 (about 1.4e14).
public enum FixedPoint {
    public static let fractionBits = 16

    public static func encode(_ x: Double) -> UInt64 { UInt64(bitPattern: Int64((x * Double(1 << fractionBits)).rounded())) }

    public static func decode(_ element: UInt64) -> Double { Double(Int64(bitPattern: element)) / Double(1 << fractionBits) }

    /// The largest magnitude a value (or a sum of values) may have.
    public static let limit = Double(1 << 47)
}
