import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The launcher's fallbacks that only a listener misbehaving as the real runner never does can reach: a copy of python
/// named `coffer`, beside a copy of `coffer-run`, passes the launcher's check of its listener (this user's, running the
/// `coffer` beside the launcher) and plays the runner, as helper-78 reviewed the launcher. Falling back, the launcher
/// runs that `coffer` itself: python, which the test hands `-c` and a line of code.
@Suite(.ownThread)
struct LauncherFallbackTests {
    /// The fake runner: answers a request with the 4-byte length of a `started` frame and never its byte (`partial`), or
    /// reads and answers nothing (`silent`); logs, one line per connection, how many request bytes it received.
    static let fakeRunner = """
        import socket, sys, time
        path, behaviour, log = sys.argv[1:4]
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(4)
        open(path + ".ready", "w").close()
        while True:
            connection, _ = server.accept()
            connection.settimeout(2.0)
            received = b""
            try:
                while True:
                    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 8)
                    for fd in fds:
                        socket.close(fd)
                    if not data:
                        break
                    received += data
                    if behaviour == "partial" and len(received) >= 4 and len(received) >= 4 + int.from_bytes(received[:4], "little"):
                        connection.sendall((1).to_bytes(4, "little"))
                        time.sleep(8)
                        break
            except socket.timeout:
                pass
            with open(log, "a") as f:
                f.write(f"{len(received)}\\n")
            connection.close()
        """

    /// A launcher beside a fake runner of `behaviour`, listening in `dir`: (the launcher, its environment, the log, the
    /// fake runner's pid).
    private func start(_ behaviour: String, in dir: Scratch) throws -> (launcher: String, environment: [String: String], log: String, pid: pid_t) {
        let launcher = dir.path("coffer-run")
        try FileManager.default.copyItem(atPath: RunnerCommandTests.launcher, toPath: launcher)
        try FileManager.default.copyItem(atPath: URL(fileURLWithPath: "/usr/bin/python3").resolvingSymlinksInPath().path, toPath: dir.path("coffer"))
        try dir.write("fake_runner.py", Data(Self.fakeRunner.utf8))
        let socket = dir.path("runner.sock")
        let log = dir.path("requests.log")
        let pid = try Spawn.start(dir.path("coffer"), [dir.path("fake_runner.py"), socket, behaviour, log], stderr: .file(dir.path("fake.err")))
        #expect(
            poll(seconds: 10) { dir.exists("runner.sock.ready") },
            "the fake runner never listened: \(String(decoding: (try? dir.read("fake.err")) ?? Data(), as: UTF8.self))"
        )
        let environment = ProcessInfo.processInfo.environment.merging(["COFFER_RUNNER_SOCK": socket]) { $1 }
        return (launcher, environment, log, pid)
    }

    private func stop(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// A runner that sends part of `started` and stalls is left after 5 s, the whole frame's deadline (not only its
    /// first byte's): the launcher runs coffer itself, with the same arguments.
    @Test func aStartedFrameCutShortIsLeftAfterFiveSeconds() throws {
        let dir = try Scratch()
        let fake = try start("partial", in: dir)
        defer { stop(fake.pid) }
        let began = Date()
        let result = try ProgramRun.run(
            fake.launcher,
            ["-c", "import sys; print('coffer itself', sys.argv[1:])", "x"],
            environment: fake.environment
        )
        let waited = Date().timeIntervalSince(began)
        #expect(result.status == 0 && result.stdoutText == "coffer itself ['x']\n", "\(result.stdoutText) \(result.stderr)")
        #expect(waited >= 4.5 && waited < 7.5, "the launcher waited \(waited) s")
        let requests = (try? String(contentsOfFile: fake.log, encoding: .utf8)) ?? ""
        #expect(
            poll(seconds: 10) { ((try? String(contentsOfFile: fake.log, encoding: .utf8)) ?? "").split(separator: "\n").count == 1 },
            "\(requests)"
        )
    }

    /// A request over the 4 MiB frame limit (arguments of megabytes) is never sent: the launcher runs coffer itself, and
    /// the listener it had connected to receives nothing. The arguments are made by a shell whose stack limit lets exec
    /// take them (Linux allows a quarter of the stack for them, at most 6 MiB, each at most 128 KiB).
    @Test func aRequestOverTheFrameLimitRunsCofferItself() throws {
        let dir = try Scratch()
        let fake = try start("silent", in: dir)
        defer { stop(fake.pid) }
        let script = """
            ulimit -s 65536 || exit 99
            piece=$(head -c 120000 /dev/zero | tr '\\0' a)
            set --
            for i in $(seq 40); do set -- "$@" "$piece"; done
            exec "$0" -c 'import sys; print("coffer itself", len(sys.argv), sum(map(len, sys.argv[1:])))' "$@"
            """
        let result = try ProgramRun.run("/bin/sh", ["-c", script, fake.launcher], environment: fake.environment)
        #expect(result.status == 0 && result.stdoutText == "coffer itself 41 4800000\n", "\(result.status) \(result.stdoutText) \(result.stderr)")
        #expect(poll(seconds: 10) { ((try? String(contentsOfFile: fake.log, encoding: .utf8)) ?? "") == "0\n" }, "the listener received a request")
    }
}
