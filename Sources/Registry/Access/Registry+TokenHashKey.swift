import CofferCrypto
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The key that session and API tokens are hashed under (`session-hash.key`), and the keyed hash itself.
extension Registry {
    static let sessionHashKeyName = "session-hash.key"

    /// The key token hashes are computed under: 32 random bytes in their own file (0600) beside the database, so
    /// a copy of the database alone does not let anyone test guessed tokens. Created on first use, whole or not at
    /// all (a temporary file renamed without replacing: of two first uses, the first key stands).
    func sessionHashKey() throws(CofferRegistryError) -> SecretKey {
        let path = "\(home)/\(Self.sessionHashKeyName)"
        var status = stat()
        // An empty file is an older Coffer's creation cut short: it never hashed a token, and every use failed on it.
        if stat(path, &status) == 0, status.st_size == 0, status.st_mode & S_IFMT == S_IFREG { unlink(path) }
        if access(path, F_OK) != 0 {
            let fresh = SecureBytes.random(count: SecretKey.byteCount)
            do throws(CofferCryptoError) {
                let file = try AtomicOutputFile(destination: path, mode: 0o600)
                try fresh.withUnsafeBytes { bytes throws(CofferCryptoError) in try file.write(bytes) }
                try file.commit(replacing: false)
            } catch {
                guard access(path, F_OK) == 0 else { throw .io(path: path, reason: "cannot create the session hash key: \(error)") }
            }
        }
        let key = SecureBytes(count: SecretKey.byteCount)
        let ok: Bool = key.withUnsafeMutableBytes { out in
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return false }
            defer { Glibc.close(fd) }
            return read(fd, out.baseAddress, out.count) == out.count
        }
        guard ok else { throw .io(path: path, reason: "cannot read the session hash key") }
        return SecretKey(bytes: key)
    }

    func tokenHash(_ token: borrowing SessionToken) throws(CofferRegistryError) -> [UInt8] { try hashKeyMAC(token.lookup) }

    /// BLAKE2b-256 keyed with `K_h` (the file `session-hash.key`, never in the database), of `message`.
    func hashKeyMAC(_ message: [UInt8]) throws(CofferRegistryError) -> [UInt8] {
        var key = hashKey.withLock { $0 }
        if key == nil {
            let loaded = KeyBox(try sessionHashKey())
            hashKey.withLock { $0 = loaded }
            key = loaded
        }
        return key!.key.mac(message)
    }
}
