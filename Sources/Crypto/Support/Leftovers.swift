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

        /// Lets the record go without deleting it, for a later sweep: its writer could not remove the entry (the path
        /// it knows it by leads elsewhere now, a link changed or a folder moved), and the record names it resolved.
        func abandon() {
            guard held else { return }
            held = false
            close(descriptor)
        }

        deinit { drop() }
    }

    /// Where the records live, from the environment when first needed.
    static let records = StateDirectory.path() + "/temporary"

    /// Records `entry`, just made by this process and open as `fd`; nil when no record can be kept (no state directory,
    /// one that is not this user's alone, a folder that does not resolve): the entry is then left if the process is
    /// killed, as before records. The first call in a process sweeps first.
    static func record(entry: String, fd: Int32, in records: String = records) -> Record? {
        _ = sweptOnce
        var status = stat()
        guard fstat(fd, &status) == 0, let path = resolved(entry) else { return nil }
        do { try FileBytes.makePrivateDirectory(records) } catch { return nil }
        guard let folderFD = openPrivateFolder(records) else { return nil }
        defer { close(folderFD) }
        // A sweep can take a new record's lock before its writer does, find it empty and delete it: another name then.
        for _ in 0..<8 {
            let name = "record-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
            let descriptor = openat(folderFD, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else {
                if errno == EEXIST { continue }
                return nil
            }
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
                // Taken by a sweep (it will delete this empty record): another name. Anything else: no locks here.
                let contended = errno == EWOULDBLOCK
                unlinkat(folderFD, name, 0)
                close(descriptor)
                if contended { continue }
                return nil
            }
            var own = stat()
            guard fstat(descriptor, &own) == 0, own.st_nlink > 0 else {
                close(descriptor)
                continue
            }
            let line = Array("\(status.st_dev) \(status.st_ino) ".utf8) + path + [UInt8(ascii: "\n")]
            guard Glibc.write(descriptor, line, line.count) == line.count else {
                unlinkat(folderFD, name, 0)
                close(descriptor)
                return nil
            }
            return Record(descriptor: descriptor, path: "\(records)/\(name)")
        }
        return nil
    }

    private static let sweptOnce: Void = { sweep() }()

    /// `records` opened if it is a folder (not a link to one) of this user's that no one else may write; nil otherwise.
    private static func openPrivateFolder(_ records: String) -> Int32? {
        let folderFD = open(records, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard folderFD >= 0 else { return nil }
        var status = stat()
        guard fstat(folderFD, &status) == 0, status.st_uid == geteuid(), status.st_mode & 0o022 == 0 else {
            close(folderFD)
            return nil
        }
        return folderFD
    }

    /// Removes what the records in `records` whose writers died name, and those records. Returns how many entries it
    /// removed. Errors are not reported: a sweep is clean-up, never a command's work.
    ///
    /// Records are trusted only in a folder of this user's that no one else may write, and only if each is this user's
    /// own file named as Coffer names records; even then only an entry named as Coffer names its temporary entries is
    /// removed. Whoever could write a record could otherwise have any file of this user's removed, and a `temporary`
    /// folder of the user's own that the state path leads to (through a link someone else made) keeps its files.
    @discardableResult
    static func sweep(_ records: String = records) -> Int {
        guard let folderFD = openPrivateFolder(records), let folder = fdopendir(folderFD) else { return 0 }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name.hasPrefix("record-") && isID(name.dropFirst("record-".count)) || isID(name[...]) { names.append(name) }
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
            let count = max(0, read(descriptor, &bytes, bytes.count))
            guard let (device, inode, entry) = parse(bytes[..<count]) else {
                // An earlier Coffer's record is named by its ID alone: a file so named that holds no record is not one.
                if name.hasPrefix("record-") { unlinkat(folderFD, name, 0) }
                continue
            }
            var found = remove(entry, device: device, inode: inode)
            if found != .removed {
                let interrupted = remove(entry + Array(".interrupted".utf8), device: device, inode: inode)
                if interrupted != .notThere { found = interrupted }
            }
            if found == .removed { removed += 1 }
            let days = found == .removed ? 0 : found == .stillThere ? 30 : daysKept(entry, device: device)
            if days > 0, own.st_mtim.tv_sec > now - days * 86_400 { continue }
            unlinkat(folderFD, name, 0)
        }
        return removed
    }

    /// A record's line: device, inode and the entry's path from the root (bytes).
    private static func parse(_ bytes: ArraySlice<UInt8>) -> (device: UInt64, inode: UInt64, entry: [UInt8])? {
        guard bytes.last == UInt8(ascii: "\n") else { return nil }
        let fields = bytes.dropLast().split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3, let device = UInt64(String(decoding: fields[0], as: UTF8.self)),
            let inode = UInt64(String(decoding: fields[1], as: UTF8.self)), fields[2].first == UInt8(ascii: "/"), !fields[2].contains(0)
        else { return nil }
        return (device, inode, Array(fields[2]))
    }

    /// 1 to 13 base-36 digits: the random part of a record's or a temporary entry's name.
    private static func isID(_ id: Substring) -> Bool {
        (1...13).contains(id.count) && id.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x7A).contains($0) }
    }

    /// Whether `name` is one Coffer gives a temporary entry: `.coffer-pull-ID`, `coffer-fl-sim-ID` or `.BASE.coffer-tmp-ID`
    /// (ID 1 to 13 base-36 digits), or one of those with `.interrupted` after it.
    static func isTemporaryName(_ name: Substring) -> Bool {
        let name = name.hasSuffix(".interrupted") ? name.dropLast(".interrupted".count) : name
        for prefix in [".coffer-pull-", "coffer-fl-sim-"] where name.hasPrefix(prefix) && isID(name.dropFirst(prefix.count)) { return true }
        guard name.hasPrefix("."), let marker = name.ranges(of: ".coffer-tmp-").last else { return false }
        return marker.lowerBound > name.index(after: name.startIndex) && isID(name[marker.upperBound...])
    }

    /// Removes the file or folder at `entry` (bytes, from the root) if it is named as a temporary entry and is still the
    /// one recorded (device and inode) and this user's. It is reached through its folder's descriptor (a folder path
    /// under PATH_MAX with a long name still opens), looked at without being opened (a device is never opened), and a
    /// folder is emptied through the descriptor checked, so that nothing renamed to its name meanwhile loses its contents.
    /// Returns whether it removed it, found it there but could not, or found nothing recorded there (no such name, another
    /// entry at it, a name not a temporary one, or a folder it could not open).
    private static func remove(_ entry: [UInt8], device: UInt64, inode: UInt64) -> Found {
        guard let slash = entry.lastIndex(of: UInt8(ascii: "/")),
            isTemporaryName(Substring(String(decoding: entry[(slash + 1)...], as: UTF8.self)))
        else { return .notThere }
        let name = entry[(slash + 1)...].map { CChar(bitPattern: $0) } + [0]
        let folder = open(folderPath(of: entry, slash: slash), O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else { return .notThere }
        defer { close(folder) }
        func isRecorded(_ fd: Int32) -> stat? {
            var status = stat()
            guard fstat(fd, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode, status.st_uid == geteuid() else {
                return nil
            }
            return status
        }
        let handle = openat(folder, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard handle >= 0 else { return .notThere }
        defer { close(handle) }
        guard let status = isRecorded(handle) else { return .notThere }
        switch status.st_mode & S_IFMT {
        case S_IFDIR:
            let fd = openat(folder, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return .stillThere }
            defer { close(fd) }
            guard isRecorded(fd) != nil else { return .stillThere }
            coffer_empty_folder(fd)
            return unlinkat(folder, name, AT_REMOVEDIR) == 0 ? .removed : .stillThere
        case S_IFREG:
            return unlinkat(folder, name, 0) == 0 ? .removed : .stillThere
        default:
            return .stillThere
        }
    }

    /// What ``remove(_:device:inode:)`` found at a recorded entry.
    private enum Found { case removed, stillThere, notThere }

    /// For how many days after it was written a record is kept for later sweeps when nothing it names is there: 30 while
    /// its folder may be on a disk not mounted now (the entry's folder, else the nearest folder above it that is there, on
    /// another device, or an error other than "not there" on the way); 1 when its folder is gone from a mounted file
    /// system (a mount namespace's or a network file system's view may show it again), so that such records, one for
    /// each test folder removed with a killed writer's entry in it, do not pile up for a month, each read by every
    /// command's sweep; 0 when its folder is there on the recorded device. (A record whose entry is still there, this
    /// user's, is kept 30 days: its removal is tried again.)
    private static func daysKept(_ entry: [UInt8], device: UInt64) -> Int {
        guard var slash = entry.lastIndex(of: UInt8(ascii: "/")) else { return 0 }
        var status = stat()
        var above = false
        while stat(folderPath(of: entry, slash: slash), &status) != 0 {
            guard errno == ENOENT || errno == ENOTDIR, slash > 0, let next = entry[..<slash].lastIndex(of: UInt8(ascii: "/")) else {
                return 30
            }
            (slash, above) = (next, true)
        }
        return UInt64(status.st_dev) != device ? 30 : above ? 1 : 0
    }

    /// The folder of `entry` (bytes, from the root; `slash` its last) as a C string.
    private static func folderPath(of entry: [UInt8], slash: Int) -> [CChar] {
        (slash == 0 ? [UInt8(ascii: "/")] : Array(entry[..<slash])).map { CChar(bitPattern: $0) } + [0]
    }

    /// `entry`'s path from the root with its folder resolved (no link, `.` or `..`), as bytes: a record must name the
    /// entry the same for a sweep run from anywhere, after a link on the way is changed, and in a folder whose name is
    /// not UTF-8. Nil when the folder does not resolve (a path longer than PATH_MAX).
    private static func resolved(_ entry: String) -> [UInt8]? {
        var bytes = Array(entry.utf8)[...]
        while bytes.count > 1, bytes.last == UInt8(ascii: "/") { bytes = bytes.dropLast() }
        let slash = bytes.lastIndex(of: UInt8(ascii: "/"))
        let name = slash.map { bytes[($0 + 1)...] } ?? bytes
        let folder = slash.map { $0 == bytes.startIndex ? [UInt8(ascii: "/")] : Array(bytes[..<$0]) } ?? [UInt8(ascii: ".")]
        guard !name.isEmpty, name.elementsEqual(".".utf8) == false, name.elementsEqual("..".utf8) == false,
            let real = realpath(folder.map { CChar(bitPattern: $0) } + [0], nil)
        else { return nil }
        defer { free(real) }
        // glibc resolves a relative folder past PATH_MAX; a sweep could not open it.
        guard strlen(real) < Int(PATH_MAX) else { return nil }
        let root = Array(UnsafeRawBufferPointer(start: real, count: strlen(real)))
        return (root == [UInt8(ascii: "/")] ? [] : root) + [UInt8(ascii: "/")] + name
    }
}
