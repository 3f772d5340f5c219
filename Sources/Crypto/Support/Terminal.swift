#if canImport(Glibc)
import Glibc
#endif

/// The user's terminal, for prompts that must not go through standard input or output.
public enum Terminal {
    /// The terminal a `coffer-run` launcher passed to a command running in `coffer runner` (docs/FORMAT.md), which has
    /// no controlling terminal of its own, and the launcher's process group; set once, before the command starts.
    nonisolated(unsafe) public static var passed: (descriptor: Int32, group: Int32)?

    /// A new descriptor on the terminal (read-write, close-on-exec), or -1 when there is none.
    public static func open() -> Int32 {
        if let passed { return fcntl(passed.descriptor, F_DUPFD_CLOEXEC, 3) }
        return Glibc.open("/dev/tty", O_RDWR | O_CLOEXEC)
    }

    /// Reads one byte of the terminal `fd` into `byte`; false at its end or on an error.
    ///
    /// On a passed terminal it first waits while the launcher is not the terminal's foreground (a job put in the
    /// background with ^Z and `bg`), as job control stops a coffer of its own before it reads: the line typed at the
    /// shell meanwhile is not taken for this command's answer. A controlling terminal needs no wait.
    public static func readByte(_ fd: Int32, into byte: inout UInt8) -> Bool {
        awaitForeground(fd)
        return Glibc.read(fd, &byte, 1) == 1
    }

    private static func awaitForeground(_ fd: Int32) {
        guard let passed else { return }
        while true {
            let foreground = tcgetpgrp(fd)
            if foreground == passed.group || foreground < 0 { return }
            usleep(100_000)
        }
    }
}
