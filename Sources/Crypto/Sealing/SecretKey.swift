import CSodium

/// A 32-byte symmetric key: a file's data key or a key-encryption key.
///
/// Lives in ``SecureBytes`` (guarded, locked, wiped); `~Copyable`, so it is borrowed, never copied.
public struct SecretKey: ~Copyable {
    /// Key length in bytes (XChaCha20-Poly1305 and keyed BLAKE2b-256 alike).
    public static let byteCount = 32
    let bytes: SecureBytes

    /// A fresh key from libsodium's CSPRNG.
    public static func random() -> SecretKey {
        SecretKey(bytes: SecureBytes.random(count: byteCount))
    }

    /// Takes ownership of 32 secret bytes.
    public init(bytes: consuming SecureBytes) {
        precondition(bytes.count == Self.byteCount, "a SecretKey holds exactly 32 bytes")
        self.bytes = bytes
    }

    /// Copies 32 key bytes from `source`, e.g. a test vector. The caller wipes `source`.
    public init(copying source: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        guard source.count == Self.byteCount else { throw .invalidKey("a secret key is 32 bytes, got \(source.count)") }
        self.bytes = SecureBytes(copying: source)
    }

    /// Gives read access to the key bytes for the duration of `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try bytes.withUnsafeBytes(body)
    }

    /// Derives a subkey: keyed BLAKE2b-256 of `label || context` under this key (docs/FORMAT.md, "Key derivation").
    public func derive(label: String, context: [UInt8]) -> SecretKey {
        let message = Array(label.utf8) + context
        let out = SecureBytes(count: Self.byteCount)
        withUnsafeBytes { key in
            out.withUnsafeMutableBytes { out in
                _ = crypto_generichash(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    Self.byteCount,
                    message,
                    UInt64(message.count),
                    key.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    Self.byteCount
                )
            }
        }
        return SecretKey(bytes: out)
    }

    /// Keyed BLAKE2b-256 of `message` under this key; the result is public (a MAC or an identifier).
    public func mac(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        withUnsafeBytes { key in
            _ = crypto_generichash(
                &out,
                32,
                message,
                UInt64(message.count),
                key.baseAddress!.assumingMemoryBound(to: UInt8.self),
                Self.byteCount
            )
        }
        return out
    }
}
