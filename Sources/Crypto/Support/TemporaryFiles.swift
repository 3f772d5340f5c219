import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Temporary files, and folders of them, to remove if the process is interrupted (SIGINT, SIGTERM, SIGHUP) before
/// they are committed or taken into place.
///
/// The signal handler only calls `unlink`, ``coffer_remove_tree`` (for a folder) and `_exit`, all async-signal-safe, on
/// paths kept as C strings. It tracks up to 256 paths at once; a process with more would leave the rest behind on an
/// interrupt.
public enum TemporaryFiles {
    /// A path, and whether it is a folder to remove with everything in it.
    private struct Entry {
        var path: UnsafeMutablePointer<CChar>
        var isTree: Bool
    }

    nonisolated(unsafe) private static var entries: [Entry?] = Array(repeating: nil, count: 256)
    private static let lock = Lock()

    /// Removes the file at `path` if the process is interrupted, until ``unregister(_:)``.
    public static func register(_ path: String) { add(path, isTree: false) }

    /// Removes the folder at `path`, and everything in it, if the process is interrupted, until ``unregister(_:)``.
    public static func registerTree(_ path: String) { add(path, isTree: true) }

    private static func add(_ path: String, isTree: Bool) {
        lock.withLock {
            if let slot = entries.firstIndex(where: { $0 == nil }), let copy = strdup(path) { entries[slot] = Entry(path: copy, isTree: isTree) }
        }
    }

    public static func unregister(_ path: String) {
        lock.withLock {
            for i in entries.indices where entries[i].map({ String(cString: $0.path) == path }) == true {
                free(entries[i]!.path)
                entries[i] = nil
            }
        }
    }

    /// Installs the handler that removes registered temporary files when the process is told to stop.
    public static func removeOnInterrupt() {
        // The handler must not be the first to touch the table (its lazy initialisation allocates).
        lock.withLock { _ = entries.count }
        // A parent may have spawned us with these signals blocked (some test runners do): unblock them.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&unblock, signal) }
        sigprocmask(SIG_UNBLOCK, &unblock, nil)
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                for entry in TemporaryFiles.entries {
                    guard let entry else { continue }
                    if entry.isTree { _ = coffer_remove_tree(entry.path) } else { unlink(entry.path) }
                }
                _exit(128 + signal)
            }
            sigemptyset(&action.sa_mask)
            sigaction(signal, &action, nil)
        }
    }
}

/// A pthread mutex, for the few places that need one outside Swift concurrency.
final class Lock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
