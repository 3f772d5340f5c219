import CSodium

/// A data key wrapped for one recipient: a stanza of a sealed-file header, or a row in a registry.
///
/// Two kinds (docs/FORMAT.md, "Stanzas"): a sealed box to an X25519 public key, and
/// XChaCha20-Poly1305 under a symmetric key-encryption key (KEK). Wrapping the same data key
/// again for a new recipient never touches the payload it protects.
///
/// ```swift
/// let dataKey = SecretKey.random()
/// let forAlice = dataKey.wrap(for: alice)
/// let again = try forAlice.unwrap(with: aliceIdentity)
/// ```
public enum WrappedKey: Sendable, Hashable {
    /// `crypto_box_seal(dataKey, recipientX25519)`, named by an 8-byte hint of the recipient key.
    case x25519(recipientHint: [UInt8], sealedBox: [UInt8])
    /// XChaCha20-Poly1305 of the data key under a KEK, named by an 8-byte KEK identifier.
    case symmetric(kekID: [UInt8], nonce: [UInt8], ciphertext: [UInt8])
    /// A stanza type this version does not know; kept so the header round-trips.
    case unknown(type: UInt8, body: [UInt8])

    static let x25519Type: UInt8 = 0x01
    static let symmetricType: UInt8 = 0x02
    static let sealedBoxBytes = 32 + 16 + SecretKey.byteCount
    static let symmetricCiphertextBytes = SecretKey.byteCount + 16

    /// The associated data binding a symmetric wrap to its KEK: "coffer/v1/wrap" || kekID.
    static func symmetricAssociatedData(kekID: [UInt8]) -> [UInt8] { Array("coffer/v1/wrap".utf8) + kekID }

    /// Stanza bytes: type (1), reserved zero (1), body length (u16 LE), body.
    public var encoded: [UInt8] {
        let (type, body): (UInt8, [UInt8]) =
            switch self {
            case .x25519(let hint, let box): (Self.x25519Type, hint + box)
            case .symmetric(let id, let nonce, let ciphertext): (Self.symmetricType, id + nonce + ciphertext)
            case .unknown(let type, let body): (type, body)
            }
        var writer = ByteWriter()
        writer.append(type)
        writer.append(UInt8(0))
        writer.append(UInt16(body.count))
        writer.append(body)
        return writer.bytes
    }

    /// Parses one stanza from `reader`.
    static func read(from reader: inout ByteReader) throws(CofferCryptoError) -> WrappedKey {
        let type = try reader.readUInt8()
        guard try reader.readUInt8() == 0 else { throw .malformedHeader("stanza reserved byte is not zero") }
        let body = try reader.read(Int(try reader.readUInt16()))
        switch type {
        case x25519Type:
            guard body.count == 8 + sealedBoxBytes else { throw .malformedHeader("x25519 stanza is \(body.count) bytes, expected 88") }
            return .x25519(recipientHint: Array(body[0..<8]), sealedBox: Array(body[8...]))
        case symmetricType:
            guard body.count == 8 + 24 + symmetricCiphertextBytes else {
                throw .malformedHeader("symmetric stanza is \(body.count) bytes, expected 80")
            }
            return .symmetric(kekID: Array(body[0..<8]), nonce: Array(body[8..<32]), ciphertext: Array(body[32...]))
        default:
            return .unknown(type: type, body: body)
        }
    }

    /// Parses a stanza held on its own (e.g. a registry's wrapped-key row).
    public init(encoded: [UInt8]) throws(CofferCryptoError) {
        var reader = ByteReader(encoded, shortInput: .malformedHeader("wrapped key is truncated"))
        self = try Self.read(from: &reader)
        guard reader.remaining == 0 else { throw .malformedHeader("wrapped key has trailing bytes") }
    }

    /// Opens an X25519 stanza with `identity`'s secret key.
    public func unwrap(with identity: borrowing Identity) throws(CofferCryptoError) -> SecretKey {
        guard case .x25519(let hint, let box) = self else { throw .unwrapFailed("not an X25519 stanza") }
        guard hint == identity.publicIdentity.recipientHint else { throw .notARecipient }
        if let agent = identity.agent { return try agent.connection.unwrap(keyID: identity.keyIDBytes, stanza: encoded) }
        let key = SecureBytes(count: SecretKey.byteCount)
        let status = identity.x25519Secret.withUnsafeBytes { secret in
            key.withUnsafeMutableBytes { out in
                crypto_box_seal_open(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    box,
                    UInt64(box.count),
                    identity.publicIdentity.x25519,
                    secret.baseAddress!.assumingMemoryBound(to: UInt8.self)
                )
            }
        }
        guard status == 0 else { throw .unwrapFailed("the sealed box does not open with this identity") }
        return SecretKey(bytes: key)
    }

    /// Opens a symmetric stanza with the key-encryption key `kek`.
    public func unwrap(with kek: borrowing SecretKey) throws(CofferCryptoError) -> SecretKey {
        guard case .symmetric(let id, let nonce, let ciphertext) = self else { throw .unwrapFailed("not a symmetric stanza") }
        guard id == kek.identifier else { throw .unwrapFailed("wrapped under another key-encryption key") }
        let ad = Self.symmetricAssociatedData(kekID: id)
        let key = SecureBytes(count: SecretKey.byteCount)
        let opened = kek.withUnsafeBytes { kekBytes in
            key.withUnsafeMutableBytes { out in
                ciphertext.withUnsafeBytes {
                    XChaCha20Poly1305.decrypt($0, into: out.baseAddress!, associatedData: ad, nonce: nonce, key: kekBytes.baseAddress!)
                }
            }
        }
        guard opened else { throw .unwrapFailed("authentication failed under the key-encryption key") }
        return SecretKey(bytes: key)
    }
}

// MARK: - Wrapping

extension SecretKey {
    /// The 8-byte identifier of a key-encryption key: keyed BLAKE2b-256("coffer/v1/kek-id")[0..<8].
    public var identifier: [UInt8] { Array(mac(Array("coffer/v1/kek-id".utf8)).prefix(8)) }

    /// Wraps this key to `recipient`'s X25519 key with a sealed box (anonymous sender).
    public func wrap(for recipient: PublicIdentity) -> WrappedKey {
        var box = [UInt8](repeating: 0, count: WrappedKey.sealedBoxBytes)
        withUnsafeBytes { key in
            _ = crypto_box_seal(&box, key.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(Self.byteCount), recipient.x25519)
        }
        return .x25519(recipientHint: recipient.recipientHint, sealedBox: box)
    }

    /// Wraps this key under the key-encryption key `kek` with XChaCha20-Poly1305 and a random nonce.
    public func wrap(under kek: borrowing SecretKey) -> WrappedKey {
        let id = kek.identifier
        let nonce = Sodium.randomPublicBytes(24)
        let ad = WrappedKey.symmetricAssociatedData(kekID: id)
        var ciphertext = [UInt8](repeating: 0, count: WrappedKey.symmetricCiphertextBytes)
        withUnsafeBytes { key in
            kek.withUnsafeBytes { kekBytes in
                ciphertext.withUnsafeMutableBytes {
                    XChaCha20Poly1305.encrypt(key, into: $0.baseAddress!, associatedData: ad, nonce: nonce, key: kekBytes.baseAddress!)
                }
            }
        }
        return .symmetric(kekID: id, nonce: nonce, ciphertext: ciphertext)
    }
}
