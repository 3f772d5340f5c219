import CLibcrypto
import CSodium
import Dispatch

/// XChaCha20-Poly1305-IETF (draft-irtf-cfrg-xchacha), the one AEAD every Coffer format uses.
public enum XChaCha20Poly1305 {
    static let keyLength = 32
    static let nonceLength = 24
    static let tagLength = 16

    /// Encrypts `plaintext` into `output`, which receives `plaintext.count` ciphertext bytes followed by the 16-byte tag.
    static func encrypt(
        _ plaintext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawPointer,
        associatedData: [UInt8],
        nonce: [UInt8],
        key: UnsafeRawPointer
    ) {
        precondition(nonce.count == nonceLength, "XChaCha20 nonces are 24 bytes")
        let out = output.assumingMemoryBound(to: UInt8.self)
        if openSSLReady {
            let input = plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(out)
            let key = key.assumingMemoryBound(to: UInt8.self)
            if withOpenSSL(encrypt: true, out, tag: out + plaintext.count, input, count: plaintext.count, associatedData, nonce, key) == 0 {
                return
            }
        }
        _ = crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
            out,
            out + plaintext.count,
            nil,
            plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(out),
            UInt64(plaintext.count),
            associatedData,
            UInt64(associatedData.count),
            nil,
            nonce,
            key.assumingMemoryBound(to: UInt8.self)
        )
    }

    /// Verifies the tag at the end of `ciphertext` and only then decrypts into `output`; false when it does not verify.
    ///
    /// libsodium writes no plaintext for a forgery (it zeroes `output` instead).
    static func decrypt(
        _ ciphertext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawPointer,
        associatedData: [UInt8],
        nonce: [UInt8],
        key: UnsafeRawPointer
    ) -> Bool {
        guard ciphertext.count >= tagLength, nonce.count == nonceLength else { return false }
        let length = ciphertext.count - tagLength
        let input = ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if openSSLReady {
            let out = output.assumingMemoryBound(to: UInt8.self)
            let tag = UnsafeMutablePointer(mutating: input + length)
            let key = key.assumingMemoryBound(to: UInt8.self)
            switch withOpenSSL(encrypt: false, out, tag: tag, input, count: length, associatedData, nonce, key) {
            case 0: return true
            case -1: return false
            default: break  // OpenSSL failed (out of memory): libsodium decides
            }
        }
        return crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
            output.assumingMemoryBound(to: UInt8.self),
            nil,
            input,
            UInt64(length),
            input + length,
            associatedData,
            UInt64(associatedData.count),
            nonce,
            key.assumingMemoryBound(to: UInt8.self)
        ) == 0
    }

    /// Loads OpenSSL's ChaCha20-Poly1305 on a thread of its own, for a stream of at least ``worthLoading`` bytes (or of
    /// unknown length) about to be sealed or opened: its chunks use libsodium until it is ready, then OpenSSL, which gives
    /// the same bytes at 2.4x the speed (3.5 against 1.46 GB/s a core, 64 KiB chunks, AVX-512; see `CLibcrypto`).
    /// Loading costs 2.6-3 ms of CPU, which the faster cipher pays back after about 7 MB.
    static func loadFasterCipher() {
        guard coffer_xchacha20poly1305_ready() == 0 else { return }
        DispatchQueue.global(qos: .userInitiated).async { coffer_libcrypto_preload() }
    }

    /// Loads it now, on this thread: for a process about to fork commands (`coffer runner`), so that every fork seals
    /// and opens with it from its first chunk.
    public static func loadFasterCipherNow() { coffer_libcrypto_preload() }

    static let worthLoading = 8 << 20

    /// Whether OpenSSL's cipher is loaded. (The C shim's state is per Swift module that includes it: ask here, not there.)
    static var openSSLReady: Bool { coffer_xchacha20poly1305_ready() != 0 }

    /// The AEAD through OpenSSL (`coffer_xchacha20poly1305`): 0; -1 for a forgery, `out` zeroed; -2 when OpenSSL failed.
    /// Encrypting writes the tag to `tag`; decrypting checks the one there.
    static func withOpenSSL(
        encrypt: Bool,
        _ out: UnsafeMutablePointer<UInt8>,
        tag: UnsafeMutablePointer<UInt8>,
        _ input: UnsafePointer<UInt8>,
        count: Int,
        _ associatedData: [UInt8],
        _ nonce: [UInt8],
        _ key: UnsafePointer<UInt8>
    ) -> Int32 {
        precondition(openSSLReady && nonce.count == nonceLength)
        return coffer_xchacha20poly1305(encrypt ? 1 : 0, out, tag, input, count, associatedData, associatedData.count, nonce, key)
    }
}
