import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where an agent's socket goes, and how `coffer agent start` puts the agent in the background; `coffer runner start`
/// does the same with `service` "runner".
public enum AgentLauncher {
    /// A fresh private directory `coffer-SERVICE.XXXXXX` (mode 0700) under `$XDG_RUNTIME_DIR`, else `$TMPDIR`, else
    /// `/tmp`, and the socket path `SERVICE.sock` in it (docs/FORMAT.md).
    public static func makeSocketPath(service: String = "agent") throws(CofferCryptoError) -> String {
        let environment = ProcessInfo.processInfo.environment
        let base =
            [environment["XDG_RUNTIME_DIR"], environment["TMPDIR"], "/tmp"].compactMap { $0 }.first { !$0.isEmpty && isDirectory($0) } ?? "/tmp"
        var template = Array("\(base)/coffer-\(service).XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw .agent("cannot make a private directory in \(base): \(String(cString: strerror(errno)))")
        }
        let directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return "\(directory)/\(service).sock"
    }

    /// Removes the directory ``makeSocketPath()`` made for `socketPath`, when no agent came to listen in it.
    public static func removeDirectory(of socketPath: String) {
        _ = rmdir(FileBytes.parentDirectory(of: socketPath))
    }

    private static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Starts `executable arguments...` with `3` as its ready descriptor, and waits for it to report
    /// (``reportReady(_:failure:)``): its pid once it listens, or its one-line error.
    public static func startDetached(
        executable: String,
        arguments: [String],
        environment added: [String: String] = [:],
        inheritingEnvironment: Bool = true,
        service: String = "agent"
    ) throws(CofferCryptoError) -> Int32 {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw .agent("cannot make a pipe: \(String(cString: strerror(errno)))") }
        // Neither end leaks into other children; the agent gets the write end as descriptor 3 (dup2 clears the flag).
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        // The agent never reads a passphrase from its environment: it does not inherit one to keep for its whole life.
        let inherited = inheritingEnvironment ? ProcessInfo.processInfo.environment.filter { $0.key != "COFFER_PASSPHRASE" } : [:]
        let environment = inherited.merging(added) { $1 }
        // stdin, stdout and stderr on /dev/null, the ready pipe as descriptor 3, nothing else (the agent outlives this
        // command: a descriptor it inherited would stay open as long as it runs); it leaves this session itself.
        let pid: pid_t
        do { pid = try Spawn.start(executable, arguments, environment: environment, descriptor3: ends[1]) } catch {
            close(ends[0])
            close(ends[1])
            throw .agent("cannot start \(executable): \(error.description)")
        }
        close(ends[1])
        defer { close(ends[0]) }
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
            _ = Spawn.wait(pid)
            // The agent's own line is a CofferCryptoError's description: keep one "agent: " prefix.
            throw .agent(line.isEmpty ? "the \(service) exited before it was ready" : String(line.trimmingPrefix("\(service): ")))
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
