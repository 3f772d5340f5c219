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
/// (or renamed by an interrupt handler to `PATH.interrupted`), owned by this user and named as Coffer names temporary
/// entries, is removed, then the record. Only what a Coffer process made and recorded is ever removed: not a user's
/// file of a similar name, not a folder someone renamed to such a name, not an older Coffer's live staging folder, and
/// nothing a record planted by someone else names (records are read only from a folder no one else may write).
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
            let line = Array("\(status.st_dev) \(status.st_ino) \(absolute(entry))\n".utf8)
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
    ///
    /// Records are trusted only in a folder of this user's that no one else may write, and only if each is this user's
    /// own file; even then only an entry named as Coffer names its temporary entries is removed. Whoever could write a
    /// record could otherwise have any file of this user's removed.
    @discardableResult
    static func sweep(_ records: String = records) -> Int {
        let folderFD = open(records, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard folderFD >= 0 else { return 0 }
        var folderStatus = stat()
        guard fstat(folderFD, &folderStatus) == 0, folderStatus.st_uid == geteuid(), folderStatus.st_mode & 0o022 == 0,
            let folder = fdopendir(folderFD)
        else {
            close(folderFD)
            return 0
        }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if !name.hasPrefix(".") { names.append(name) }
        }
        let now = time(nil)
        var removed = 0
        for name in names {
            let descriptor = openat(folderFD, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard descriptor >= 0 else { continue }
            defer { close(descriptor) }
            var own = stat()
            guard fstat(descriptor, &own) == 0, own.st_mode & S_IFMT == S_IFREG, own.st_uid == geteuid(), own.st_nlink == 1,
                flock(descriptor, LOCK_EX | LOCK_NB) == 0
            else { continue }
            var bytes = [UInt8](repeating: 0, count: 8192)
            let count = read(descriptor, &bytes, bytes.count)
            var done = true
            if count > 0, let line = String(validating: bytes[..<count], as: UTF8.self), line.hasSuffix("\n") {
                let fields = line.dropLast().split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
                if fields.count == 3, let device = UInt64(fields[0]), let inode = UInt64(fields[1]) {
                    let entry = String(fields[2])
                    if remove(entry, device: device, inode: inode) || remove(entry + ".interrupted", device: device, inode: inode) {
                        removed += 1
                    } else if !folderIsThere(of: entry, device: device) {
                        // Its folder is not there (an unmounted disk, a renamed folder): kept for a later sweep, for 30 days.
                        done = now - own.st_mtim.tv_sec > 30 * 86_400
                    }
                }
            }
            if done { unlinkat(folderFD, name, 0) }
        }
        return removed
    }

    /// Whether `name` is one Coffer gives a temporary entry: `.coffer-pull-ID`, `coffer-fl-sim-ID` or `.BASE.coffer-tmp-ID`
    /// (ID 1 to 13 base-36 digits), or one of those with `.interrupted` after it.
    static func isTemporaryName(_ name: Substring) -> Bool {
        let name = name.hasSuffix(".interrupted") ? name.dropLast(".interrupted".count) : name
        func isID(_ id: Substring) -> Bool {
            (1...13).contains(id.count) && id.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x7A).contains($0) }
        }
        for prefix in [".coffer-pull-", "coffer-fl-sim-"] where name.hasPrefix(prefix) { return isID(name.dropFirst(prefix.count)) }
        guard name.hasPrefix("."), let marker = name.ranges(of: ".coffer-tmp-").last else { return false }
        return marker.lowerBound > name.index(after: name.startIndex) && isID(name[marker.upperBound...])
    }

    /// Removes the file or folder at `path` if it is named as a temporary entry and is still the one recorded (device
    /// and inode) and this user's. It is looked at without being opened (a device is never opened); a folder is emptied
    /// through the descriptor checked, so that nothing renamed to `path` meanwhile loses its contents.
    private static func remove(_ path: String, device: UInt64, inode: UInt64) -> Bool {
        guard path.hasPrefix("/"), let slash = path.lastIndex(of: "/"), isTemporaryName(path[path.index(after: slash)...]) else { return false }
        func isRecorded(_ fd: Int32) -> stat? {
            var status = stat()
            guard fstat(fd, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode, status.st_uid == geteuid() else {
                return nil
            }
            return status
        }
        let handle = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard handle >= 0 else { return false }
        defer { close(handle) }
        guard let status = isRecorded(handle) else { return false }
        switch status.st_mode & S_IFMT {
        case S_IFDIR:
            let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            guard isRecorded(fd) != nil else { return false }
            coffer_empty_folder(fd)
            return rmdir(path) == 0
        case S_IFREG:
            return unlink(path) == 0
        default:
            return false
        }
    }

    /// Whether the folder of `path` is there, on the recorded device: then an entry not found there is gone for good.
    private static func folderIsThere(of path: String, device: UInt64) -> Bool {
        var status = stat()
        return stat(FileBytes.parentDirectory(of: path), &status) == 0 && UInt64(status.st_dev) == device
    }

    /// `path` from the root: a record must name its entry the same for a sweep run from anywhere.
    private static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        guard let working = getcwd(nil, 0) else { return path }
        defer { free(working) }
        let directory = String(cString: working)
        return (directory == "/" ? "" : directory) + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
    }
}
