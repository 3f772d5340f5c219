/// Arithmetic in GF(p) for the Mersenne prime p = 2^61 - 1, the field Shamir shares live in.
///
/// A Mersenne prime makes reduction two shifts and an add (no division), and a 61-bit element holds 7 secret bytes, so
/// a 32-byte secret is 5 elements (docs/FORMAT.md, "Federated training").
enum PrimeField {
    static let p: UInt64 = (1 << 61) - 1

    static func add(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let s = a &+ b
        return s >= p ? s &- p : s
    }

    static func subtract(_ a: UInt64, _ b: UInt64) -> UInt64 { a >= b ? a &- b : a &+ (p &- b) }

    static func multiply(_ a: UInt64, _ b: UInt64) -> UInt64 {
        // a, b < 2^61, so the product is below 2^122: x mod p = (x & p) + (x >> 61), reduced once more.
        let (high, low) = a.multipliedFullWidth(by: b)
        let shifted = (high << 3) | (low >> 61)
        var r = (low & p) &+ shifted
        r = (r & p) &+ (r >> 61)
        return r >= p ? r &- p : r
    }

    static func power(_ base: UInt64, _ exponent: UInt64) -> UInt64 {
        var result: UInt64 = 1
        var b = base
        var e = exponent
        while e > 0 {
            if e & 1 == 1 { result = multiply(result, b) }
            b = multiply(b, b)
            e >>= 1
        }
        return result
    }

    /// The multiplicative inverse of a non-zero element (Fermat: a^(p-2)).
    static func inverse(_ a: UInt64) -> UInt64 { power(a, p - 2) }
}
