import CofferCrypto

#if canImport(Glibc)
import Glibc
#endif

/// A token kept in a file of the user's (a session token between `session open --save-token` and `infer`): written
/// once, mode 0600, refusing a file that exists; read straight into sodium memory.
enum SecretFile {
    static func write(_ bytes: UnsafeRawBufferPointer, to path: String) throws(CofferCryptoError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var written = 0
        while written < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + written, bytes.count - written)
            guard n > 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
            written += n
        }
    }

    /// The file's bytes, one trailing newline ignored.
    static func read(_ path: String) throws(CofferCryptoError) -> SecureBytes { try Passphrase.fromFile(path) }
}
