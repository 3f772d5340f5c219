import CLinux
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starts a program with `posix_spawn` and waits for it with `waitpid`: `coffer agent start`, and the tests' runs of
/// coffer and of PostgreSQL's tools.
///
/// Every descriptor but the child's standard three (and descriptor 3 when one is handed over) is closed in the child:
/// SwiftNIO opens its sockets without close-on-exec, so a child that outlives the call (a server, an agent) would
/// otherwise hold every connection open in any thread at that moment, and the server at the other end would never see
/// them end. Not Foundation's `Process`: under the test runner it once missed a child's exit (the child stayed a
/// zombie and `waitUntilExit` never returned).
public enum Spawn {
    /// Where one of the child's standard descriptors goes.
    public enum Stream: Sendable {
        case null
        /// A file opened (for output: created or truncated, mode 0600) in the child.
        case file(String)
        /// A descriptor of this process, duplicated onto the child's.
        case descriptor(Int32)
        /// Standard error only: the same file as standard output.
        case output
    }

    /// Starts `executable` with `arguments` and returns its pid.
    ///
    /// - Parameters:
    ///   - environment: the child's whole environment; `nil` passes this process's own.
    ///   - descriptor3: a descriptor of this process that the child gets as its descriptor 3.
    public static func start(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        stdin: Stream = .null,
        stdout: Stream = .null,
        stderr: Stream = .null,
        descriptor3: Int32? = nil
    ) throws(CofferCryptoError) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .file(let path):
                posix_spawn_file_actions_addopen(&actions, target, path, target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
            case .output: posix_spawn_file_actions_adddup2(&actions, 1, target)
            }
        }
        if let descriptor3 { posix_spawn_file_actions_adddup2(&actions, descriptor3, 3) }
        coffer_spawn_close_from(&actions, descriptor3 == nil ? 3 : 4)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            for pointer in argv + (envp ?? []) { free(pointer) }
        }
        // An empty signal mask and every signal at its default: a child spawned from a Swift concurrency or Dispatch
        // thread would otherwise start with that thread's mask, most signals blocked (a runner started so never saw
        // the SIGTERM of `runner stop`), and with what this process ignores (SIGPIPE, say) still ignored.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let error =
            envp.map { posix_spawn(&pid, executable, &actions, &attributes, argv, $0) }
            ?? posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard error == 0, pid > 0 else { throw .io(path: executable, reason: String(cString: strerror(error))) }
        return pid
    }

    /// A pipe (read end, write end) whose ends are close-on-exec from the start, so that no child another thread spawns
    /// meanwhile (with Foundation's `Process`, which closes only the descriptors it listed before) inherits one: a
    /// child holding a pipe's write end keeps its reader waiting for an end of file as long as it lives.
    public static func pipe() throws(CofferCryptoError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard coffer_pipe2(&fds, O_CLOEXEC) == 0 else { throw .io(path: "pipe", reason: String(cString: strerror(errno))) }
        return (fds[0], fds[1])
    }

    /// Waits for `pid` to end: its exit status, or 128 plus the signal that ended it (as a shell reports it).
    /// -1 when it is not a child of this process (or was already waited for).
    public static func wait(_ pid: Int32) -> Int32 {
        var status: Int32 = 0
        var ended: pid_t
        repeat { ended = waitpid(pid, &status, 0) } while ended < 0 && errno == EINTR
        return ended < 0 ? -1 : exitCode(status)
    }

    /// Whether `pid` has ended, without waiting: its status as ``wait(_:)`` gives it, nil while it runs, -1 when it is
    /// not a child of this process (or was already waited for).
    public static func poll(_ pid: Int32) -> Int32? {
        var status: Int32 = 0
        var ended: pid_t
        repeat { ended = waitpid(pid, &status, WNOHANG) } while ended < 0 && errno == EINTR
        if ended < 0 { return -1 }
        return ended == pid ? exitCode(status) : nil
    }

    /// WIFEXITED / WEXITSTATUS / WTERMSIG by hand: they are macros.
    private static func exitCode(_ status: Int32) -> Int32 {
        status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
