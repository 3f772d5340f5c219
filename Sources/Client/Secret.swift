public import CofferCrypto

/// A token (`cft_...` bearer, `cfs_...` session) held in sodium memory for as long as the client lives, wiped when it
/// is released. A class so that a `Sendable` client can hold and share it; the bytes are never copied into a `String`
/// except to write one request's header.
public final class Secret: @unchecked Sendable {
    // Read-only after init: many requests read it at once, none writes it.
    private let bytes: SecureBytes

    public init(_ bytes: consuming SecureBytes) { self.bytes = bytes }

    /// Copies `text` into sodium memory; the caller's `String` is then the only other copy, and should die soon.
    public convenience init(text: String) {
        let bytes = SecureBytes(count: text.utf8.count)
        bytes.withUnsafeMutableBytes { $0.copyBytes(from: text.utf8) }
        self.init(bytes)
    }

    /// The secret as text, for a header written now (an HTTP client takes header values as `String`).
    func text() -> String { bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    /// Reads the secret bytes in place.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R { try bytes.withUnsafeBytes(body) }
}
