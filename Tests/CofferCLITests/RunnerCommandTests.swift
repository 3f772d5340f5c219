import CofferCrypto
import CofferRunner
import CofferTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `coffer runner` and `coffer-run` driven through the built binaries: a real runner forking real commands, launchers
/// passing their directory, environment and descriptors, and the cases where the launcher must run coffer itself.
@Suite(.ownThread)
struct RunnerCommandTests {
    static let launcher = URL(fileURLWithPath: CofferProcess.binary).deletingLastPathComponent().appendingPathComponent("coffer-run").path

    @Test func commandsRunInForksWithTheLaunchersDirectoryEnvironmentAndDescriptors() throws {
        let dir = try Scratch()
        let runner = try RunnerProcess(dir)
        #expect(runner.socket.hasPrefix(dir.url.path + "/coffer-runner."), "under $XDG_RUNTIME_DIR: \(runner.socket)")
        var info = stat()
        #expect(lstat(runner.socket, &info) == 0 && info.st_mode & 0o777 == 0o600, "socket mode \(String(info.st_mode & 0o777, radix: 8))")
        let directory = (runner.socket as NSString).deletingLastPathComponent
        #expect(lstat(directory, &info) == 0 && info.st_mode & 0o777 == 0o700, "directory mode \(String(info.st_mode & 0o777, radix: 8))")
        let environ = String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(runner.pid)/environ"))) ?? Data(), as: UTF8.self)
        #expect(!environ.isEmpty && !environ.contains("COFFER_PASSPHRASE="), "the runner keeps no passphrase")
        #expect(!environ.contains("COFFER_TOKEN="), "nor anything else of the shell that started it: \(environ)")

        // Relative paths are the launcher's directory; the passphrase and the registry come from its environment.
        try FileManager.default.createDirectory(atPath: dir.path("work/model"), withIntermediateDirectories: true)
        let weights = randomData(300_000)
        try dir.write("work/model/w.bin", weights)
        let home = ["--home", dir.path("home")]
        #expect(try runner.run(["keygen", "--out", "alice", "--kdf-ops", "1", "--kdf-memory", "64"], in: "work").status == 0)
        #expect(try runner.run(["init"] + home, in: "work").status == 0)
        #expect(try runner.run(["trust", "add", "alice.pub"] + home, in: "work").status == 0)
        let pushed = try runner.run(["push", "m", "model", "--identity", "alice.key"] + home, in: "work")
        #expect(pushed.status == 0 && pushed.stdoutText.hasPrefix("pushed m:1 "), "\(pushed.stderr)")
        let pulled = try runner.run(["pull", "m:1", "--identity", "alice.key", "--out", "out"] + home, in: "work")
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(try dir.read("work/out/w.bin") == weights)
        // Without a passphrase in the launcher's environment the fork has none either (the runner's does not leak).
        expectFailure(try runner.run(["pull", "m:1", "--identity", "alice.key", "--out", "again"] + home, in: "work", passphrase: nil), "passphrase")
        // A failure is the command's own line and status; ArgumentParser's usage errors keep theirs.
        expectFailure(try runner.run(["show", "m:9"] + home), "m:9")
        #expect(try runner.run(["no-such-command"]).status == 64)
        // Each fork draws its own random bytes: two identities made in two forks differ.
        #expect(try runner.run(["keygen", "--out", "bob", "--kdf-ops", "1", "--kdf-memory", "64"], in: "work").status == 0)
        #expect(try dir.read("work/alice.pub") != dir.read("work/bob.pub"))
        // The runner itself still has one thread and runs nothing after its commands ended.
        let status = try String(contentsOfFile: "/proc/\(runner.pid)/status", encoding: .utf8)
        #expect(status.contains("Threads:\t1\n"), "\(status)")
        // A command's launcher learns its status when it calls exit, before the runner reaps it: wait for the reaping.
        #expect(runner.waitForChildrenToEnd(), "the runner reaps the commands it ran")

        let stopped = try runCoffer(["runner", "stop"], in: dir, environment: ["COFFER_RUNNER_SOCK": runner.socket])
        #expect(stopped.status == 0, "\(stopped.stderr)")
        #expect(runner.waitForExit(), "the runner exits on stop")
        #expect(!FileManager.default.fileExists(atPath: directory), "the socket's directory went")
        // With the runner gone, coffer-run runs coffer itself.
        let direct = try runner.run(["list"] + home)
        #expect(direct.status == 0 && direct.stdoutText.contains("m:1"), "\(direct.stderr)")
    }

    @Test func aReplacedOrAnotherBinaryIsDeclinedAndTheLauncherRunsCofferItself() throws {
        let dir = try Scratch()
        try FileManager.default.createDirectory(atPath: dir.path("bin"), withIntermediateDirectories: true)
        for program in [CofferProcess.binary, Self.launcher] {
            try FileManager.default.copyItem(atPath: program, toPath: dir.path("bin/\((program as NSString).lastPathComponent)"))
        }
        let runner = try RunnerProcess(dir, coffer: dir.path("bin/coffer"))
        // The build's own coffer-run would run the build's coffer: the runner declines, the launcher runs it itself.
        let other = try runner.run(["--version"])
        #expect(other.status == 0 && other.stdoutText == "0.1.0\n", "\(other.stderr)")
        #expect(FileManager.default.fileExists(atPath: runner.socket), "the runner serves on")
        let copied = try runner.run(["--version"], launcher: [dir.path("bin/coffer-run")])
        #expect(copied.status == 0 && copied.stdoutText == "0.1.0\n", "\(copied.stderr)")
        // An upgrade puts a new file in place: the runner declines and stops, and the launcher runs the new file.
        try FileManager.default.copyItem(atPath: CofferProcess.binary, toPath: dir.path("bin/coffer.new"))
        #expect(rename(dir.path("bin/coffer.new"), dir.path("bin/coffer")) == 0)
        let upgraded = try runner.run(["--version"], launcher: [dir.path("bin/coffer-run")])
        #expect(upgraded.status == 0 && upgraded.stdoutText == "0.1.0\n", "\(upgraded.stderr)")
        #expect(runner.waitForExit(), "a runner whose file was replaced stops")
        #expect(!FileManager.default.fileExists(atPath: runner.socket))
    }

    @Test func signalsReachTheCommandAndAKilledLauncherHangsItUp() throws {
        let dir = try Scratch()
        let runner = try RunnerProcess(dir)
        try dir.keygen("alice")
        #expect(mkfifo(dir.path("input"), 0o600) == 0)
        // Sealing a FIFO that nobody writes: the command waits in open(2) until a signal comes.
        let seal = ["seal", "--to", "keys/alice.pub", "-o", dir.path("out.cfs"), dir.path("input")]
        for signal in [SIGINT, SIGTERM] {
            let running = try runner.start(seal)
            let command = try #require(runner.waitForChild(), "the command never started")
            #expect(Self.waitUntilCatching(signal, running.pid), "the launcher never had the runner's answer")
            let ended = running.terminate(with: signal, within: 20)
            #expect(ended.status == 128 + signal, "the launcher ends as the command did: \(ended.status) \(ended.stderr)")
            #expect(runner.waitForChildrenToEnd(), "the command \(command) ended with its launcher's signal")
            #expect(!dir.exists("out.cfs"))
        }
        // SIGKILL cannot be forwarded: the runner sees the connection close and hangs up on the command, and wakes it
        // when ^Z had stopped it with its launcher.
        for stopped in [false, true] {
            let running = try runner.start(seal)
            let command = try #require(runner.waitForChild(), "the command never started")
            #expect(Self.waitUntilCatching(SIGTSTP, running.pid), "the launcher never had the runner's answer")
            if stopped {
                kill(running.pid, SIGTSTP)
                #expect(Self.waitUntilState("T", command), "^Z stops the command with its launcher")
            }
            #expect(running.terminate(with: SIGKILL, within: 20).status == 128 + SIGKILL)
            #expect(runner.waitForChildrenToEnd(), "the command of a killed launcher was left running (stopped: \(stopped))")
        }
    }

    @Test func aStopSignalEndsAnIdleRunnerAndStatusesSurviveAnIgnoredSIGCHLD() throws {
        let dir = try Scratch()
        // Started by a program that ignores SIGCHLD (the disposition would carry over exec): the kernel would reap the
        // forks itself, and every command would have ended with status 0.
        let ignoring = "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
        let runner = try RunnerProcess(dir, starter: ["/usr/bin/python3", "-c", ignoring])
        expectFailure(try runner.run(["show", "m:9", "--home", dir.path("nowhere")]), "not a Coffer registry")
        #expect(try runner.run(["no-such-command"]).status == 64)
        // Idle, with nothing running: SIGTERM ends it.
        #expect(kill(runner.pid, SIGTERM) == 0)
        #expect(runner.waitForExit(), "an idle runner outlived its SIGTERM")
        #expect(!FileManager.default.fileExists(atPath: runner.socket))
    }

    @Test func aRunnerGoneOrMissingIsSaidInOneLine() throws {
        let dir = try Scratch()
        let runner = try RunnerProcess(dir)
        try dir.keygen("alice")
        // Killed while a command runs: the command runs on to its end, and the launcher cannot know how it ended.
        #expect(mkfifo(dir.path("input"), 0o600) == 0)
        let running = try runner.start(["seal", "--to", "keys/alice.pub", "-o", dir.path("out.cfs"), dir.path("input")])
        let command = try #require(runner.waitForChild(), "the command never started")
        #expect(Self.waitUntilCatching(SIGTERM, running.pid), "the launcher never had the runner's answer")
        // Opened for writing once the command has opened its input (without blocking, the open fails while nobody reads
        // the FIFO): under load the fork can take seconds to get there. The command then waits to read.
        var writer: Int32 = -1
        try #require(
            poll(seconds: 30) {
                writer = open(dir.path("input"), O_WRONLY | O_NONBLOCK)
                return writer >= 0
            },
            "the command never opened its input"
        )
        kill(runner.pid, SIGKILL)
        #expect(runner.waitForExit())
        #expect(!processIsGone(command), "the command ended with its runner")
        close(writer)  // the end of its input: the seal finishes
        expectFailure(running.finish(within: 30), "the runner stopped while the command ran; its exit status is lost")

        expectFailure(try runCoffer(["runner", "stop"], in: dir), "COFFER_RUNNER_SOCK is not set")
        expectFailure(
            try runCoffer(["runner", "stop"], in: dir, environment: ["COFFER_RUNNER_SOCK": runner.socket]),
            "no runner at \(runner.socket)"
        )
        // The variable that makes a process a runner does nothing outside `runner start` (no ready pipe on fd 3).
        let serving = try runCoffer(["--version"], in: dir, environment: ["COFFER_RUNNER_SERVE": dir.path("x.sock")])
        expectFailure(serving, "COFFER_RUNNER_SERVE is for coffer runner start only")
        #expect(!dir.exists("x.sock"))
    }

    @Test func whatTheRunnerCannotReproduceCofferRunsItself() throws {
        let dir = try Scratch()
        let runner = try RunnerProcess(dir)
        try dir.keygen("alice")
        // A closed standard input would have been the runner's socket: the seal of `-` reads an empty input, as coffer.
        let closed = try runner.run(
            ["seal", "--to", "keys/alice.pub", "-o", dir.path("empty.cfs"), "-"],
            launcher: ["/bin/sh", "-c", "exec \"$0\" \"$@\" <&-", RunnerCommandTests.launcher]
        )
        #expect(closed.status == 0 && dir.exists("empty.cfs"), "\(closed.stderr)")
        // A descriptor past the standard three (`<(...)`, `3< file`) would not reach a fork: the seal reads it, as coffer.
        try dir.write("plain", Data("weights".utf8))
        let third = try runner.run(
            ["seal", "--to", "keys/alice.pub", "-o", dir.path("third.cfs"), "/dev/fd/3"],
            launcher: ["/bin/sh", "-c", "exec \"$0\" \"$@\" 3< plain", RunnerCommandTests.launcher]
        )
        #expect(third.status == 0 && dir.exists("third.cfs"), "\(third.stderr)")
        // Another program of this user's listening where COFFER_RUNNER_SOCK points (a stale path made again as a link to
        // another service's socket) is sent nothing: the launcher checks that the listener runs this coffer.
        let listen = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); s.settimeout(10); print("ready", flush=True)
            got = b""
            try:
                c, _ = s.accept(); c.settimeout(3)
                while chunk := c.recv(65536): got += chunk
            except socket.timeout: pass
            print(len(got))
            """
        let other = try BackgroundCoffer(
            ["-c", listen, dir.path("other.sock")],
            in: dir.url,
            environment: CofferProcess.environment(in: dir.url),
            launcher: ["/usr/bin/python3"]
        )
        _ = poll(seconds: 5) { String(decoding: other.stdoutSoFar, as: UTF8.self).hasPrefix("ready") }
        var environment = CofferProcess.environment(in: dir.url)
        environment["COFFER_RUNNER_SOCK"] = dir.path("other.sock")
        let stranger = try BackgroundCoffer(["--version"], in: dir.url, environment: environment, launcher: [RunnerCommandTests.launcher]).finish(
            within: 30
        )
        #expect(stranger.status == 0 && stranger.stdoutText == "0.1.0\n", "\(stranger.stderr)")
        #expect(other.finish(within: 30).stdoutText == "ready\n0\n", "the other program was sent the request")
        // A runner that does not answer (stopped here) is left after 5 s, and the command it would have run later never
        // runs a second time.
        #expect(kill(runner.pid, SIGSTOP) == 0)
        let started = Date()
        let made = try runner.run(["keygen", "--out", "keys/bob", "--kdf-ops", "1", "--kdf-memory", "64"])
        #expect(made.status == 0 && Date().timeIntervalSince(started) < 20, "\(made.stderr)")
        let first = try dir.read("keys/bob.pub")
        #expect(kill(runner.pid, SIGCONT) == 0)
        #expect(runner.waitForChildrenToEnd())
        usleep(300_000)
        #expect(try dir.read("keys/bob.pub") == first, "the abandoned request ran after all")
        #expect(try runner.run(["--version"]).stdoutText == "0.1.0\n", "the runner serves on")
    }

    /// Whether `pid` is in `state` (R, S, T, Z...) within 10 s.
    static func waitUntilState(_ state: String, _ pid: pid_t) -> Bool { poll { processState(pid) == state } }

    /// Whether `pid` catches `signal` within 10 s: the launcher does once the runner has answered `started`.
    static func waitUntilCatching(_ signal: Int32, _ pid: pid_t) -> Bool {
        poll {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let caught = status.split(separator: "\n").first { $0.hasPrefix("SigCgt:") }.flatMap {
                UInt64($0.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16)
            }
            return caught.map { $0 & (1 << UInt64(signal - 1)) != 0 } ?? false
        }
    }

    @Test func anotherUidIsRefusedByTheLauncherAndByTheRunner() throws {
        guard let nobody = asNobody(Self.launcher, "a launcher"), let python = asNobody("/usr/bin/python3", "a raw client") else { return }
        let dir = try Scratch()
        _ = chmod(dir.url.path, 0o755)
        let runner = try RunnerProcess(dir)
        // Opened up by mistake: the launcher of another uid refuses the runner before sending anything.
        let directory = (runner.socket as NSString).deletingLastPathComponent
        #expect(chmod(directory, 0o755) == 0 && chmod(runner.socket, 0o666) == 0)
        expectFailure(try runner.run(["--version"], launcher: nobody), "is not this user's")
        // A raw client of another uid gets the runner's refusal before it sends anything.
        let readAll = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); answer = b""
            while chunk := s.recv(4096): answer += chunk
            sys.stdout.write(answer[4:].hex())
            """
        let raw = try runCoffer(["-c", readAll, runner.socket], in: dir, launcher: python)
        let reply = Digest.bytes(fromHex: raw.stdoutText).flatMap(RunnerReply.init(decoding:))
        #expect(reply == .error("refused: this runner serves uid 0 only"), "\(raw.stdoutText) \(raw.stderr)")
        #expect(runner.children.isEmpty, "nothing was forked for it")
    }

    @Test func malformedRequestsAreRefusedAndTheRunnerServesOn() throws {
        let request = RunnerRequest(
            umask: 0o22,
            terminal: false,
            group: 4242,
            executable: Array("/x/coffer".utf8),
            arguments: [[0xFF, 0x41]],
            environment: [Array("A=b".utf8)]
        )
        #expect(RunnerRequest(decoding: request.encoded()) == request)
        let encoded = request.encoded()
        for cut in 1..<encoded.count { #expect(RunnerRequest(decoding: Array(encoded.prefix(cut))) == nil, "cut at \(cut)") }
        #expect(RunnerRequest(decoding: encoded + [0]) == nil, "trailing byte")
        var unnamed = request
        unnamed.environment = [Array("novalue".utf8)]
        #expect(RunnerRequest(decoding: unnamed.encoded()) == nil, "an environment entry without =")

        let dir = try Scratch()
        let runner = try RunnerProcess(dir)
        // A well-formed frame without its descriptors, and a frame that is not a request at all.
        for body in [request.encoded(), [0x02, 0x00]] {
            let fd = try #require(connectToUnixSocket(Array(runner.socket.utf8)))
            defer { close(fd) }
            #expect(RunnerFrame.write(fd, body))
            var none: [Int32] = []
            #expect(RunnerFrame.read(fd, descriptors: &none).flatMap(RunnerReply.init(decoding:)) == .error("malformed run request"))
        }
        #expect(runner.waitForChildrenToEnd())
        #expect(try runner.run(["--version"]).stdoutText == "0.1.0\n")
    }
}
