#if canImport(Glibc)
import Glibc
#endif

/// The user's terminal, for prompts that must not go through standard input or output.
public enum Terminal {
    /// The terminal a `coffer-run` launcher passed to a command running in `coffer runner` (docs/FORMAT.md), which has
    /// no controlling terminal of its own, with the launcher's process group and pid; set once, before the command
    /// starts.
    nonisolated(unsafe) public static var passed: (descriptor: Int32, group: Int32, launcher: Int32)?

    /// A new descriptor on the terminal (read-write, close-on-exec), or -1 when there is none.
    public static func open() -> Int32 {
        if let passed { return fcntl(passed.descriptor, F_DUPFD_CLOEXEC, 3) }
        return Glibc.open("/dev/tty", O_RDWR | O_CLOEXEC)
    }

    /// Reads one byte of the terminal `fd` into `byte`; false at its end or on an error.
    ///
    /// On a passed terminal it reads only while the launcher is the terminal's foreground, waiting otherwise (a job put
    /// in the background with ^Z and `bg`), as job control stops a coffer of its own before it reads: the line typed at
    /// the shell meanwhile is not taken for this command's answer. It waits for input in steps of 100 ms, never in a
    /// read, so that no read in progress takes the first byte typed after a move to the background. A controlling
    /// terminal needs none of this.
    public static func readByte(_ fd: Int32, into byte: inout UInt8) -> Bool {
        guard let passed else { return Glibc.read(fd, &byte, 1) == 1 }
        while true {
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&ready, 1, 100)
            if n < 0 && errno != EINTR { return false }
            if n > 0 && !launcherInBackground(passed.launcher, group: passed.group) { return Glibc.read(fd, &byte, 1) == 1 }
        }
    }

    /// Whether the launcher `pid` of process group `group` is a background job of its terminal. The foreground group
    /// is read from its `/proc/PID/stat` (`tpgid`): `tcgetpgrp` answers only for a controlling terminal. False once
    /// the launcher is gone (its command then gets SIGHUP).
    private static func launcherInBackground(_ pid: Int32, group: Int32) -> Bool {
        foregroundGroup(of: pid).map { $0 != group } ?? false
    }

    /// Field 8 of `/proc/PID/stat`, the foreground process group of the process's controlling terminal.
    private static func foregroundGroup(of pid: Int32) -> Int32? {
        let fd = Glibc.open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = read(fd, &buffer, buffer.count)
        // The command name (field 2) is in parentheses and may hold spaces: the fields counted from its last ')'.
        guard n > 0, let end = buffer[0..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(end + 1)..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 5 else { return nil }
        return Int32(String(decoding: fields[5], as: UTF8.self))
    }
}
