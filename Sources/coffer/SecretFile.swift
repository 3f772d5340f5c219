import CofferCrypto

/// A token kept in a file of the user's (a session token between `session open --save-token` and `infer`): written
/// once, whole or not at all (a temporary file renamed into place), mode 0600, never over a file or link that exists;
/// read straight into sodium memory.
enum SecretFile {
    static func write(_ bytes: UnsafeRawBufferPointer, to path: String) throws(CofferCryptoError) {
        let file = try AtomicOutputFile(destination: path, mode: 0o600)
        try file.write(bytes)
        try file.commit(replacing: false)
    }

    /// The file's bytes, one trailing newline ignored.
    static func read(_ path: String) throws(CofferCryptoError) -> SecureBytes { try Passphrase.fromFile(path) }
}
