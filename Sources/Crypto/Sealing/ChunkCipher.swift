import CLibcrypto
import CSodium
import Dispatch

/// XChaCha20-Poly1305-IETF over one chunk of a sealed file (docs/FORMAT.md, "Chunks"): through OpenSSL's
/// ChaCha20-Poly1305 once it is loaded (``loadFasterCipher()``), which gives libsodium's bytes at 2.4x its speed here,
/// else libsodium. Only chunks: key files and wrapped keys, small, stay with libsodium alone.
///
/// nonce = nonce_prefix(16) || chunk index (u56 little-endian, 7 bytes) || last flag (1 byte);
/// associated data = the header MAC. The payload key is passed as a raw pointer into secure memory
/// so that worker threads can share it for the duration of one pipeline run.
struct ChunkCipher: @unchecked Sendable {
    static let tagLength = XChaCha20Poly1305.tagLength
    /// Chunk indices are 56-bit.
    static let maximumChunkIndex: UInt64 = (1 << 56) - 1

    let key: UnsafeRawPointer
    let noncePrefix: [UInt8]
    let associatedData: [UInt8]

    func nonce(index: UInt64, last: Bool) -> [UInt8] {
        var nonce = noncePrefix
        for i in 0..<7 { nonce.append(UInt8(truncatingIfNeeded: index >> (8 * UInt64(i)))) }
        nonce.append(last ? 1 : 0)
        return nonce
    }

    /// Encrypts `plaintext` into `output` (plaintext.count + 16 bytes: ciphertext then tag).
    /// `output` must not overlap `plaintext`: should OpenSSL fail midway, libsodium seals the chunk again into it.
    func seal(_ plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, index: UInt64, last: Bool) {
        let nonce = nonce(index: index, last: last)
        if Self.openSSLReady {
            let out = output.assumingMemoryBound(to: UInt8.self)
            let input = plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(out)
            if Self.withOpenSSL(encrypt: true, out, tag: out + plaintext.count, input, count: plaintext.count, associatedData, nonce, key) == 0 {
                return
            }
        }
        XChaCha20Poly1305.encrypt(plaintext, into: output, associatedData: associatedData, nonce: nonce, key: key)
    }

    /// Authenticates and decrypts `ciphertext` (data then 16-byte tag) into `output`; false if it does not verify.
    func open(_ ciphertext: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, index: UInt64, last: Bool) -> Bool {
        let nonce = nonce(index: index, last: last)
        if Self.openSSLReady, ciphertext.count >= Self.tagLength {
            let length = ciphertext.count - Self.tagLength
            let input = ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let tag = UnsafeMutablePointer(mutating: input + length)
            switch Self.withOpenSSL(
                encrypt: false,
                output.assumingMemoryBound(to: UInt8.self),
                tag: tag,
                input,
                count: length,
                associatedData,
                nonce,
                key
            ) {
            case 0: return true
            case -1: return false
            default: break  // OpenSSL failed (out of memory): libsodium decides
            }
        }
        return XChaCha20Poly1305.decrypt(ciphertext, into: output, associatedData: associatedData, nonce: nonce, key: key)
    }

    /// Opens chunk `index` and, when it fails, names why: cut short, data after the end, or modified.
    func openOrDiagnose(
        _ ciphertext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawPointer,
        index: UInt64,
        last: Bool
    )
        -> CofferCryptoError?
    {
        if open(ciphertext, into: output, index: index, last: last) { return nil }
        // A chunk that opens at the other position is authentic plaintext: sodium memory, wiped when freed.
        let scratch = sodium_malloc(max(ciphertext.count, 1))!
        defer { sodium_free(scratch) }
        if open(ciphertext, into: scratch, index: index, last: !last) {
            return last ? .truncated("chunk \(index) is not the final chunk: the file was cut short") : .trailingData(chunk: Int(index))
        }
        return .authenticationFailed(chunk: Int(index))
    }

    /// Loads OpenSSL's ChaCha20-Poly1305 on a thread of its own, for a stream of at least ``worthLoading`` bytes (or of
    /// unknown length) about to be sealed or opened: chunks use libsodium until it is ready, then OpenSSL (3.56 against
    /// 1.46 GB/s a core, 64 KiB chunks: OpenSSL has AVX-512 paths, libsodium 1.0.18 stops at AVX2). Loading costs 2.6-3
    /// ms of CPU, which the faster cipher pays back after about 7 MB.
    static func loadFasterCipher() {
        guard !openSSLReady else { return }
        DispatchQueue.global(qos: .userInitiated).async { coffer_libcrypto_preload() }
    }

    static let worthLoading = 8 << 20

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
        _ key: UnsafeRawPointer
    ) -> Int32 {
        precondition(openSSLReady && nonce.count == XChaCha20Poly1305.nonceLength)
        let key = key.assumingMemoryBound(to: UInt8.self)
        return coffer_xchacha20poly1305(encrypt ? 1 : 0, out, tag, input, count, associatedData, associatedData.count, nonce, key)
    }
}

/// Loads the faster cipher for chunks now, on this thread: for a process about to fork commands (`coffer runner`), so
/// that every fork seals and opens with it from its first chunk.
public func loadFasterChunkCipher() { coffer_libcrypto_preload() }
