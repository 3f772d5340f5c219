import CSodium

/// Argon2id cost parameters recorded in every key file.
public struct KDFParameters: Sendable, Equatable {
    public var opsLimit: UInt64
    public var memLimit: UInt64

    public init(opsLimit: UInt64, memLimit: UInt64) {
        self.opsLimit = opsLimit
        self.memLimit = memLimit
    }

    /// Default: 3 passes over 32 MiB (twice OWASP's Argon2id minimum of 2 x 19 MiB), small enough that
    /// unsealing a file stays within its 64 MiB memory budget while the identity is unlocked.
    public static let `default` = KDFParameters(opsLimit: 3, memLimit: 32 << 20)

    /// The limits a key file may ask for, so a crafted file cannot demand unbounded work or memory.
    static let opsRange: ClosedRange<UInt64> = 1...64
    static let memRange: ClosedRange<UInt64> = 8192...(4 << 30)

    /// Whether a key file may use `parameters`.
    public static func acceptable(_ parameters: KDFParameters) -> Bool {
        opsRange.contains(parameters.opsLimit) && memRange.contains(parameters.memLimit)
    }
}

/// The encrypted private identity file, `NAME.key` (docs/FORMAT.md, "Identity files").
extension Identity {
    static let keyFileMagic: [UInt8] = [0x89, 0x43, 0x46, 0x4B, 0x0D, 0x0A, 0x1A, 0x0A]  // "\x89CFK\r\n\x1a\n"
    static let keyFileVersion: UInt8 = 1
    static let kdfArgon2id13: UInt8 = 1

    /// Encrypts the identity under `passphrase` and returns the key-file bytes.
    public func encrypt(passphrase: borrowing SecureBytes, parameters: KDFParameters = .default) throws(CofferCryptoError) -> [UInt8] {
        guard KDFParameters.acceptable(parameters) else { throw .invalidKey("Argon2id parameters outside the accepted limits") }
        guard agent == nil else { throw .agent("the private keys of \(publicIdentity.name) are in the agent and never leave it") }
        let salt = Sodium.randomPublicBytes(16)
        let nonce = Sodium.randomPublicBytes(24)
        var writer = ByteWriter()
        writer.append(Self.keyFileMagic)
        writer.append(Self.keyFileVersion)
        writer.append(Self.kdfArgon2id13)
        writer.append(UInt16(0))
        writer.append(parameters.opsLimit)
        writer.append(parameters.memLimit)
        writer.append(salt)
        writer.append(nonce)
        let name = Array(publicIdentity.name.utf8)
        writer.append(UInt16(name.count))
        writer.append(name)
        writer.append(publicIdentity.ed25519)
        writer.append(publicIdentity.x25519)
        writer.append(publicIdentity.p256)
        let header = writer.bytes
        let key = try Self.passphraseKey(passphrase, salt: salt, parameters: parameters)
        let secrets = secretBytes()
        var ciphertext = [UInt8](repeating: 0, count: secrets.count + 16)
        secrets.withUnsafeBytes { plain in
            key.withUnsafeBytes { k in
                ciphertext.withUnsafeMutableBytes {
                    XChaCha20Poly1305.encrypt(plain, into: $0.baseAddress!, associatedData: header, nonce: nonce, key: k.baseAddress!)
                }
            }
        }
        return header + ciphertext
    }

    /// Decrypts key-file bytes with `passphrase`.
    ///
    /// - Throws: ``CofferCryptoError/notAnIdentityFile(_:)`` for other files, ``CofferCryptoError/wrongPassphrase``
    ///   when authentication fails.
    public static func decrypt(
        keyFile bytes: [UInt8],
        passphrase: borrowing SecureBytes,
        path: String = "identity"
    ) throws(CofferCryptoError) -> Identity {
        var reader = ByteReader(bytes, shortInput: .malformedIdentity("\(path) is truncated"))
        guard bytes.count >= 8, try reader.read(8) == keyFileMagic else { throw .notAnIdentityFile(path) }
        let version = try reader.readUInt8()
        guard version == keyFileVersion else { throw .malformedIdentity("\(path) has unsupported key-file version \(version)") }
        guard try reader.readUInt8() == kdfArgon2id13 else { throw .malformedIdentity("\(path) uses an unknown key-derivation function") }
        guard try reader.readUInt16() == 0 else { throw .malformedIdentity("\(path) has non-zero reserved bytes") }
        let parameters = KDFParameters(opsLimit: try reader.readUInt64(), memLimit: try reader.readUInt64())
        guard KDFParameters.acceptable(parameters) else {
            throw .malformedIdentity("\(path) asks for Argon2id parameters outside the accepted limits")
        }
        let salt = try reader.read(16)
        let nonce = try reader.read(24)
        let nameBytes = try reader.read(Int(try reader.readUInt16()))
        let publicKeys = try reader.read(32 + 32 + 65)
        let headerLength = reader.offset
        let ciphertext = try reader.read(96 + 16)
        guard reader.remaining == 0 else { throw .malformedIdentity("\(path) has trailing bytes") }
        guard let name = String(validating: nameBytes, as: UTF8.self) else { throw .malformedIdentity("\(path) has a name that is not UTF-8") }

        let header = Array(bytes[0..<headerLength])
        let key = try passphraseKey(passphrase, salt: salt, parameters: parameters)
        let secrets = SecureBytes(count: 96)
        let opened = secrets.withUnsafeMutableBytes { out in
            key.withUnsafeBytes { k in
                ciphertext.withUnsafeBytes {
                    XChaCha20Poly1305.decrypt($0, into: out.baseAddress!, associatedData: header, nonce: nonce, key: k.baseAddress!)
                }
            }
        }
        guard opened else { throw .wrongPassphrase }
        let identity = try Identity(name: name, secrets: secrets)
        let recorded = try PublicIdentity(
            name: name,
            ed25519: Array(publicKeys[0..<32]),
            x25519: Array(publicKeys[32..<64]),
            p256: Array(publicKeys[64...])
        )
        guard recorded == identity.publicIdentity else { throw .malformedIdentity("\(path): public keys do not match the secret keys") }
        return identity
    }

    /// Reads the public identity recorded in a key file without the passphrase.
    public static func publicIdentity(ofKeyFile bytes: [UInt8], path: String = "identity") throws(CofferCryptoError) -> PublicIdentity {
        var reader = ByteReader(bytes, shortInput: .malformedIdentity("\(path) is truncated"))
        guard bytes.count >= 8, try reader.read(8) == keyFileMagic else { throw .notAnIdentityFile(path) }
        _ = try reader.read(4 + 16 + 16 + 24)
        let name = String(decoding: try reader.read(Int(try reader.readUInt16())), as: UTF8.self)
        let keys = try reader.read(32 + 32 + 65)
        return try PublicIdentity(name: name, ed25519: Array(keys[0..<32]), x25519: Array(keys[32..<64]), p256: Array(keys[64...]))
    }

    /// Argon2id13(passphrase, salt) -> 32-byte key in secure memory.
    private static func passphraseKey(
        _ passphrase: borrowing SecureBytes,
        salt: [UInt8],
        parameters: KDFParameters
    ) throws(CofferCryptoError) -> SecureBytes {
        _ = Sodium.ready
        let key = SecureBytes(count: 32)
        let status = key.withUnsafeMutableBytes { out in
            passphrase.withUnsafeBytes { pass in
                crypto_pwhash(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    32,
                    pass.baseAddress!.assumingMemoryBound(to: CChar.self),
                    UInt64(pass.count),
                    salt,
                    parameters.opsLimit,
                    Int(parameters.memLimit),
                    crypto_pwhash_ALG_ARGON2ID13
                )
            }
        }
        guard status == 0 else { throw .malformedIdentity("Argon2id failed: not enough memory for \(parameters.memLimit >> 20) MiB") }
        return key
    }
}
