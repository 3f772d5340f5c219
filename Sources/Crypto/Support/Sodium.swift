import CSodium

/// The one place libsodium is initialised.
///
/// `sodium_init()` must run once before any other libsodium call; every entry point of this
/// module that reaches libsodium goes through ``Sodium/ready`` first.
enum Sodium {
    /// Initialises libsodium exactly once (a `static let` initialiser is thread-safe and lazy).
    static let ready: Void = {
        guard sodium_init() >= 0 else {
            // Only fails when the process cannot read the system's random source: nothing can be sealed safely.
            fatalError("libsodium failed to initialise: no usable random source")
        }
    }()

    /// Fills `buffer` with bytes from libsodium's CSPRNG.
    static func randomBytes(_ buffer: UnsafeMutableRawBufferPointer) {
        _ = ready
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        randombytes_buf(base, buffer.count)
    }

    /// Returns `count` random bytes for values that are not secret (nonces, salts, prefixes).
    static func randomPublicBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { randomBytes($0) }
        return bytes
    }
}

/// Comparison of public or secret byte strings in time that does not depend on where they differ.
public enum SecureCompare {
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        _ = Sodium.ready
        guard a.count == b.count else { return false }
        return sodium_memcmp(a, b, a.count) == 0
    }
}

/// What a process forked from another must do before it draws random bytes.
public enum RandomSource {
    /// Gives this process a random state of its own (`randombytes_stir`, as libsodium asks of a forked process), so
    /// that no two forks can draw the same bytes.
    public static func afterFork() {
        _ = Sodium.ready
        randombytes_stir()
    }
}
