import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// What the agent's and the runner's command tests share: processes started with `coffer agent start` and `coffer
// runner start`, runs of coffer with a clean environment, another uid, and raw frames on an agent's socket.

/// A `coffer agent` started with `coffer agent start` under the scratch directory, killed when the test ends.
final class AgentProcess {
    let dir: Scratch
    let socket: String
    let pid: pid_t
    let startOutput: String

    init(_ dir: Scratch) throws {
        self.dir = dir
        let started = try runCoffer(["agent", "start"], in: dir, passphrase: "not for the agent", environment: ["XDG_RUNTIME_DIR": dir.url.path])
        #expect(started.status == 0, "agent start: \(started.stderr)")
        let output = started.stdoutText
        startOutput = output
        socket = try #require(Self.value("COFFER_AGENT_SOCK", in: output)).trimmingCharacters(in: CharacterSet(charactersIn: "'"))
        pid = try #require(Self.value("COFFER_AGENT_PID", in: output).flatMap { pid_t($0) })
    }

    /// The value of `NAME=value;` in `agent start`'s output.
    private static func value(_ name: String, in output: String) -> String? {
        guard let range = output.range(of: "\(name)=") else { return nil }
        return String(output[range.upperBound...].prefix { $0 != ";" })
    }

    deinit { Glibc.kill(pid, SIGKILL) }

    /// Runs `coffer args` pointed at this agent, with no passphrase unless one is given.
    func run(_ args: [String], passphrase: String? = nil, launcher: [String] = []) throws -> CofferProcess.Output {
        try runCoffer(args, in: dir, passphrase: passphrase, environment: ["COFFER_AGENT_SOCK": socket], launcher: launcher)
    }

    /// Starts `coffer args` pointed at this agent without waiting for it.
    func start(_ args: [String]) throws -> BackgroundCoffer {
        try BackgroundCoffer(args, in: dir.url, environment: cleanEnvironment(dir).merging(["COFFER_AGENT_SOCK": socket]) { $1 })
    }

    /// SIGKILL: no cleanup, no goodbye, as a crash or the OOM killer would end it.
    func kill() {
        Glibc.kill(pid, SIGKILL)
        _ = waitForExit()
    }

    /// Waits up to 5 s for the agent's process to be gone.
    func waitForExit() -> Bool { poll(seconds: 5) { processIsGone(pid) } }
}

/// Whether `condition` holds within `seconds`, checked every 10 ms.
func poll(seconds: Double = 10, until condition: () -> Bool) -> Bool {
    for _ in 0..<Int(seconds * 100) {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Whether `pid`, a process started in a session of its own (not our child, so never reaped by us), is gone: no
/// such process, or a zombie.
func processIsGone(_ pid: pid_t) -> Bool {
    Glibc.kill(pid, 0) != 0 || processState(pid) == "Z"
}

/// The state letter of `pid` in /proc (R, S, T, Z...), nil when it has none.
func processState(_ pid: pid_t) -> String? {
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    // After the command name's closing parenthesis, which the name itself may contain.
    return stat.split(separator: ")").last?.split(separator: " ").first.map(String.init)
}

/// The environment of a run: no passphrase and no agent unless the test gives them.
func cleanEnvironment(_ dir: Scratch) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment
    for name in ["COFFER_PASSPHRASE", "COFFER_AGENT_SOCK", "COFFER_RUNNER_SOCK", "COFFER_RUNNER_PID", "COFFER_RUNNER_SERVE"] {
        environment[name] = nil
    }
    environment["COFFER_STATE_DIR"] = dir.url.appendingPathComponent(".client-state").path
    return environment
}

/// The command line that runs `program` as uid 65534 (setpriv), or nil with an issue recorded when this test cannot:
/// it needs root, setpriv and the program.
func asNobody(_ program: String, _ what: String) -> [String]? {
    guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), FileManager.default.isExecutableFile(atPath: program)
    else {
        Issue.record("needs root, setpriv and \(program) to run \(what) under another uid")
        return nil
    }
    return ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", program]
}

/// Runs `coffer args` (through `launcher`, e.g. setpriv, when given) with stdin at /dev/null, so no terminal prompt.
func runCoffer(
    _ args: [String],
    in dir: Scratch,
    passphrase: String? = nil,
    environment extra: [String: String] = [:],
    launcher: [String] = []
) throws -> CofferProcess.Output {
    var environment = cleanEnvironment(dir).merging(extra) { $1 }
    environment["COFFER_PASSPHRASE"] = passphrase
    return try BackgroundCoffer(args, in: dir.url, environment: environment, launcher: launcher).finish()
}

/// Whether some thread of `pid` sits in read(2) on its descriptor for `path`, within 10 s.
func waitUntilBlockedReading(_ pid: pid_t, path: String) -> Bool {
    poll {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        let fifo = fds.first { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) == path }
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        if let fifo, let fd = Int(fifo) {
            for task in tasks {
                // /proc/PID/task/TID/syscall: the number (0 is read on x86-64) and the arguments in hex.
                let fields = ((try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/syscall", encoding: .utf8)) ?? "").split(separator: " ")
                if fields.count > 1, fields[0] == "0", Int(fields[1].dropFirst(2), radix: 16) == fd { return true }
            }
        }
        return false
    }
}

/// `n` as a little-endian u16 and u32.
func le16(_ n: Int) -> [UInt8] { [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF)] }
func le32(_ n: Int) -> [UInt8] { le16(n & 0xFFFF) + le16(n >> 16) }

/// Answer bodies and when they came, from several threads.
final class Answers: @unchecked Sendable {
    private let lock = NSLock()
    private var answers: [(body: [UInt8], time: Date)] = []
    func add(_ body: [UInt8], at time: Date) { lock.withLock { answers.append((body, time)) } }
    var all: [(body: [UInt8], time: Date)] { lock.withLock { answers } }
}

/// A request frame: the little-endian length, then the body.
func frame(_ body: [UInt8]) -> [UInt8] {
    let n = UInt32(body.count)
    return [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 24)] + body
}

/// A connection that sends raw bytes to the agent, as a misbehaving client would.
final class RawAgentConnection: Sendable {
    private let fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { out in
            for (i, byte) in path.utf8.enumerated() { out[i] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(connected == 0)
    }

    deinit { close(fd) }

    /// Sends `bytes` and returns the body of the answer.
    func exchange(_ bytes: [UInt8]) -> [UInt8] {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        var header = [UInt8](repeating: 0, count: 4)
        #expect(recv(fd, &header, 4, Int32(MSG_WAITALL)) == 4)
        let length = Int(header[0]) | Int(header[1]) << 8 | Int(header[2]) << 16 | Int(header[3]) << 24
        var body = [UInt8](repeating: 0, count: length)
        #expect(recv(fd, &body, length, Int32(MSG_WAITALL)) == length)
        return body
    }
}

/// Sends raw bytes to the agent on a connection of their own and returns the body of its answer.
func rawExchange(_ path: String, _ bytes: [UInt8]) throws -> [UInt8] {
    try RawAgentConnection(path).exchange(bytes)
}

/// A `coffer runner` started with `coffer runner start` under the scratch directory, killed when the test ends.
final class RunnerProcess {
    let dir: Scratch
    let socket: String
    let pid: pid_t

    /// Started by `coffer runner start`, run as `starter coffer runner start` when a starter is given.
    init(_ dir: Scratch, coffer: String = CofferProcess.binary, starter: [String] = []) throws {
        self.dir = dir
        let started = try runCoffer(
            ["runner", "start"],
            in: dir,
            passphrase: "not for the runner",
            environment: ["XDG_RUNTIME_DIR": dir.url.path, "COFFER_TOKEN": "cft_not_for_the_runner"],
            launcher: coffer == CofferProcess.binary && starter.isEmpty ? [] : starter + [coffer]
        )
        #expect(started.status == 0, "runner start: \(started.stderr)")
        func value(_ name: String) -> String? {
            guard let range = started.stdoutText.range(of: "\(name)=") else { return nil }
            return String(started.stdoutText[range.upperBound...].prefix { $0 != ";" })
        }
        socket = try #require(value("COFFER_RUNNER_SOCK")).trimmingCharacters(in: CharacterSet(charactersIn: "'"))
        pid = try #require(value("COFFER_RUNNER_PID").flatMap { pid_t($0) })
    }

    deinit { Glibc.kill(pid, SIGKILL) }

    /// Runs `coffer-run args` (or `launcher args`) in `subdirectory` of the scratch directory, pointed at this runner.
    func run(
        _ args: [String],
        in subdirectory: String = ".",
        passphrase: String? = "test passphrase",
        launcher: [String] = [RunnerCommandTests.launcher]
    ) throws -> CofferProcess.Output {
        var environment = CofferProcess.environment(in: dir.url, passphrase: passphrase)
        environment["COFFER_RUNNER_SOCK"] = socket
        return try BackgroundCoffer(args, in: dir.url.appendingPathComponent(subdirectory), environment: environment, launcher: launcher).finish()
    }

    /// Starts `coffer-run args` without waiting for it.
    func start(_ args: [String]) throws -> BackgroundCoffer {
        var environment = CofferProcess.environment(in: dir.url)
        environment["COFFER_RUNNER_SOCK"] = socket
        return try BackgroundCoffer(args, in: dir.url, environment: environment, launcher: [RunnerCommandTests.launcher])
    }

    /// The runner's children: the commands it runs (it has one thread, so its task's children are all of them).
    var children: [pid_t] {
        ((try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? "").split(separator: " ").compactMap { pid_t($0) }
    }

    func waitForChild() -> pid_t? {
        var child: pid_t?
        _ = poll {
            child = children.first
            return child != nil
        }
        return child
    }

    func waitForChildrenToEnd() -> Bool { poll { children.isEmpty } }

    /// Waits up to 10 s for the runner's process to be gone.
    func waitForExit() -> Bool { poll { processIsGone(pid) } }
}
