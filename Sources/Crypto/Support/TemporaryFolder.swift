import CFiles

#if canImport(Glibc)
import Glibc
#endif

/// A private folder for files that must not outlive the command that writes them (a pull's decrypted files before they
/// take their places, the split training data of `fl simulate`). It is removed when the value goes, when the process is
/// interrupted (``TemporaryFiles``), and, when the process is killed or crashes, by the next `TemporaryFolder` made with
/// the same prefix in the same parent (``Leftovers``).
public struct TemporaryFolder: ~Copyable {
    public let path: String
    /// Open on the folder, holding its lock.
    private let descriptor: Int32

    /// Makes `parent/prefix<random>`, mode 0700, after removing the folders of that prefix in `parent` whose writers
    /// died. `parent` must exist.
    public init(in parent: String, prefix: String) throws(CofferCryptoError) {
        Leftovers.sweep(parent) { $0.hasPrefix(prefix) }
        // A sweep elsewhere can take a new folder's lock before its maker does, and remove it: another name then.
        for _ in 0..<8 {
            let path = "\(parent)/\(prefix)\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
            // Registered first, so that an interrupt right after the mkdir removes it.
            guard TemporaryFiles.registerTree(path) else {
                throw .io(path: parent, reason: "more temporary files than an interrupt could remove; try again")
            }
            guard mkdir(path, 0o700) == 0 else {
                let code = errno
                TemporaryFiles.unregister(path)
                if code == EEXIST { continue }
                throw .io(path: path, reason: "cannot create directory: \(String(cString: strerror(code)))")
            }
            chmod(path, 0o700)  // exactly, whatever the umask
            let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0, Leftovers.claim(fd) {
                self.path = path
                descriptor = fd
                return
            }
            if fd >= 0 { close(fd) }
            TemporaryFiles.unregister(path)
        }
        throw .io(path: parent, reason: "cannot keep a temporary folder there: something else keeps removing it")
    }

    deinit {
        coffer_remove_tree(path)
        TemporaryFiles.unregister(path)
        close(descriptor)
    }
}
