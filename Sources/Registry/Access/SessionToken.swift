public import CofferCrypto

#if canImport(Glibc)
import Glibc
#endif

/// An inference session's token: `cfs_` and 64 lower-case hex digits (32 random bytes), held in sodium memory.
/// It is shown once at open; the registry keeps only a keyed hash of it, and the version's data key wrapped
/// under a key derived from it, so the token alone is what opens the model.
public struct SessionToken: ~Copyable {
    /// Session tokens (`cfs_`) and, with the same construction, HTTP bearer tokens (`cft_`).
    public static let sessionPrefix = Array("cfs_".utf8)
    public static let apiPrefix = Array("cft_".utf8)
    /// The web pages' sign-in cookies (`cfw_`), with the same construction.
    public static let webPrefix = Array("cfw_".utf8)
    static let textLength = 4 + 64
    let secret: SecretKey
    let prefix: [UInt8]

    init(secret: consuming SecretKey, prefix: [UInt8] = sessionPrefix) {
        self.secret = secret
        self.prefix = prefix
    }

    /// Parses a token's text (e.g. from the command line), refusing anything but the prefix and 64 hex digits.
    public init(text: borrowing SecureBytes, prefix: [UInt8] = sessionPrefix) throws(CofferRegistryError) {
        let secret = SecureBytes(count: SecretKey.byteCount)
        let valid = text.withUnsafeBytes { t in
            secret.withUnsafeMutableBytes { out in
                guard t.count == Self.textLength, Array(t[0..<4]) == prefix else { return false }
                for i in 0..<SecretKey.byteCount {
                    guard let high = Self.nibble(t[4 + 2 * i]), let low = Self.nibble(t[5 + 2 * i]) else { return false }
                    out[i] = high << 4 | low
                }
                return true
            }
        }
        let name = String(decoding: prefix, as: UTF8.self)
        guard valid else { throw .sessionRefused("malformed session token (expected \(name) and 64 lower-case hex digits)") }
        self.secret = SecretKey(bytes: secret)
        self.prefix = prefix
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }

    /// The token's text, in sodium memory, for printing once.
    public func text() -> SecureBytes {
        let out = SecureBytes(count: Self.textLength)
        let digits = Array("0123456789abcdef".utf8)
        secret.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                for i in 0..<4 { o[i] = prefix[i] }
                for i in 0..<s.count {
                    o[4 + 2 * i] = digits[Int(s[i] >> 4)]
                    o[5 + 2 * i] = digits[Int(s[i] & 0x0F)]
                }
            }
        }
        return out
    }

    /// A public value that identifies the token without revealing it; the registry stores it keyed-hashed.
    var lookup: [UInt8] { secret.mac(Array("coffer/v1/session-lookup".utf8)) }
    /// The key-encryption key the session's copy of the data key is wrapped under, bound to the session's id and
    /// limits: editing a session's expiry or use limit in the database makes its key copy unopenable.
    func keyEncryptionKey(id: String, expiresAt: String, maxUses: Int?) -> SecretKey {
        secret.derive(label: "coffer/v1/session-kek", context: Array("\n\(id)\n\(expiresAt)\n\(maxUses.map(String.init) ?? "-")".utf8))
    }
}
