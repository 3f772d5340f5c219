import CSodium

/// XChaCha20-Poly1305-IETF (draft-irtf-cfrg-xchacha), the one AEAD every Coffer format uses.
enum XChaCha20Poly1305 {
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
}
