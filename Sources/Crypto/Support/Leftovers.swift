import CFiles
import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// What Coffer writes under a temporary name (a pull's staging folder, a file before its rename into place) is recorded
/// in this user's state directory for as long as its writer lives, so that what a killed writer leaves is removed later.
/// SIGKILL, the OOM killer and crashes end a process without the interrupt handler (``TemporaryFiles``): a killed pull
/// would leave decrypted files for good.
///
/// A record is a file in `STATE/temporary/` naming the entry's device, inode and path, on which the writer holds an
/// exclusive `flock(2)`; the kernel drops the lock when the writer dies, however it dies. The first temporary entry each
/// Coffer process makes sweeps the records whose lock is free: each entry still at its path with its device and inode
/// (or renamed by an interrupt handler to `PATH.interrupted`) and owned by this user is removed, then the record.
/// Only what a Coffer process made and recorded is ever removed: not a user's file of a similar name, not a folder
/// someone renamed to such a name, not an older Coffer's live staging folder.
public enum Leftovers {
    /// One entry's record, dropped (its file deleted, its lock released) when the entry is committed or removed.
    final class Record {
        private let descriptor: Int32
        private let path: String
        private var held = true

        fileprivate init(descriptor: Int32, path: String) {
            self.descriptor = descriptor
            self.path = path
        }

        func drop() {
            guard held else { return }
            held = false
            unlink(path)
            close(descriptor)
        }

        deinit { drop() }
    }

    /// Where the records live, from the environment when first needed.
    static let records = StateDirectory.path() + "/temporary"

    /// Records `entry`, just made by this process and open as `fd`; nil when no record can be kept (no state directory):
    /// the entry is then left if the process is killed, as before records. The first call in a process sweeps first.
    static func record(entry: String, fd: Int32, in records: String = records) -> Record? {
        _ = sweptOnce
        var status = stat()
        guard fstat(fd, &status) == 0 else { return nil }
        do { try FileBytes.makePrivateDirectory(records) } catch { return nil }
        // A sweep can take a new record's lock before its writer does, find it empty and delete it: another name then.
        for _ in 0..<8 {
            let path = "\(records)/\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
            let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else {
                if errno == EEXIST { continue }
                return nil
            }
            var own = stat()
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0, fstat(descriptor, &own) == 0, own.st_nlink > 0 else {
                close(descriptor)
                continue
            }
            let line = Array("\(status.st_dev) \(status.st_ino) \(entry)\n".utf8)
            guard Glibc.write(descriptor, line, line.count) == line.count else {
                unlink(path)
                close(descriptor)
                return nil
            }
            return Record(descriptor: descriptor, path: path)
        }
        return nil
    }

    private static let sweptOnce: Void = { sweep() }()

    /// Removes what the records in `records` whose writers died name, and those records. Returns how many entries it
    /// removed. Errors are not reported: a sweep is clean-up, never a command's work.
    @discardableResult
    static func sweep(_ records: String = records) -> Int {
        guard let folder = opendir(records) else { return 0 }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if !name.hasPrefix(".") { names.append(name) }
        }
        var removed = 0
        for name in names {
            let path = "\(records)/\(name)"
            let descriptor = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard descriptor >= 0 else { continue }
            defer { close(descriptor) }
            var own = stat()
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0, fstat(descriptor, &own) == 0, own.st_nlink > 0 else { continue }
            var bytes = [UInt8](repeating: 0, count: 8192)
            let count = read(descriptor, &bytes, bytes.count)
            if count > 0, let line = String(validating: bytes[..<count], as: UTF8.self), line.hasSuffix("\n") {
                let fields = line.dropLast().split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
                if fields.count == 3, let device = UInt64(fields[0]), let inode = UInt64(fields[1]) {
                    let entry = String(fields[2])
                    if remove(entry, device: device, inode: inode) || remove(entry + ".interrupted", device: device, inode: inode) {
                        removed += 1
                    }
                }
            }
            unlink(path)
        }
        return removed
    }

    /// Removes the file or folder at `path` if it is still the one recorded (device and inode) and this user's. A folder
    /// is emptied through the descriptor checked, so that nothing renamed to `path` meanwhile loses its contents.
    private static func remove(_ path: String, device: UInt64, inode: UInt64) -> Bool {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode, status.st_uid == geteuid() else {
            return false
        }
        switch status.st_mode & S_IFMT {
        case S_IFDIR:
            coffer_empty_folder(fd)
            return rmdir(path) == 0
        case S_IFREG:
            return unlink(path) == 0
        default:
            return false
        }
    }
}
