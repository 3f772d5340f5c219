import CRunner

#if canImport(Glibc)
import Glibc
#endif

/// A refusal of the runner, as one line.
public struct RunnerError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// What a fork of the runner runs: the launcher's arguments, with its descriptors, directory, umask and environment
/// already in place.
public struct RunnerCommand {
    /// The arguments after the program's name, as the launcher gave them.
    public let arguments: [[UInt8]]
    /// The launcher's terminal, for prompts, with the launcher's process group and pid.
    public let terminal: (descriptor: Int32, group: Int32, launcher: Int32)?
}

/// The runner's process (docs/FORMAT.md, "Command runner protocol"): one thread that accepts launchers and forks for
/// each. ``serve()`` returns only in a fork, with the command the fork is to run.
public final class RunnerServer {
    public let socketPath: String
    private let listener: Int32
    /// The file this process runs, as the path it had at the start and its device and inode.
    private let imagePath: String
    private let image: (dev_t, ino_t)
    /// Whether forks can report their exit status before their teardown (``coffer_runner_prepare_exit_report``).
    private let reportsExits: Bool

    /// Listens at `socketPath` (mode 0600).
    public init(socketPath: String) throws(RunnerError) {
        var link = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &link, link.count - 1)
        var info = stat()
        guard length > 0, stat("/proc/self/exe", &info) == 0 else { throw RunnerError("cannot find this program's file") }
        imagePath = String(decoding: link[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        image = (info.st_dev, info.st_ino)
        guard var address = unixAddress(Array(socketPath.utf8)) else { throw RunnerError("socket path too long: \(socketPath)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RunnerError("cannot make a socket: \(String(cString: strerror(errno)))") }
        let saved = Glibc.umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        _ = Glibc.umask(saved)
        guard bound == 0, listen(fd, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw RunnerError("cannot listen at \(socketPath): \(reason)")
        }
        self.socketPath = socketPath
        listener = fd
        // Before the warm-up registers any exit handler (OpenSSL's), so that a fork's report runs after all of them.
        // Without it, every status comes from the pidfd, after the fork's teardown.
        reportsExits = coffer_runner_prepare_exit_report() == 0
    }

    /// A running command: its process, pidfd, launcher's connection, and the socket its exit status comes on.
    private struct Child {
        let pid: pid_t
        let pidfd: Int32
        /// -1 once the launcher has its `exited`.
        var connection: Int32
        /// Where the command's exit handler sends its wait status (``coffer_runner_report_exit_to``); -1 once read or
        /// closed, or when the socket pair could not be made.
        var exitReport: Int32
        /// The launcher went away; the command has had its SIGHUP.
        var hungUp = false
    }

    /// At most this many commands at once; more connections wait in the listen queue. Each running command holds three
    /// descriptors here (its pidfd, its launcher's connection and its exit report).
    static let maximumCommands = 64

    /// Serves until stopped (SIGTERM, SIGINT, SIGHUP, or its file replaced), then waits for the commands running and
    /// exits. Returns only in a fork.
    public func serve() -> RunnerCommand {
        coffer_runner_catch_stop()
        var running: [Child] = []
        var accepting = true
        var resting = false
        while true {
            if accepting && coffer_runner_stop_requested() != 0 {
                stopAccepting()
                accepting = false
            }
            if !accepting && running.isEmpty { break }
            let listening = accepting && !resting && running.count < Self.maximumCommands
            var watched = listening ? [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)] : []
            for child in running {
                watched.append(pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0))
                watched.append(pollfd(fd: child.hungUp ? -1 : child.connection, events: coffer_poll_read_hangup(), revents: 0))
                watched.append(pollfd(fd: child.exitReport, events: Int16(POLLIN), revents: 0))
            }
            // Out of descriptors, the listener rests 100 ms instead of failing accept in a busy loop.
            let ready = coffer_runner_wait(&watched, UInt(watched.count), resting ? 100 : -1)
            resting = false
            guard ready > 0 else { continue }  // EINTR (a stop signal) or the rest's end
            let first = listening ? 1 : 0
            for index in running.indices.reversed() {
                let child = running[index]
                if watched[first + 3 * index].revents != 0 {
                    var status: Int32 = 0
                    var reaped: pid_t
                    repeat { reaped = waitpid(child.pid, &status, 0) } while reaped < 0 && errno == EINTR
                    // Without the status (never expected: every signal is at its default), no `exited`: the launcher
                    // then fails, as it does when the runner is gone.
                    if reaped == child.pid && child.connection >= 0 {
                        RunnerFrame.write(child.connection, RunnerReply.exited(status: status).encoded())
                    }
                    for fd in [child.connection, child.pidfd, child.exitReport] where fd >= 0 { close(fd) }
                    running.remove(at: index)
                } else if watched[first + 3 * index + 2].revents != 0 {
                    // The command called exit: its launcher learns the status now, not after the process is torn down.
                    // The runner still reaps it (and counts it) when its pidfd says it has ended.
                    if let status = Self.readExitReport(child.exitReport), child.connection >= 0 {
                        RunnerFrame.write(child.connection, RunnerReply.exited(status: status).encoded())
                        close(child.connection)
                        running[index].connection = -1
                    }
                    close(child.exitReport)
                    running[index].exitReport = -1
                } else if watched[first + 3 * index + 1].revents != 0 {
                    // The launcher was killed: hang up on the command as its terminal would, and wake it if it was
                    // stopped (^Z), as the kernel does for a process group left orphaned.
                    _ = coffer_pidfd_send_signal(child.pidfd, SIGHUP)
                    _ = coffer_pidfd_send_signal(child.pidfd, SIGCONT)
                    running[index].hungUp = true
                }
            }
            if listening, watched[0].revents & Int16(POLLIN) != 0 {
                switch accept(&running) {
                case .command(let command): return command
                case .stop:
                    stopAccepting()
                    accepting = false
                case .rest: resting = true
                case .next: break
                }
            }
        }
        exit(0)
    }

    /// The wait status a command's exit handler sent (one message of 4 bytes, an exit code's `code << 8`), or nil when
    /// it ended without one (a signal, `_exit`) or sent anything else. Never waits: a command that wrote part of a
    /// message must not hold up the runner's other commands.
    private static func readExitReport(_ socket: Int32) -> Int32? {
        var bytes = [UInt8](repeating: 0, count: 8)
        var n: Int
        repeat { n = bytes.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } } while n < 0 && errno == EINTR
        guard n == 4, bytes[0] == 0, bytes[2] == 0, bytes[3] == 0 else { return nil }
        return Int32(bytes[1]) << 8
    }

    private enum Accepted {
        case command(RunnerCommand)
        case stop
        /// Out of descriptors or memory: wait a moment before accepting again.
        case rest
        case next
    }

    private func accept(_ running: inout [Child]) -> Accepted {
        let connection = coffer_accept(listener)
        guard connection >= 0 else { return [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(errno) ? .rest : .next }
        guard let peer = peerCredentials(connection), peer.uid == geteuid() else {
            RunnerFrame.write(connection, RunnerReply.error("refused: this runner serves uid \(geteuid()) only").encoded())
            close(connection)
            return .next
        }
        switch cannotFork() {
        case nil: break
        case .declined(let reason)?:
            RunnerFrame.write(connection, RunnerReply.declined(reason).encoded())
            close(connection)
            return .stop
        case .failed?:
            RunnerFrame.write(connection, RunnerReply.declined(.unavailable).encoded())
            close(connection)
            return .next
        }
        // Without the pair (out of descriptors), the command's status comes from its pidfd alone, as before.
        var exitReport: [Int32] = [-1, -1]
        if reportsExits, socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &exitReport) != 0 {
            exitReport = [-1, -1]
        }
        let pid = fork()
        if pid == 0 {
            close(listener)
            for child in running {
                for fd in [child.pidfd, child.connection, child.exitReport] where fd >= 0 { close(fd) }
            }
            if exitReport[0] >= 0 { close(exitReport[0]) }
            coffer_runner_uncatch_stop()
            var unblocked = sigset_t()
            sigemptyset(&unblocked)
            sigprocmask(SIG_SETMASK, &unblocked, nil)
            let command = Self.receive(connection, image: image)
            if exitReport[1] >= 0 { coffer_runner_report_exit_to(exitReport[1]) }
            return .command(command)
        }
        if exitReport[1] >= 0 { close(exitReport[1]) }
        let pidfd = pid > 0 ? coffer_pidfd_open(pid) : -1
        guard pidfd >= 0 else {
            let reason = String(cString: strerror(errno))
            if pid > 0 {
                kill(pid, SIGKILL)
                _ = waitpid(pid, nil, 0)
            }
            if exitReport[0] >= 0 { close(exitReport[0]) }
            RunnerFrame.write(connection, RunnerReply.error("cannot start the command: \(reason)").encoded())
            close(connection)
            return .next
        }
        running.append(Child(pid: pid, pidfd: pidfd, connection: connection, exitReport: exitReport[0]))
        return .next
    }

    private enum CannotFork {
        /// Never again: the runner stops.
        case declined(RunnerReply.Declined)
        /// Not for this connection (the thread count could not be read): its launcher runs coffer itself.
        case failed
    }

    /// Why this process must not fork now, if it must not: a fork of a process with other threads could find a lock
    /// held forever; a fork of a replaced file would run the old program.
    private func cannotFork() -> CannotFork? {
        var info = stat()
        guard stat(imagePath, &info) == 0, (info.st_dev, info.st_ino) == image else { return .declined(.replaced) }
        switch coffer_thread_count() {
        case 1: return nil
        case -1: return .failed
        default: return .declined(.threaded)
        }
    }

    /// Closes the listener and removes the socket and the private directory `coffer runner start` made for it.
    private func stopAccepting() {
        close(listener)
        unlink(socketPath)
        var directory = Array(socketPath.utf8CString)
        directory.withUnsafeMutableBufferPointer { _ = rmdir(dirname($0.baseAddress!)) }
    }

    /// In the fork: reads the `run` frame and puts the launcher's descriptors, directory, umask and environment in
    /// place. A request that cannot be run is answered here and ends the fork.
    private static func receive(_ connection: Int32, image: (dev_t, ino_t)) -> RunnerCommand {
        func refuse(_ reply: RunnerReply) -> Never {
            RunnerFrame.write(connection, reply.encoded())
            _exit(0)
        }
        // One deadline for the whole request, however slowly its bytes come: SIGALRM ends the fork, and the launcher
        // (which has no `started`) runs coffer itself.
        alarm(10)
        var descriptors: [Int32] = []
        guard let body = RunnerFrame.read(connection, descriptors: &descriptors, capacity: 5), let request = RunnerRequest(decoding: body),
            descriptors.count == request.descriptorCount
        else { refuse(.error("malformed run request")) }
        alarm(0)
        var info = stat()
        guard stat(request.executable.map { CChar(bitPattern: $0) } + [0], &info) == 0, (info.st_dev, info.st_ino) == image else {
            refuse(.declined(.anotherBinary))
        }
        guard fchdir(descriptors[0]) == 0 else { refuse(.declined(.unavailable)) }
        for (target, fd) in zip(Int32(0)...2, descriptors[1...3]) where dup2(fd, target) < 0 { refuse(.declined(.unavailable)) }
        for fd in descriptors[0...3] where fd > 2 { close(fd) }
        _ = Glibc.umask(mode_t(request.umask & 0o777))
        clearenv()
        for pair in request.environment { putenv(strdup(pair.map { CChar(bitPattern: $0) } + [0])) }
        // The command runs only once the launcher says `go`: a launcher that gave up waiting (and runs coffer itself)
        // closes the connection instead, and the command must not run a second time here. No deadline on `go`: a
        // launcher stopped (^Z) between `started` and `go` sends it when it goes on, or closes the connection when it
        // ends.
        let pidfd = coffer_pidfd_open(getpid())
        guard pidfd >= 0, RunnerFrame.write(connection, RunnerReply.started.encoded(), descriptors: [pidfd]) else { _exit(0) }
        close(pidfd)
        var none: [Int32] = []
        guard RunnerFrame.read(connection, descriptors: &none) == [RunnerFrame.go] else { _exit(0) }
        let launcher = peerCredentials(connection)?.pid ?? 0
        close(connection)
        return RunnerCommand(
            arguments: request.arguments,
            terminal: request.terminal ? (descriptors[4], Int32(bitPattern: request.group), launcher) : nil
        )
    }
}
