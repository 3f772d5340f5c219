import CFiles
import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// What Coffer writes under a temporary name (a pull's staging folder, a file before its rename into place) carries an
/// exclusive `flock(2)` for as long as its writer lives. The kernel drops the lock when the writer dies, however it
/// dies: SIGKILL, the OOM killer, a crash, none of which the interrupt handler (``TemporaryFiles``) sees. A later
/// command writing into the same folder removes the leftovers whose lock it can take, so plaintext a killed pull
/// decrypted does not stay on the disk.
///
/// A sweeper can take a lock between a writer's create and its own lock. The writer then finds the lock taken, or its
/// entry gone, and makes another under a new name: ``claim(_:)``.
public enum Leftovers {
    /// The names ``AtomicOutputFile`` gives its temporary files: `.BASE.coffer-tmp-RANDOM`.
    public static func isTemporaryFileName(_ name: String) -> Bool { name.hasPrefix(".") && name.contains(".coffer-tmp-") }

    /// Takes the lock on `fd`, a file or folder this process just made: false when a sweeper got there first (it
    /// removes the entry, or has), and the caller must make another. The lock lasts while `fd` is open. On a file
    /// system without `flock` the entry goes unlocked, and no sweep can remove it either.
    public static func claim(_ fd: Int32) -> Bool {
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EWOULDBLOCK { return false }
            if errno != EINTR { break }
        }
        var status = stat()
        return fstat(fd, &status) == 0 && status.st_nlink > 0
    }

    /// Removes the entries of `directory` whose names pass `isLeftover`, that belong to this user and whose lock is free
    /// (their writer died). Symbolic links are left, and so is anything that cannot be opened or locked. Returns how
    /// many entries it removed; errors are not reported, as a sweep is clean-up, never a command's work.
    @discardableResult
    public static func sweep(_ directory: String, where isLeftover: (String) -> Bool) -> Int {
        guard let folder = opendir(directory.isEmpty ? "." : directory) else { return 0 }
        defer { closedir(folder) }
        var candidates: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if isLeftover(name) { candidates.append(name) }
        }
        let parent = dirfd(folder)
        var removed = 0
        for name in candidates {
            let fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var held = stat()
            var named = stat()
            // The entry is still the one locked (not renamed away and replaced meanwhile) and it is ours to remove.
            guard fstat(fd, &held) == 0, held.st_uid == geteuid(), flock(fd, LOCK_EX | LOCK_NB) == 0,
                fstatat(parent, name, &named, AT_SYMLINK_NOFOLLOW) == 0, named.st_dev == held.st_dev, named.st_ino == held.st_ino
            else { continue }
            let gone =
                held.st_mode & S_IFMT == S_IFDIR
                ? coffer_remove_tree("\(directory.isEmpty ? "." : directory)/\(name)") == 0 : unlinkat(parent, name, 0) == 0
            if gone { removed += 1 }
        }
        return removed
    }
}
