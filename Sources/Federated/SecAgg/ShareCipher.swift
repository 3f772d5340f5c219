import CSodium
import CofferCrypto

/// Authenticated encryption of the secrets sites send each other (and the coordinator) through the coordinator:
/// XChaCha20-Poly1305-IETF under a key agreed by X25519, with a random 24-byte nonce and associated data that names the
/// session, round, stage, sender and recipient. A box altered, replayed into another round or stage, or delivered to
/// another recipient fails to open, and its receiver says so.
enum ShareCipher {
    static let nonceSize = 24
    static let tagSize = 16

    /// Stages bound into a box's associated data.
    enum Purpose: UInt8 {
        /// Shares of a site's mask key and seed, for one other site (stage `share`).
        case shares = 1
        /// Shares released to the coordinator for unmasking (stage `unmask`).
        case unmask = 5
    }

    /// `purpose byte || "coffer/fl/v1/box" || session (16) || u32le(round) || u32le(sender) || u32le(recipient)`.
    static func associatedData(_ purpose: Purpose, session: [UInt8], round: Int, sender: Int, recipient: Int) -> [UInt8] {
        var ad = [purpose.rawValue] + Array("coffer/fl/v1/box".utf8) + session
        for value in [UInt32(round), UInt32(sender), UInt32(recipient)] { ad += withUnsafeBytes(of: value.littleEndian, Array.init) }
        return ad
    }

    /// `nonce (24) || ciphertext || tag (16)` of `plaintext` (read from sodium memory).
    static func seal(_ plaintext: borrowing SecureBytes, key: borrowing SecureBytes, associatedData ad: [UInt8]) -> [UInt8] {
        plaintext.withUnsafeBytes { message in key.withUnsafeBytes { seal(message, key: $0.baseAddress!, associatedData: ad) } }
    }

    /// The same, with the plaintext and the 32-byte key given in place (sodium memory the caller reuses).
    static func seal(_ message: UnsafeRawBufferPointer, key: UnsafeRawPointer, associatedData ad: [UInt8]) -> [UInt8] {
        _ = FederatedSodium.ready
        var out = [UInt8](repeating: 0, count: nonceSize + message.count + tagSize)
        out.withUnsafeMutableBytes { box in
            randombytes_buf(box.baseAddress!, nonceSize)
            let nonce = box.baseAddress!.assumingMemoryBound(to: UInt8.self)
            _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                nonce + nonceSize,
                nil,
                message.baseAddress!.assumingMemoryBound(to: UInt8.self),
                UInt64(message.count),
                ad,
                UInt64(ad.count),
                nil,
                nonce,
                key.assumingMemoryBound(to: UInt8.self)
            )
        }
        return out
    }

    /// Opens a box into `plaintext` (exactly the box's plaintext size) with a 32-byte key given in place; false when it
    /// does not authenticate.
    static func open(_ box: [UInt8], key: UnsafeRawPointer, associatedData ad: [UInt8], into plaintext: UnsafeMutableRawBufferPointer) -> Bool {
        guard box.count == nonceSize + plaintext.count + tagSize else { return false }
        return box.withUnsafeBytes { raw in
            let nonce = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                plaintext.baseAddress!.assumingMemoryBound(to: UInt8.self),
                nil,
                nil,
                nonce + nonceSize,
                UInt64(raw.count - nonceSize),
                ad,
                UInt64(ad.count),
                nonce,
                key.assumingMemoryBound(to: UInt8.self)
            ) == 0
        }
    }

    /// Opens a box into sodium memory; `nil` when it does not authenticate (altered, misrouted, replayed, wrong key).
    static func open(_ box: [UInt8], key: borrowing SecureBytes, associatedData ad: [UInt8]) -> SecureBytes? {
        guard box.count >= nonceSize + tagSize else { return nil }
        let plaintext = SecureBytes(count: box.count - nonceSize - tagSize)
        let status = box.withUnsafeBytes { raw in
            let nonce = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            return plaintext.withUnsafeMutableBytes { out in
                key.withUnsafeBytes { k in
                    crypto_aead_xchacha20poly1305_ietf_decrypt(
                        out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                        nil,
                        nil,
                        nonce + nonceSize,
                        UInt64(raw.count - nonceSize),
                        ad,
                        UInt64(ad.count),
                        nonce,
                        k.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    )
                }
            }
        }
        guard status == 0 else { return nil }
        return plaintext
    }
}
