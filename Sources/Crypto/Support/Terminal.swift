#if canImport(Glibc)
import Glibc
#endif

/// The user's terminal, for prompts that must not go through standard input or output.
public enum Terminal {
    /// The terminal a `coffer-run` launcher passed to a command running in `coffer runner` (docs/FORMAT.md), which has
    /// no controlling terminal of its own; set once, before the command starts.
    nonisolated(unsafe) public static var passed: Int32?

    /// A new descriptor on the terminal (read-write, close-on-exec), or -1 when there is none.
    public static func open() -> Int32 {
        if let passed { return fcntl(passed, F_DUPFD_CLOEXEC, 3) }
        return Glibc.open("/dev/tty", O_RDWR | O_CLOEXEC)
    }
}
