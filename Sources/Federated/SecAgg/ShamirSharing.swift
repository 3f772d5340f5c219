import CSodium
public import CofferCrypto

/// Shamir secret sharing (Shamir 1979) of 32-byte secrets over GF(2^61 - 1): the mask seeds and X25519 mask keys of
/// secure aggregation.
///
/// A secret is cut into five little-endian chunks of 7, 7, 7, 7 and 4 bytes; each chunk is the constant term of its own
/// random polynomial of degree `threshold - 1`, and a share is the five polynomials evaluated at the holder's point
/// (its 1-based index in the round), five `u64` little-endian: 40 bytes. Any `threshold` shares give the secret back by
/// Lagrange interpolation at 0; fewer reveal nothing about it. Coefficients, secrets and shares stay in sodium memory.
///
/// ```swift
/// let seed = SecureBytes.random(count: 32)
/// let shares = Shamir.split(seed, threshold: 3, points: [1, 2, 3, 4])   // 4 x 40 bytes
/// let back = try Shamir.reconstruct(points: [1, 3, 4], shares: pickedShares)
/// ```
public enum Shamir {
    /// Bytes in one share.
    public static let shareSize = 40
    /// Bytes in a shared secret.
    public static let secretSize = 32
    static let chunkSizes = [7, 7, 7, 7, 4]

    /// Splits `secret` (32 bytes) into one share per point, concatenated in the order of `points`.
    ///
    /// - Parameters:
    ///   - threshold: shares needed to reconstruct, 1 to `points.count`.
    ///   - points: distinct non-zero evaluation points (the holders' indices).
    public static func split(_ secret: borrowing SecureBytes, threshold: Int, points: [UInt32]) -> SecureBytes {
        precondition(secret.count == secretSize, "Shamir shares 32-byte secrets")
        precondition(threshold >= 1 && threshold <= points.count, "threshold out of range")
        precondition(Set(points).count == points.count && !points.contains(0), "points must be distinct and non-zero")
        let chunks = chunkSizes.count
        // coefficients[c * threshold + i]: coefficient of x^i of chunk c's polynomial; i = 0 is the secret chunk.
        let coefficients = SecureBytes(count: chunks * threshold * 8)
        let out = SecureBytes(count: points.count * shareSize)
        coefficients.withUnsafeMutableBytes { raw in
            // Random coefficients are drawn in place, in sodium memory: 61 random bits each, drawn again (in place) in
            // the one case in 2^61 that they equal p, so each is uniform in GF(p).
            randombytes_buf(raw.baseAddress!, raw.count)
            let a = raw.bindMemory(to: UInt64.self)
            for k in 0..<a.count {
                a[k] &= PrimeField.p
                while a[k] == PrimeField.p {
                    randombytes_buf(a.baseAddress! + k, 8)
                    a[k] &= PrimeField.p
                }
            }
            secret.withUnsafeBytes { s in
                var offset = 0
                for (c, size) in chunkSizes.enumerated() {
                    a[c * threshold] = 0
                    for k in 0..<size { a[c * threshold] |= UInt64(s[offset + k]) << (8 * k) }
                    offset += size
                }
            }
            out.withUnsafeMutableBytes { outRaw in
                let shares = outRaw.bindMemory(to: UInt64.self)
                for (j, point) in points.enumerated() {
                    let x = UInt64(point)
                    for c in 0..<chunks {
                        // Horner's rule from the highest coefficient down.
                        var y: UInt64 = 0
                        for i in stride(from: threshold - 1, through: 0, by: -1) {
                            y = PrimeField.add(PrimeField.multiply(y, x), a[c * threshold + i])
                        }
                        shares[j * chunks + c] = y.littleEndian
                    }
                }
            }
        }
        return out
    }

    /// Reconstructs a secret from shares at `points` (concatenated in that order, 40 bytes each).
    ///
    /// Uses every share given: pass exactly `threshold` of them. Shares that do not come from one polynomial of degree
    /// below their count give a value outside the secret's range (refused) or a wrong secret, which callers detect by
    /// checking it against a public commitment.
    ///
    /// - Throws: ``FederatedError/malformedShare(_:)`` for a wrong size, an element outside the field, repeated or zero
    ///   points, or shares that interpolate to no valid secret.
    public static func reconstruct(points: [UInt32], shares: borrowing SecureBytes) throws(FederatedError) -> SecureBytes {
        guard !points.isEmpty, shares.count == points.count * shareSize else {
            throw .malformedShare("\(shares.count) bytes for \(points.count) shares of \(shareSize) bytes")
        }
        guard Set(points).count == points.count, !points.contains(0) else { throw .malformedShare("share points must be distinct and non-zero") }
        let chunks = chunkSizes.count
        // Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j). Points are public, so these are too.
        let xs = points.map { UInt64($0) }
        var basis = [UInt64](repeating: 0, count: xs.count)
        for j in xs.indices {
            var numerator: UInt64 = 1
            var denominator: UInt64 = 1
            for m in xs.indices where m != j {
                numerator = PrimeField.multiply(numerator, xs[m])
                denominator = PrimeField.multiply(denominator, PrimeField.subtract(xs[m], xs[j]))
            }
            basis[j] = PrimeField.multiply(numerator, PrimeField.inverse(denominator))
        }
        let secret = SecureBytes(count: secretSize)
        let valid = shares.withUnsafeBytes { raw -> Bool in
            let y = raw.bindMemory(to: UInt64.self)
            for k in 0..<(points.count * chunks) where UInt64(littleEndian: y[k]) >= PrimeField.p { return false }
            return secret.withUnsafeMutableBytes { out -> Bool in
                var offset = 0
                var inRange = true
                for (c, size) in chunkSizes.enumerated() {
                    var value: UInt64 = 0
                    for j in xs.indices { value = PrimeField.add(value, PrimeField.multiply(basis[j], UInt64(littleEndian: y[j * chunks + c]))) }
                    if value >> (8 * size) != 0 { inRange = false }
                    for k in 0..<size { out[offset + k] = UInt8(truncatingIfNeeded: value >> (8 * k)) }
                    offset += size
                }
                return inRange
            }
        }
        guard valid else {
            throw .malformedShare("the shares do not interpolate to a 32-byte secret (an element is outside the field or a share is wrong)")
        }
        return secret
    }

    /// Checks that `bytes` is one well-formed share: 40 bytes, five elements below p.
    public static func validate(share bytes: UnsafeRawBufferPointer) throws(FederatedError) {
        guard bytes.count == shareSize else { throw .malformedShare("a share is \(shareSize) bytes, got \(bytes.count)") }
        for c in 0..<chunkSizes.count {
            var value: UInt64 = 0
            for k in 0..<8 { value |= UInt64(bytes[c * 8 + k]) << (8 * k) }
            guard value < PrimeField.p else { throw .malformedShare("element \(c) of the share is not below 2^61 - 1") }
        }
    }
}
