import CSodium

/// XChaCha20-Poly1305-IETF over one chunk of a sealed file (docs/FORMAT.md, "Chunks").
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
    func seal(_ plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, index: UInt64, last: Bool) {
        XChaCha20Poly1305.encrypt(plaintext, into: output, associatedData: associatedData, nonce: nonce(index: index, last: last), key: key)
    }

    /// Authenticates and decrypts `ciphertext` (data then 16-byte tag) into `output`; false if it does not verify.
    func open(_ ciphertext: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, index: UInt64, last: Bool) -> Bool {
        XChaCha20Poly1305.decrypt(ciphertext, into: output, associatedData: associatedData, nonce: nonce(index: index, last: last), key: key)
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
}
