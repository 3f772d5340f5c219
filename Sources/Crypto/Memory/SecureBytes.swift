import CSodium

/// A fixed-size buffer of secret bytes in libsodium's guarded heap.
///
/// The memory comes from `sodium_malloc`: it sits between guard pages, is `mlock`ed so it is not
/// swapped out, and is wiped and freed when the value is dropped. The type is `~Copyable`, so a
/// secret has exactly one owner and is never silently duplicated the way `Array`, `Data` or
/// `String` duplicate their storage.
///
/// ```swift
/// let key = SecureBytes.random(count: 32)
/// key.withUnsafeBytes { bytes in /* use the key */ }
/// ```
public struct SecureBytes: ~Copyable {
    private let pointer: UnsafeMutableRawPointer
    /// The number of bytes held.
    public let count: Int

    /// Allocates `count` zeroed secret bytes.
    public init(count: Int) {
        _ = Sodium.ready
        precondition(count >= 0, "SecureBytes count must not be negative")
        // sodium_malloc(0) is allowed but returns a guarded page; keep one byte so the pointer is usable.
        guard let raw = sodium_malloc(max(count, 1)) else {
            fatalError("sodium_malloc failed: out of memory for \(count) secret bytes")
        }
        sodium_memzero(raw, max(count, 1))
        self.pointer = raw
        self.count = count
    }

    /// Allocates `count` bytes filled from libsodium's CSPRNG.
    public static func random(count: Int) -> SecureBytes {
        let bytes = SecureBytes(count: count)
        bytes.withUnsafeMutableBytes { Sodium.randomBytes($0) }
        return bytes
    }

    /// Copies `source` into a new secret buffer. The caller remains responsible for wiping `source`.
    public init(copying source: UnsafeRawBufferPointer) {
        self.init(count: source.count)
        if let base = source.baseAddress, source.count > 0 {
            pointer.copyMemory(from: base, byteCount: source.count)
        }
    }

    deinit {
        sodium_memzero(pointer, max(count, 1))
        sodium_free(pointer)
    }

    /// Gives read access to the secret bytes for the duration of `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Gives write access to the secret bytes for the duration of `body`.
    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// Compares with `other` in constant time.
    public func constantTimeEquals(_ other: borrowing SecureBytes) -> Bool {
        guard count == other.count else { return false }
        return other.withUnsafeBytes { sodium_memcmp(pointer, $0.baseAddress!, count) == 0 }
    }

    /// Returns a new buffer holding bytes `range` of this one.
    public func slice(_ range: Range<Int>) -> SecureBytes {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "slice out of bounds")
        return SecureBytes(copying: UnsafeRawBufferPointer(start: pointer + range.lowerBound, count: range.count))
    }
}
