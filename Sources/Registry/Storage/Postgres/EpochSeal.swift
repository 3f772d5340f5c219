import CSodium
import CofferCrypto

/// The sealing of one column value under an epoch key (docs/FORMAT.md, "Metadata stores", erasure):
///
/// ```
/// sealed = "cfe1" || u32be(epoch) || nonce(24) || XChaCha20-Poly1305(K_epoch, nonce, value, ad)
/// ad     = "coffer/v1/epoch-seal" || u32be(epoch) || table || "." || column || "\n" || row key
/// ```
///
/// The associated data binds a sealed value to its epoch, its column and its row, so a value copied onto another
/// row, or into another column, does not open there.
enum EpochSeal {
    /// The first four bytes of every sealed value, what a scan of PostgreSQL's files looks for.
    static let magic: [UInt8] = Array("cfe1".utf8)
    static let label: [UInt8] = Array("coffer/v1/epoch-seal".utf8)
    static let nonceLength = 24
    static let tagLength = 16
    /// Bytes a sealed value adds to the value: magic, epoch, nonce and tag.
    static let overhead = 4 + 4 + nonceLength + tagLength

    /// The epoch a sealed value names, or `nil` when `sealed` is not a sealed value.
    static func epoch(of sealed: [UInt8]) -> UInt32? {
        guard sealed.count >= overhead, Array(sealed[0..<4]) == magic else { return nil }
        return sealed[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }

    static func associatedData(epoch: UInt32, column: SealedColumn, rowKey: String) -> [UInt8] {
        label + bigEndian(epoch) + Array("\(column.table).\(column.column)\n\(rowKey)".utf8)
    }

    /// Seals `value` for the row `rowKey` of `column` under `key`, the key of `epoch`.
    static func seal(_ value: [UInt8], epoch: UInt32, key: borrowing SecretKey, column: SealedColumn, rowKey: String) -> [UInt8] {
        var nonce = [UInt8](repeating: 0, count: nonceLength)
        randombytes_buf(&nonce, nonceLength)
        let ad = associatedData(epoch: epoch, column: column, rowKey: rowKey)
        var sealed = magic + bigEndian(epoch) + nonce + [UInt8](repeating: 0, count: value.count + tagLength)
        let offset = 8 + nonceLength
        key.withUnsafeBytes { key in
            sealed.withUnsafeMutableBufferPointer { out in
                _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                    out.baseAddress! + offset,
                    nil,
                    value,
                    UInt64(value.count),
                    ad,
                    UInt64(ad.count),
                    nil,
                    nonce,
                    key.baseAddress!.assumingMemoryBound(to: UInt8.self)
                )
            }
        }
        return sealed
    }

    /// Opens a sealed value with `key` (the key of the epoch it names); `nil` when it does not authenticate (another
    /// key, another row or column, altered bytes).
    static func open(_ sealed: [UInt8], key: borrowing SecretKey, column: SealedColumn, rowKey: String) -> [UInt8]? {
        guard let epoch = epoch(of: sealed) else { return nil }
        let ad = associatedData(epoch: epoch, column: column, rowKey: rowKey)
        let nonce = Array(sealed[8..<(8 + nonceLength)])
        let ciphertext = Array(sealed[(8 + nonceLength)...])
        var value = [UInt8](repeating: 0, count: ciphertext.count - tagLength)
        let status = key.withUnsafeBytes { key in
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                &value,
                nil,
                nil,
                ciphertext,
                UInt64(ciphertext.count),
                ad,
                UInt64(ad.count),
                nonce,
                key.baseAddress!.assumingMemoryBound(to: UInt8.self)
            )
        }
        return status == 0 ? value : nil
    }

    private static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }
}
