import CFiles
import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// A private folder for files that must not outlive the command that writes them (a pull's decrypted files before they
/// take their places, the split training data of `fl simulate`). It is removed when the value goes, when the process is
/// interrupted (``TemporaryFiles``), and, when the process is killed or crashes, by the next Coffer process that makes
/// a temporary file or folder (``Leftovers``).
public struct TemporaryFolder: ~Copyable {
    public let path: String
    /// Held while the folder is in use.
    private let record: Leftovers.Record?

    /// Makes `parent/prefix<random>`, mode 0700. `parent` must exist.
    public init(in parent: String, prefix: String) throws(CofferCryptoError) {
        while true {
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
            guard fd >= 0 else {
                let code = errno
                rmdir(path)
                TemporaryFiles.unregister(path)
                throw .io(path: path, reason: String(cString: strerror(code)))
            }
            self.path = path
            record = Leftovers.record(entry: path, fd: fd)
            close(fd)
            return
        }
    }

    /// The folder has taken its place under another name (a pull's staging folder renamed to the output): nothing is
    /// left to remove, now or after a kill.
    public func renamedAway() { record?.drop() }

    deinit {
        // A folder not found at its path (a link on the way changed, a folder moved) is left to the record's sweep.
        var status = stat()
        if lstat(path, &status) == 0, coffer_remove_tree(path) == 0 { record?.drop() } else { record?.abandon() }
        TemporaryFiles.unregister(path)
    }
}
