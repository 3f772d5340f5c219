import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

/// Runs the real `coffer` binary built beside the test bundle.
struct CofferProcess {
    static let binary: String = {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("coffer").path
    }()

    typealias Output = ProgramOutput

    /// What a `coffer` child gets: this test run's environment (a PostgreSQL registry's password file, say), with
    /// `COFFER_PASSPHRASE` set unless `passphrase` is nil, and `extra` on top.
    static func environment(in directory: URL, passphrase: String? = "test passphrase", _ extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        environment["COFFER_PASSPHRASE"] = passphrase
        // Not the developer's own runner: `runner stop` would stop it, and `coffer-run` would run the build's commands in it.
        for name in ["COFFER_RUNNER_SOCK", "COFFER_RUNNER_PID", "COFFER_RUNNER_SERVE"] { environment[name] = nil }
        // Each scratch directory is one user's machine: its client remembers the registries it verified there, and its
        // records of temporary entries are its own. Shared (tools/test exports one COFFER_STATE_DIR for the run), any
        // test's coffer swept the staging folder a killed pull of another test had left, before that test looked.
        environment["COFFER_STATE_DIR"] = extra["COFFER_STATE_DIR"] ?? directory.appendingPathComponent(".client-state").path
        return environment
    }

    /// Runs `coffer args...` in `directory` with `COFFER_PASSPHRASE` set unless `passphrase` is nil (``ProgramRun``).
    static func run(
        _ args: [String],
        in directory: URL,
        passphrase: String? = "test passphrase",
        stdin: Data? = nil,
        environment extra: [String: String] = [:]
    ) throws -> Output {
        // Through sh for the working directory (glibc's posix_spawn_file_actions_addchdir_np is not visible to Swift).
        let command = [#"cd "$0" && exec "$@""#, directory.path, binary] + TestBackends.initArguments(args)
        return try ProgramRun.run("/bin/sh", ["-c"] + command, environment: environment(in: directory, passphrase: passphrase, extra), stdin: stdin)
    }
}

/// A `coffer` process left running in a directory, its output going to files as it comes: ``Spawn``, as
/// ``CofferProcess/run(_:in:passphrase:stdin:environment:)`` does and for the same reasons (no pipe another child could
/// inherit and hold open, no missed exit). Killed when dropped unfinished.
final class BackgroundCoffer: @unchecked Sendable {
    let pid: pid_t
    private let files: URL
    private let lock = NSLock()
    private var exitStatus: Int32?

    /// Starts `coffer args` (through `launcher`, e.g. setpriv, when given) in `directory` with exactly `environment`,
    /// stdin at /dev/null.
    init(_ args: [String], in directory: URL, environment: [String: String], launcher: [String] = []) throws {
        files = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-background-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: files, withIntermediateDirectories: true)
        let command = (launcher.isEmpty ? [CofferProcess.binary] : launcher) + args
        do {
            pid = try Spawn.start(
                "/bin/sh",
                ["-c", #"cd "$0" && exec "$@""#, directory.path] + command,
                environment: environment,
                stdout: .file(files.appendingPathComponent("out").path),
                stderr: .file(files.appendingPathComponent("err").path)
            )
        } catch {
            try? FileManager.default.removeItem(at: files)
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: error.description])
        }
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
        }
        try? FileManager.default.removeItem(at: files)
    }

    var stdoutSoFar: Data { (try? Data(contentsOf: files.appendingPathComponent("out"))) ?? Data() }
    var stderrSoFar: String { String(decoding: (try? Data(contentsOf: files.appendingPathComponent("err"))) ?? Data(), as: UTF8.self) }

    /// Waits (at most `seconds`) until standard error holds `text`; whether it does.
    func waitForStderr(containing text: String, seconds: Double) -> Bool {
        let deadline = Date() + seconds
        while !stderrSoFar.contains(text) {
            if Date() >= deadline || status != nil { return stderrSoFar.contains(text) }
            usleep(20_000)
        }
        return true
    }

    /// Waits (at most `seconds`) for the whole line, holding `marker`, that a server started with `--listen HOST:0`
    /// prints once it takes connections, and returns the URL on it (`http://127.0.0.1:41234`); nil if none came.
    func waitForListeningURL(_ marker: String, seconds: Double) -> String? {
        let deadline = Date() + seconds
        while true {
            let line = stderrSoFar.split(separator: "\n", omittingEmptySubsequences: false).dropLast().first { $0.contains(marker) }
            if let line { return line.split(separator: " ").first { $0.hasPrefix("http://") || $0.hasPrefix("https://") }.map(String.init) }
            if Date() >= deadline || status != nil { return nil }
            usleep(20_000)
        }
    }

    /// The exit status once it has ended, nil while it runs.
    var status: Int32? {
        lock.lock()
        defer { lock.unlock() }
        if exitStatus == nil { exitStatus = Spawn.poll(pid) }
        return exitStatus
    }

    /// Waits for the process to end (at most `seconds`, then SIGKILL) and returns its output.
    func finish(within seconds: Double = 600) -> CofferProcess.Output {
        let deadline = Date() + seconds
        while status == nil && Date() < deadline { usleep(10_000) }
        lock.lock()
        // Checked again under the lock: a pid reaped meanwhile by another thread may already be another process's.
        if exitStatus == nil {
            kill(pid, SIGKILL)
            exitStatus = Spawn.wait(pid)
        }
        let ended = exitStatus!
        lock.unlock()
        return CofferProcess.Output(status: ended, stdout: stdoutSoFar, stderr: stderrSoFar)
    }

    /// `signal` (SIGTERM by default), then ``finish(within:)``.
    func terminate(with signal: Int32 = SIGTERM, within seconds: Double = 60) -> CofferProcess.Output {
        if status == nil { kill(pid, signal) }
        return finish(within: seconds)
    }
}

/// A fresh temporary directory, removed when the test ends.
final class Scratch {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    func write(_ name: String, _ data: Data) throws { try data.write(to: url.appendingPathComponent(name)) }
    func read(_ name: String) throws -> Data { try Data(contentsOf: url.appendingPathComponent(name)) }
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }
    var entries: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []).sorted() }

    /// `coffer keygen` with a cheap Argon2id cost; the format tests cover the default cost.
    func keygen(_ name: String) throws {
        let result = try CofferProcess.run(["keygen", "--out", "keys/\(name)", "--kdf-ops", "1", "--kdf-memory", "64"], in: url)
        #expect(result.status == 0, "keygen: \(result.stderr)")
    }
}

func randomData(_ count: Int) -> Data {
    var generator = SystemRandomNumberGenerator()
    return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
}

/// Expects a failed run with exit status 1 and exactly one line on stderr containing `fragment`.
func expectFailure(_ result: CofferProcess.Output, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.status == 1, "status \(result.status): \(result.stderr)", sourceLocation: sourceLocation)
    let lines = result.stderr.split(separator: "\n")
    #expect(lines.count == 1, "stderr: \(result.stderr)", sourceLocation: sourceLocation)
    #expect(result.stderr.hasPrefix("coffer: "), sourceLocation: sourceLocation)
    #expect(result.stderr.contains(fragment), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
}
