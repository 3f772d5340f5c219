#if canImport(Glibc)
import Glibc
#endif

/// Temporary files to remove if the process is interrupted (SIGINT, SIGTERM, SIGHUP) before commit.
///
/// The signal handler only calls `unlink` and `_exit`, both async-signal-safe, on paths kept as C strings.
/// It tracks up to 64 files open at once; a process with more would leave the rest behind on an interrupt.
public enum TemporaryFiles {
    nonisolated(unsafe) private static var paths: [UnsafeMutablePointer<CChar>?] = Array(repeating: nil, count: 64)
    private static let lock = Lock()

    static func register(_ path: String) {
        lock.withLock {
            if let slot = paths.firstIndex(where: { $0 == nil }) { paths[slot] = strdup(path) }
        }
    }

    static func unregister(_ path: String) {
        lock.withLock {
            for i in paths.indices where paths[i].map({ String(cString: $0) == path }) == true {
                free(paths[i])
                paths[i] = nil
            }
        }
    }

    /// Installs the handler that removes registered temporary files when the process is told to stop.
    public static func removeOnInterrupt() {
        // A parent may have spawned us with these signals blocked (some test runners do): unblock them.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&unblock, signal) }
        sigprocmask(SIG_UNBLOCK, &unblock, nil)
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                for path in TemporaryFiles.paths { if let path { unlink(path) } }
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
