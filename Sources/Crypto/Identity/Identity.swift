import CSodium
import Crypto

/// A private identity: an Ed25519 signing key, an X25519 encryption key and an ECDSA P-256 signing key.
///
/// All three secrets live in ``SecureBytes``; the type is `~Copyable`. On disk it is a `NAME.key`
/// file encrypted under a passphrase (``encrypt(passphrase:parameters:)``, docs/FORMAT.md). An identity held by a
/// `coffer agent` (``AgentConnection/identity(for:onLost:)``) has no secrets here at all: it signs and unwraps
/// by asking the agent, so the rest of Coffer uses either kind the same way.
///
/// ```swift
/// let alice = try Identity.generate(name: "alice")
/// let signature = alice.signEd25519(message)
/// ```
public struct Identity: ~Copyable {
    public let publicIdentity: PublicIdentity
    /// Ed25519 seed (32 bytes): what the key file stores.
    let ed25519Seed: SecureBytes
    /// Ed25519 secret key in libsodium's 64-byte form (seed || public key).
    let ed25519Secret: SecureBytes
    let x25519Secret: SecureBytes
    /// The P-256 private scalar, 32 bytes big-endian.
    let p256Secret: SecureBytes
    /// Set when the private keys are in an agent; the four buffers above are then empty.
    let agent: AgentKey?

    /// Whether the private keys are held by a `coffer agent` rather than in this process.
    public var isHeldByAgent: Bool { agent != nil }

    /// The socket of the agent holding the private keys, if one does.
    public var agentPath: String? { agent?.connection.path }

    /// An identity whose private keys stay in an agent.
    init(agentHeld publicIdentity: PublicIdentity, key: AgentKey) {
        self.publicIdentity = publicIdentity
        self.ed25519Seed = SecureBytes(count: 0)
        self.ed25519Secret = SecureBytes(count: 0)
        self.x25519Secret = SecureBytes(count: 0)
        self.p256Secret = SecureBytes(count: 0)
        self.agent = key
    }

    /// The raw 16 bytes of the key ID, as the agent protocol names an identity.
    var keyIDBytes: [UInt8] { Digest.bytes(fromHex: publicIdentity.keyID) ?? [] }

    /// Creates a new identity from libsodium's CSPRNG.
    public static func generate(name: String) throws(CofferCryptoError) -> Identity {
        let secrets = SecureBytes(count: 96)
        while true {
            secrets.withUnsafeMutableBytes { Sodium.randomBytes($0) }
            // A random 32-byte string is a valid P-256 scalar unless it is 0 or >= n (probability ~2^-32): draw again.
            do { return try Identity(name: name, secrets: secrets) } catch .invalidKey { continue }
        }
    }

    /// Builds an identity from `ed25519 seed || x25519 secret || p256 scalar` (96 bytes).
    init(name: String, secrets: borrowing SecureBytes) throws(CofferCryptoError) {
        precondition(secrets.count == 96, "identity secrets are 96 bytes")
        _ = Sodium.ready
        let seed = secrets.slice(0..<32)
        let x25519Secret = secrets.slice(32..<64)
        let p256Secret = secrets.slice(64..<96)
        let edSecret = SecureBytes(count: 64)
        var edPublic = [UInt8](repeating: 0, count: 32)
        var xPublic = [UInt8](repeating: 0, count: 32)
        seed.withUnsafeBytes { seedBytes in
            edSecret.withUnsafeMutableBytes { sk in
                _ = crypto_sign_seed_keypair(
                    &edPublic,
                    sk.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    seedBytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
                )
            }
        }
        x25519Secret.withUnsafeBytes { _ = crypto_scalarmult_base(&xPublic, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        let p256Public = try p256Secret.withUnsafeBytes { scalar throws(CofferCryptoError) in
            do {
                return Array(try P256.Signing.PrivateKey(rawRepresentation: scalar).publicKey.x963Representation)
            } catch {
                throw .invalidKey("the P-256 scalar is out of range")
            }
        }
        self.publicIdentity = try PublicIdentity(name: name, ed25519: edPublic, x25519: xPublic, p256: p256Public)
        self.ed25519Seed = seed
        self.ed25519Secret = edSecret
        self.x25519Secret = x25519Secret
        self.p256Secret = p256Secret
        self.agent = nil
    }

    /// The 96 secret bytes in key-file order (a local identity's only: an agent's never leave it).
    func secretBytes() -> SecureBytes {
        precondition(agent == nil, "an agent-held identity has no secret bytes here")
        let out = SecureBytes(count: 96)
        out.withUnsafeMutableBytes { out in
            ed25519Seed.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 32) }
            x25519Secret.withUnsafeBytes { (out.baseAddress! + 32).copyMemory(from: $0.baseAddress!, byteCount: 32) }
            p256Secret.withUnsafeBytes { (out.baseAddress! + 64).copyMemory(from: $0.baseAddress!, byteCount: 32) }
        }
        return out
    }
}

// MARK: - Signing

extension Identity {
    /// Ed25519 detached signature (64 bytes) over `message`.
    ///
    /// An agent-held identity asks its agent; when no signature can be had, the identity's `onLost` ends the process
    /// (signing has no error path, and no caller could go on without the signature).
    public func signEd25519(_ message: [UInt8]) -> [UInt8] {
        if let agent {
            do throws(CofferCryptoError) { return try agent.connection.signEd25519(keyID: keyIDBytes, message: message) } catch {
                agent.onLost(error)
            }
        }
        var signature = [UInt8](repeating: 0, count: 64)
        ed25519Secret.withUnsafeBytes { sk in
            _ = crypto_sign_detached(&signature, nil, message, UInt64(message.count), sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        return signature
    }

    /// ECDSA P-256 signature with SHA-256 over `message`, DER-encoded (as Sigstore bundles carry it).
    public func signP256(_ message: [UInt8]) -> [UInt8] {
        if let agent {
            do throws(CofferCryptoError) { return try agent.connection.signP256(keyID: keyIDBytes, message: message) } catch { agent.onLost(error) }
        }
        return p256Secret.withUnsafeBytes { scalar in
            // The scalar was validated when the identity was built, so neither call can fail.
            let key = try! P256.Signing.PrivateKey(rawRepresentation: scalar)
            return Array(try! key.signature(for: message).derRepresentation)
        }
    }
}

/// Signature verification with public keys only.
public enum SignatureVerifier {
    /// Checks an Ed25519 detached signature.
    public static func verifyEd25519(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        _ = Sodium.ready
        guard signature.count == 64, publicKey.count == 32 else { return false }
        return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }

    /// Checks a DER-encoded ECDSA P-256/SHA-256 signature against a SEC1 uncompressed public key.
    public static func verifyP256(derSignature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard let key = try? P256.Signing.PublicKey(x963Representation: publicKey),
            let signature = try? P256.Signing.ECDSASignature(derRepresentation: derSignature)
        else { return false }
        return key.isValidSignature(signature, for: message)
    }

    /// The PEM (SubjectPublicKeyInfo) form of a SEC1 P-256 public key, as `NAME.pem` holds it.
    public static func p256PEM(publicKey: [UInt8]) throws(CofferCryptoError) -> String {
        do {
            return try P256.Signing.PublicKey(x963Representation: publicKey).pemRepresentation + "\n"
        } catch {
            throw .invalidKey("not a P-256 public key")
        }
    }
}
