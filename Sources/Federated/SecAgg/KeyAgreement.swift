import CSodium
public import CofferCrypto

/// An X25519 key pair made for one round of secure aggregation; the secret lives in sodium memory.
///
/// Each site makes two per round (Bonawitz et al. 2017, section 4): one to agree channel keys with the other sites (the
/// shares it sends them through the coordinator are encrypted under those), one to agree pairwise mask seeds. The mask
/// key's secret is Shamir-shared, so that the coordinator can remove the masks of a site that drops out.
///
/// ```swift
/// let mine = EphemeralKeyPair.generate()
/// let shared = try mine.agree(with: peerPublicKey)   // 32 bytes, in sodium memory
/// ```
public struct EphemeralKeyPair: ~Copyable {
    public let publicKey: [UInt8]
    let secret: SecureBytes

    /// A fresh key pair from libsodium's CSPRNG.
    public static func generate() -> EphemeralKeyPair {
        let secret = SecureBytes.random(count: 32)
        // A random 32-byte string is always a valid X25519 scalar (it is clamped when used).
        return try! EphemeralKeyPair(secret: secret)
    }

    /// Rebuilds a key pair from its 32-byte secret (e.g. one reconstructed from shares).
    public init(secret: consuming SecureBytes) throws(FederatedError) {
        guard secret.count == 32 else { throw .malformedShare("an X25519 secret key is 32 bytes, got \(secret.count)") }
        _ = FederatedSodium.ready
        var publicKey = [UInt8](repeating: 0, count: 32)
        let status = secret.withUnsafeBytes { crypto_scalarmult_base(&publicKey, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        guard status == 0 else { throw .malformedShare("the X25519 secret key gives no public key") }
        self.publicKey = publicKey
        self.secret = secret
    }

    /// Read access to the secret key (for sharing it).
    public func withSecret<R: ~Copyable, E: Error>(_ body: (borrowing SecureBytes) throws(E) -> R) throws(E) -> R { try body(secret) }

    /// X25519(secret, peer): the raw shared point, 32 bytes in sodium memory.
    ///
    /// - Throws: ``FederatedError/malformedMessage(_:)`` for a peer key of the wrong size or of low order (the shared
    ///   point would be all zeros, known to anyone).
    public func agree(with peer: [UInt8]) throws(FederatedError) -> SecureBytes {
        let shared = SecureBytes(count: 32)
        try shared.withUnsafeMutableBytes { (out) throws(FederatedError) in try agree(with: peer, into: out.baseAddress!) }
        return shared
    }

    /// X25519(secret, peer) written to 32 bytes at `out` (sodium memory the caller reuses: a round agrees a key with
    /// every neighbour, and one guarded allocation per key cost more than the X25519 itself).
    func agree(with peer: [UInt8], into out: UnsafeMutableRawPointer) throws(FederatedError) {
        guard peer.count == 32 else { throw .malformedMessage("an X25519 public key is 32 bytes, got \(peer.count)") }
        let status = secret.withUnsafeBytes { sk in
            crypto_scalarmult(out.assumingMemoryBound(to: UInt8.self), sk.baseAddress!.assumingMemoryBound(to: UInt8.self), peer)
        }
        guard status == 0 else { throw .malformedMessage("an X25519 public key of low order was offered") }
    }
}

/// Keys derived from an X25519 shared point: keyed BLAKE2b-256, bound to the session, the round and both public keys.
enum KeyDerivation {
    /// `BLAKE2b-256(key: shared, label || session || u32le(round) || min(pkA, pkB) || max(pkA, pkB))`.
    static func derive(
        _ shared: borrowing SecureBytes,
        label: String,
        session: [UInt8],
        round: Int,
        _ a: [UInt8],
        _ b: [UInt8]
    ) -> SecureBytes {
        let out = SecureBytes(count: 32)
        shared.withUnsafeBytes { key in
            out.withUnsafeMutableBytes { derive(key: key.baseAddress!, label: label, session: session, round: round, a, b, into: $0.baseAddress!) }
        }
        return out
    }

    /// The same derivation from a 32-byte shared point at `key` into 32 bytes at `out`.
    static func derive(
        key: UnsafeRawPointer,
        label: String,
        session: [UInt8],
        round: Int,
        _ a: [UInt8],
        _ b: [UInt8],
        into out: UnsafeMutableRawPointer
    ) {
        let (low, high) = a.lexicographicallyPrecedes(b) ? (a, b) : (b, a)
        var message = Array(label.utf8) + session
        message += withUnsafeBytes(of: UInt32(round).littleEndian, Array.init)
        message += low + high
        _ = crypto_generichash(
            out.assumingMemoryBound(to: UInt8.self),
            32,
            message,
            UInt64(message.count),
            key.assumingMemoryBound(to: UInt8.self),
            32
        )
    }

    /// Keyed BLAKE2b-256 of `message` under a secret key; the result is public (a commitment).
    static func mac(key: borrowing SecureBytes, _ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { key in
            _ = crypto_generichash(&out, 32, message, UInt64(message.count), key.baseAddress!.assumingMemoryBound(to: UInt8.self), key.count)
        }
        return out
    }
}

/// libsodium's one initialisation, for this module's direct calls.
enum FederatedSodium {
    static let ready: Void = {
        guard sodium_init() >= 0 else { fatalError("libsodium failed to initialise: no usable random source") }
    }()
}
