import CLinux
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where an agent's socket goes, and how `coffer agent start` puts the agent in the background.
public enum AgentLauncher {
    /// A fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR`, else `$TMPDIR`, else `/tmp`, and the socket
    /// path in it (docs/FORMAT.md).
    public static func makeSocketPath() throws(CofferCryptoError) -> String {
        let environment = ProcessInfo.processInfo.environment
        let base =
            [environment["XDG_RUNTIME_DIR"], environment["TMPDIR"], "/tmp"].compactMap { $0 }.first { !$0.isEmpty && isDirectory($0) } ?? "/tmp"
        var template = Array("\(base)/coffer-agent.XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw .agent("cannot make a private directory in \(base): \(String(cString: strerror(errno)))")
        }
        let directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return "\(directory)/agent.sock"
    }

    private static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Starts `executable arguments...` with `3` as its ready descriptor, and waits for it to report
    /// (``reportReady(_:failure:)``): its pid once it listens, or its one-line error.
    public static func startDetached(executable: String, arguments: [String]) throws(CofferCryptoError) -> Int32 {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw .agent("cannot make a pipe: \(String(cString: strerror(errno)))") }
        // Neither end leaks into other children; the agent gets the write end as descriptor 3 (dup2 clears the flag).
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        // The agent never reads a passphrase from its environment: it does not inherit one to keep for its whole life.
        let environment = ProcessInfo.processInfo.environment.filter { $0.key != "COFFER_PASSPHRASE" }
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv + envp { free(pointer) }
        }
        // stdin, stdout and stderr on /dev/null, the ready pipe as descriptor 3; the agent leaves this session itself.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, ends[1], 3)
        // The agent outlives this command: any other descriptor it inherited (a pipe a caller reads to its end, a
        // socket another thread opened a moment ago) would stay open as long as the agent runs, so all are closed.
        coffer_spawn_close_from(&actions, 4)
        var pid: pid_t = 0
        let error = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        close(ends[1])
        defer { close(ends[0]) }
        guard error == 0, pid > 0 else { throw .agent("cannot start \(executable): \(String(cString: strerror(error)))") }
        var report: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let n = read(ends[0], &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            report += buffer[0..<n]
        }
        let line = String(decoding: report, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard line == "ready" else {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            // The agent's own line is a CofferCryptoError's description: keep one "agent: " prefix.
            throw .agent(line.isEmpty ? "the agent exited before it was ready" : String(line.trimmingPrefix("agent: ")))
        }
        return pid
    }

    /// In the started agent: leaves the terminal's session (a hangup or ^C there must not end it), once.
    public static func detach() {
        _ = setsid()
    }

    /// In the started agent: tells `start` it listens (`nil`) or why it cannot (one line), on descriptor `fd`.
    public static func reportReady(_ fd: Int32, failure: String? = nil) {
        let line = Array(((failure ?? "ready") + "\n").utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        close(fd)
    }
}
