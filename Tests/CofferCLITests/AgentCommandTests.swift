import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `coffer agent` driven through the built binary: real agent processes on real sockets, commands that use them
/// with no passphrase anywhere, and clients the agent must refuse.
@Suite(.ownThread)
struct AgentCommandTests {
    // MARK: - Starting, permissions, stopping

    @Test func startPrintsShellLinesListensPrivatelyAndStopRemovesEverything() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        // eval-able lines, as ssh-agent prints them.
        #expect(agent.startOutput.contains("COFFER_AGENT_SOCK='\(agent.socket)'; export COFFER_AGENT_SOCK;"), "\(agent.startOutput)")
        #expect(agent.startOutput.contains("COFFER_AGENT_PID=\(agent.pid); export COFFER_AGENT_PID;"))
        #expect(agent.socket.hasPrefix(dir.url.path + "/coffer-agent."), "under $XDG_RUNTIME_DIR: \(agent.socket)")
        var info = stat()
        #expect(lstat(agent.socket, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600, "socket mode \(String(info.st_mode & 0o777, radix: 8))")
        let directory = (agent.socket as NSString).deletingLastPathComponent
        #expect(lstat(directory, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o700, "directory mode \(String(info.st_mode & 0o777, radix: 8))")
        #expect(info.st_uid == geteuid())
        // A passphrase in the environment of `agent start` is not handed on to the long-lived agent.
        let environ = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(agent.pid)/environ"))) ?? Data()
        #expect(!environ.isEmpty && !String(decoding: environ, as: UTF8.self).contains("COFFER_PASSPHRASE="))

        let listed = try agent.run(["agent", "list"])
        #expect(listed.status == 0 && listed.stdoutText.isEmpty, "\(listed.stderr)")
        let stopped = try agent.run(["agent", "stop"])
        #expect(stopped.status == 0, "\(stopped.stderr)")
        #expect(agent.waitForExit(), "the agent exits on stop")
        #expect(!FileManager.default.fileExists(atPath: agent.socket))
        #expect(!FileManager.default.fileExists(atPath: directory))
        expectFailure(try agent.run(["agent", "list"]), "no agent at \(agent.socket)")
    }

    @Test func withoutAnAgentTheCommandsSayHowToStartOne() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        expectFailure(try runCoffer(["agent", "add", "keys/alice.key"], in: dir), "COFFER_AGENT_SOCK is not set: start an agent with eval")
        expectFailure(try runCoffer(["agent", "list"], in: dir), "COFFER_AGENT_SOCK is not set")
        expectFailure(
            try runCoffer(["agent", "start", "--foreground", "--socket", dir.path("missing/dir/agent.sock")], in: dir),
            "cannot listen at \(dir.path("missing/dir/agent.sock"))"
        )
        // A runtime directory whose socket path would not fit in sun_path (108 bytes): the private directory made for
        // the socket goes again, in the foreground and in the background.
        let deep = dir.path(String(repeating: "d", count: 100))
        try FileManager.default.createDirectory(atPath: deep, withIntermediateDirectories: false)
        for args in [["agent", "start"], ["agent", "start", "--foreground"]] {
            expectFailure(try runCoffer(args, in: dir, environment: ["XDG_RUNTIME_DIR": deep]), "is too long")
            #expect(try FileManager.default.contentsOfDirectory(atPath: deep).isEmpty, "\(args) left a directory behind")
        }
    }

    @Test func anotherUidIsRefusedByTheSocketModeAndByItsPeerCredentials() throws {
        guard let nobody = asNobody(CofferProcess.binary, "a client") else { return }
        let dir = try Scratch()
        // uid 65534 must be able to reach the binary and the scratch directory to run at all.
        _ = chmod(dir.url.path, 0o755)
        let agent = try AgentProcess(dir)
        try dir.keygen("alice")
        #expect(try agent.run(["agent", "add", "keys/alice.key"], passphrase: "test passphrase").status == 0)

        // The private directory (0700) keeps the other uid from the socket.
        expectFailure(try agent.run(["agent", "list"], launcher: nobody), "Permission denied")
        // With the directory and socket opened up (a mistake, a bind mount), SO_PEERCRED still refuses. A coffer client
        // of the other uid refuses the agent first (it runs as another uid), so a raw client (python3) stands in for one
        // that would go ahead: the agent answers error 7 before it reads anything, so it sends nothing.
        let directory = (agent.socket as NSString).deletingLastPathComponent
        #expect(chmod(directory, 0o755) == 0 && chmod(agent.socket, 0o666) == 0)
        expectFailure(try agent.run(["agent", "stop"], launcher: nobody), "refused the agent at \(agent.socket): it runs as uid 0, not as uid 65534")
        guard let python = asNobody("/usr/bin/python3", "a raw client") else { return }
        let readAll = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); answer = b""
            while chunk := s.recv(4096): answer += chunk
            sys.stdout.write(answer[4:].hex())
            """
        let raw = try runCoffer(["-c", readAll, agent.socket], in: dir, launcher: python)
        let body = Digest.bytes(fromHex: raw.stdoutText) ?? []
        #expect(raw.status == 0 && body.count > 2 && body[0] == 0xFF && body[1] == 7, "\(raw.stdoutText) \(raw.stderr)")
        #expect(String(decoding: body.dropFirst(4), as: UTF8.self) == "refused: the agent serves uid 0 only, not uid 65534")
        // The refused clients changed nothing: the agent still runs and holds alice.
        let listed = try agent.run(["agent", "list"])
        #expect(listed.status == 0 && listed.stdoutText.hasPrefix("alice  "), "\(listed.stdoutText) \(listed.stderr)")
    }

    // MARK: - Using the agent

    @Test func pushPullUnsealAndSignUseTheAgentWithNoPassphraseAnywhere() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        #expect(try runCoffer(["init", "--home", dir.path("home")], in: dir, passphrase: "test passphrase").status == 0)
        try dir.keygen("alice")
        try FileManager.default.createDirectory(atPath: dir.path("model"), withIntermediateDirectories: true)
        let weights = randomData(300_000)
        try dir.write("model/model.safetensors", weights)
        // Pull checks the publisher against the registry's trusted signers (trust add signs with registry.key).
        #expect(try runCoffer(["trust", "add", "keys/alice.pub", "--home", dir.path("home")], in: dir, passphrase: "test passphrase").status == 0)

        // Before add: the agent does not hold alice, and there is no passphrase, so the command stops at the key.
        let refused = try agent.run(["push", "m", "model", "--identity", "keys/alice.key", "--home", dir.path("home"), "--verbose"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("the agent at \(agent.socket) does not hold alice"), "\(refused.stderr)")
        #expect(refused.stderr.contains("no passphrase"), "\(refused.stderr)")

        let added = try agent.run(["agent", "add", "keys/alice.key", "--ttl", "1h"], passphrase: "test passphrase")
        #expect(added.status == 0 && added.stderr.contains("added alice"), "\(added.stderr)")
        let listed = try agent.run(["agent", "list", "--json"])
        let rows = try #require(try JSONSerialization.jsonObject(with: listed.stdout) as? [[String: Any]])
        #expect(rows.count == 1 && rows.first?["name"] as? String == "alice")

        // Every command below runs with no COFFER_PASSPHRASE, no passphrase file and no terminal.
        let pushed = try agent.run(["push", "m", "model", "--identity", "keys/alice.key", "--home", dir.path("home"), "--verbose"])
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(pushed.stderr.contains("alice (") && pushed.stderr.contains("using the agent at \(agent.socket), no passphrase"), "\(pushed.stderr)")
        let pulled = try agent.run(["pull", "m:1", "--identity", "keys/alice.key", "--home", dir.path("home"), "--out", dir.path("out")])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(try dir.read("out/model.safetensors") == weights)
        // The pulled version's signatures were made in the agent: verify checks them with alice's public keys.
        let verified = try agent.run(["verify", "m:1", "--home", dir.path("home")])
        #expect(verified.status == 0, "\(verified.stderr)")

        let sealed = try agent.run(["seal", "--to", "keys/alice.pub", "-o", dir.path("w.sealed"), dir.path("model/model.safetensors")])
        #expect(sealed.status == 0, "\(sealed.stderr)")
        let unsealed = try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.out"), dir.path("w.sealed")])
        #expect(unsealed.status == 0, "\(unsealed.stderr)")
        #expect(try dir.read("w.out") == weights)

        let signed = try agent.run(["attestation", "sign", "--identity", "keys/alice.key", "-o", dir.path("att.json"), dir.path("w.out")])
        #expect(signed.status == 0, "\(signed.stderr)")
        let checked = try agent.run(["attestation", "verify", "--trust", "keys/alice.pub", dir.path("att.json"), dir.path("w.out")])
        #expect(checked.status == 0 && checked.stdoutText.contains("signed by alice"), "\(checked.stderr)")

        // Removed from the agent: the passphrase is needed again.
        #expect(try agent.run(["agent", "remove", "keys/alice.pub"]).status == 0)
        expectFailure(try agent.run(["agent", "remove", "keys/alice.key"]), "the agent does not hold key")
        expectFailure(try agent.run(["agent", "add", "keys/alice.key"], passphrase: "not it"), "wrong passphrase")
        expectFailure(try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.again"), dir.path("w.sealed")]), "no passphrase")
        let withPassphrase = try agent.run(
            ["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.again"), dir.path("w.sealed"), "--verbose"],
            passphrase: "test passphrase"
        )
        #expect(
            withPassphrase.status == 0 && withPassphrase.stderr.contains("unlocked from keys/alice.key with its passphrase"),
            "\(withPassphrase.stderr)"
        )
    }

    /// A day of work with one passphrase typed in the morning: the agent holds alice's key, the config file names it
    /// and the registry, and no command carries --identity, --home or a passphrase.
    @Test func aPassphraseFreeDayWithTheAgentAndTheConfigFile() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        try dir.keygen("alice")
        try dir.keygen("bob")
        #expect(try runCoffer(["init", "--home", dir.path("home"), "--owner", "keys/alice.pub"], in: dir, passphrase: "test passphrase").status == 0)
        try FileManager.default.createDirectory(atPath: dir.path("config/coffer"), withIntermediateDirectories: true)
        try dir.write("config/coffer/config.toml", Data("identity = \"\(dir.path("keys/alice.key"))\"\nhome = \"\(dir.path("home"))\"\n".utf8))
        try FileManager.default.createDirectory(atPath: dir.path("model"), withIntermediateDirectories: true)
        try dir.write("model/w.bin", randomData(50_000))
        let day = ["COFFER_AGENT_SOCK": agent.socket, "XDG_CONFIG_HOME": dir.path("config"), "COFFER_HOME": "", "COFFER_IDENTITY": ""]
        func run(_ args: [String]) throws -> CofferProcess.Output { try runCoffer(args, in: dir, environment: day) }

        // The morning: alice's key, and the registry's (share wraps data keys with it), each unlocked once.
        for key in ["keys/alice.key", "home/registry.key"] {
            #expect(try runCoffer(["agent", "add", key, "--ttl", "8h"], in: dir, passphrase: "test passphrase", environment: day).status == 0)
        }
        let steps: [[String]] = [
            ["push", "team/m", "model", "--verbose"],
            ["principal", "add", "bob", "keys/bob.pub"],
            ["share", "team/", "bob", "--pull"],
            ["push", "team/m", "model"],
            ["list"],
            ["show", "team/m:2"],
            ["pull", "team/m:2", "--out", "out"],
            ["alias", "set", "team/m@prod", "2"],
            ["audit", "--since", "1h", "--model", "team/m"],
            ["unshare", "bob"],
        ]
        for step in steps {
            let result = try run(step)
            #expect(result.status == 0, "\(step): \(result.stderr)")
            #expect(!result.stderr.contains("passphrase") || result.stderr.contains("no passphrase"), "\(step) asked: \(result.stderr)")
            if step == steps[0] { #expect(result.stderr.contains("using the agent at \(agent.socket), no passphrase"), "\(result.stderr)") }
        }
        #expect(try dir.read("out/w.bin") == dir.read("model/w.bin"))
        // What no agent can give: a new passphrase (key rotate chooses one) is asked for, and without one, refused.
        let rotate = try run(["key", "rotate"])
        #expect(rotate.status == 1 && rotate.stderr.contains("no passphrase"), "\(rotate.stderr)")
    }

    @Test func keysExpireAtTheirTTL() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        try dir.keygen("alice")
        try dir.write("w", randomData(10_000))
        #expect(try agent.run(["seal", "--to", "keys/alice.pub", "-o", dir.path("w.sealed"), dir.path("w")]).status == 0)
        #expect(try agent.run(["agent", "add", "keys/alice.key", "--ttl", "2s"], passphrase: "test passphrase").status == 0)
        let listed = try agent.run(["agent", "list"])
        #expect(listed.stdoutText.contains("alice") && listed.stdoutText.contains("expires in"), "\(listed.stdoutText)")
        #expect(try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.1"), dir.path("w.sealed")]).status == 0)

        // The agent wipes a key within a second of its expiry, whether or not anyone asks for it.
        sleep(3)
        let after = try agent.run(["agent", "list"])
        #expect(after.status == 0 && after.stdoutText.isEmpty, "\(after.stdoutText)")
        expectFailure(try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.2"), dir.path("w.sealed")]), "no passphrase")
        #expect(!dir.exists("w.2"))
        expectFailure(try agent.run(["agent", "add", "keys/alice.key", "--ttl", "soon"], passphrase: "test passphrase"), "invalid duration 'soon'")
        // Beyond what whole seconds hold (it trapped converting to UInt64): refused with one line.
        expectFailure(
            try agent.run(["agent", "add", "keys/alice.key", "--ttl", "1e300s"], passphrase: "test passphrase"),
            "invalid duration '1e300s': longer than 100 years"
        )
    }

    @Test func aLockedAgentRefusesUntilUnlockedWithItsPassphrase() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        try dir.keygen("alice")
        try dir.write("w", randomData(10_000))
        #expect(try agent.run(["seal", "--to", "keys/alice.pub", "-o", dir.path("w.sealed"), dir.path("w")]).status == 0)
        #expect(try agent.run(["agent", "add", "keys/alice.key"], passphrase: "test passphrase").status == 0)

        expectFailure(try agent.run(["agent", "lock"], passphrase: "lock words"), "the new passphrase is weak")
        #expect(try agent.run(["agent", "list"]).stdoutText.hasPrefix("alice  "), "a refused lock leaves the agent unlocked")
        #expect(try agent.run(["agent", "lock"], passphrase: "lock words, long enough").status == 0)
        // Locked: nothing is listed, nothing is signed or unwrapped, nothing is added or removed.
        #expect(try agent.run(["agent", "list"]).stdoutText.isEmpty)
        expectFailure(try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.1"), dir.path("w.sealed")]), "no passphrase")
        expectFailure(
            try agent.run(["agent", "add", "keys/alice.key"], passphrase: "test passphrase"),
            "the agent is locked: run coffer agent unlock"
        )
        expectFailure(try agent.run(["agent", "remove", "--all"]), "the agent is locked")
        expectFailure(try agent.run(["agent", "lock"], passphrase: "other words, long enough"), "the agent is locked already")
        expectFailure(try agent.run(["agent", "unlock"], passphrase: "wrong words"), "wrong passphrase")
        expectFailure(try agent.run(["agent", "unlock"]), "no passphrase")

        #expect(try agent.run(["agent", "unlock"], passphrase: "lock words, long enough").status == 0)
        #expect(try agent.run(["agent", "list"]).stdoutText.hasPrefix("alice  "))
        let unsealed = try agent.run(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.2"), dir.path("w.sealed")])
        #expect(unsealed.status == 0, "\(unsealed.stderr)")
    }

    @Test func wrongUnlockGuessesOverManyConnectionsWaitTheirTurn() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        #expect(try agent.run(["agent", "lock"], passphrase: "lock words, long enough").status == 0)
        let guess = frame([0x09] + le32(11) + Array("wrong guess".utf8))
        // Three wrong guesses at once, each on its own connection: served one at a time, the n-th in a row waiting n
        // seconds, so the last answer comes 1 + 2 + 3 s after they were sent (each alone would answer in about 1 s).
        let connections = try (0..<3).map { _ in try RawAgentConnection(agent.socket) }
        let started = Date()
        let answers = Answers()
        DispatchQueue.concurrentPerform(iterations: 3) { i in answers.add(connections[i].exchange(guess), at: Date()) }
        #expect(answers.all.allSatisfy { $0.body.first == 0xFF && $0.body.count > 1 && $0.body[1] == 4 }, "\(answers.all.map(\.body))")
        let last = answers.all.map { $0.time.timeIntervalSince(started) }.max() ?? 0
        #expect(last >= 6, "the third wrong guess answered after \(last) s")
        // The right passphrase unlocks at once, and starts the count over.
        #expect(try agent.run(["agent", "unlock"], passphrase: "lock words, long enough").status == 0)
    }

    @Test func theAgentHoldsAtMost1024IdentitiesAndListsThemAll() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        let connection = try RawAgentConnection(agent.socket)
        /// An `add` of a fresh identity `name` (its 96 secret bytes random: a random P-256 scalar is in range but for
        /// a chance of 2^-32).
        func add(_ name: String, secrets: [UInt8] = (0..<96).map { _ in UInt8.random(in: 0...255) }) -> [UInt8] {
            connection.exchange(frame([0x02] + le16(name.utf8.count) + Array(name.utf8) + secrets + [UInt8](repeating: 0, count: 8)))
        }
        let first = (0..<96).map { _ in UInt8.random(in: 0...255) }
        #expect(add("id0", secrets: first) == [0x80])
        for i in 1..<1024 { #expect(add("id\(i)") == [0x80], "add \(i)") }
        let refused = add("one-more")
        #expect(refused.count > 1 && refused[0] == 0xFF && refused[1] == 11, "\(refused.prefix(2))")
        #expect(String(decoding: refused.dropFirst(4), as: UTF8.self).contains("holds 1024 identities already"))
        // Adding one it holds again only replaces it.
        #expect(add("id0", secrets: first) == [0x80])
        let listed = connection.exchange(frame([0x01]))
        #expect(listed.first == 0x81 && listed.count > 3 && Int(listed[1]) | Int(listed[2]) << 8 == 1024)
        let shown = try agent.run(["agent", "list", "--json"])
        let rows = try JSONSerialization.jsonObject(with: shown.stdout) as? [Any]
        #expect(shown.status == 0 && rows?.count == 1024, "\(shown.stderr)")
    }

    @Test func aClientRefusesAnAgentRunningAsAnotherUid() throws {
        guard let nobody = asNobody(CofferProcess.binary, "an agent") else { return }
        let dir = try Scratch()
        _ = chmod(dir.url.path, 0o755)
        try dir.keygen("alice")
        // Another user's listener at the path COFFER_AGENT_SOCK still names, as after `agent stop` in a shared /tmp.
        try FileManager.default.createDirectory(atPath: dir.path("taken"), withIntermediateDirectories: false)
        #expect(chown(dir.path("taken"), 65534, 65534) == 0)
        let socket = dir.path("taken/agent.sock")
        let stranger = try BackgroundCoffer(
            ["agent", "start", "--foreground", "--socket", socket],
            in: dir.url,
            environment: ["PATH": "/usr/bin:/bin"],
            launcher: nobody
        )
        try #require(poll { FileManager.default.fileExists(atPath: socket) }, "the other uid's agent never listened: \(stranger.stderrSoFar)")
        let environment = ["COFFER_AGENT_SOCK": socket]
        // The client refuses before it sends a byte: the stranger's own refusal (code 7) would name uid 65534 as the server.
        let refusal = "refused the agent at \(socket): it runs as uid 65534, not as uid 0"
        expectFailure(try runCoffer(["agent", "add", "keys/alice.key"], in: dir, passphrase: "test passphrase", environment: environment), refusal)
        expectFailure(try runCoffer(["agent", "lock"], in: dir, passphrase: "lock words, long enough", environment: environment), refusal)
        // A command with --identity falls back to the passphrase, and says why with --verbose.
        try dir.write("w", randomData(1000))
        #expect(try runCoffer(["seal", "--to", "keys/alice.pub", "-o", dir.path("w.sealed"), dir.path("w")], in: dir).status == 0)
        let unsealed = try runCoffer(
            ["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.out"), dir.path("w.sealed"), "--verbose"],
            in: dir,
            passphrase: "test passphrase",
            environment: environment
        )
        #expect(unsealed.status == 0 && unsealed.stderr.contains(refusal), "\(unsealed.stderr)")
    }

    // MARK: - An agent that goes away

    @Test func agentKilledBeforeAnUnwrapFailsTheCommandWithOneLineAndNoOutput() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        try dir.keygen("alice")
        try dir.write("w", randomData(200_000))
        #expect(try agent.run(["seal", "--to", "keys/alice.pub", "-o", dir.path("w.sealed"), dir.path("w")]).status == 0)
        #expect(try agent.run(["agent", "add", "keys/alice.key"], passphrase: "test passphrase").status == 0)
        #expect(mkfifo(dir.path("pipe"), 0o600) == 0)

        // unseal opens its input (a FIFO), takes alice from the agent, then blocks reading the header.
        let unseal = try agent.start(["unseal", "--identity", "keys/alice.key", "-o", dir.path("w.out"), dir.path("pipe")])
        let writer = open(dir.path("pipe"), O_WRONLY)
        #expect(writer >= 0)
        #expect(waitUntilBlockedReading(unseal.pid, path: dir.path("pipe")), "unseal never reached its read")
        agent.kill()
        let sealed = try dir.read("w.sealed")
        _ = sealed.withUnsafeBytes { write(writer, $0.baseAddress!, $0.count) }
        close(writer)
        let result = unseal.finish()
        expectFailure(result, "agent: lost the connection to the agent at \(agent.socket)")
        #expect(!dir.exists("w.out"), "nothing of the output is written")
        #expect(dir.entries.allSatisfy { !$0.hasPrefix(".w.out") }, "no temporary output left: \(dir.entries)")
    }

    @Test func agentKilledBeforeAPushSignsLeavesNoVersion() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        #expect(try runCoffer(["init", "--home", dir.path("home")], in: dir, passphrase: "test passphrase").status == 0)
        try dir.keygen("alice")
        try FileManager.default.createDirectory(atPath: dir.path("model"), withIntermediateDirectories: true)
        try dir.write("model/model.safetensors", Data(repeating: 0x5A, count: 48 << 20))
        #expect(try agent.run(["agent", "add", "keys/alice.key"], passphrase: "test passphrase").status == 0)

        // The push seals (a blob appears in home/tmp) while it takes alice from the agent (it says so with --verbose, and
        // keeps the connection), and signs last.
        let push = try agent.start(["push", "m", "model", "--identity", "keys/alice.key", "--home", dir.path("home"), "--verbose"])
        var sealing = false
        for _ in 0..<6000 where !sealing {
            sealing =
                !((try? FileManager.default.contentsOfDirectory(atPath: dir.path("home/tmp"))) ?? []).isEmpty
                && push.stderrSoFar.contains("using the agent at \(agent.socket)")
            if !sealing { usleep(2000) }
        }
        #expect(sealing, "the push never started sealing with alice from the agent")
        agent.kill()
        var result = push.finish()
        // --verbose's line about the identity came first; the failure is the one line besides it.
        result.stderr = result.stderr.split(separator: "\n").filter { !$0.contains("using the agent at") }.joined(separator: "\n") + "\n"
        expectFailure(result, "agent: lost the connection to the agent at \(agent.socket)")
        let listed = try runCoffer(["list", "--home", dir.path("home")], in: dir)
        #expect(listed.status == 0 && !listed.stdoutText.contains("m:"), "no version recorded: \(listed.stdoutText)")
        let pulled = try runCoffer(
            ["pull", "m:1", "--identity", "keys/alice.key", "--home", dir.path("home"), "--out", dir.path("out")],
            in: dir,
            passphrase: "test passphrase"
        )
        #expect(pulled.status == 1 && !dir.exists("out"))
    }

    // MARK: - Malformed requests

    @Test func malformedRequestsGetAnErrorAndTheAgentServesOn() throws {
        let dir = try Scratch()
        let agent = try AgentProcess(dir)
        // Unknown type, trailing bytes, truncated add, an empty frame, a frame over 4 MiB.
        let cases: [([UInt8], UInt8, String)] = [
            (frame([0x42]), 1, "unknown request type 66"),
            (frame([0x01, 0x00]), 1, "trailing bytes"),
            (frame([0x02, 0x05, 0x00] + Array("alice".utf8) + [UInt8](repeating: 0, count: 40)), 1, "truncated"),
            (frame([0x08, 0x00, 0x00, 0x00, 0x00]), 1, "a passphrase must be 1 to 4096 bytes"),
            ([0, 0, 0, 0], 9, "a frame of 0 bytes"),
            ([0x01, 0x00, 0x40, 0x00], 9, "a frame of 4194305 bytes"),
            (frame([0x05] + [UInt8](repeating: 7, count: 16) + [1, 0, 0, 0, 0x61]), 2, "does not hold key"),
        ]
        for (request, code, message) in cases {
            let answer = try rawExchange(agent.socket, request)
            #expect(answer.first == 0xFF && answer.count > 1 && answer[1] == code, "\(message): \(answer.prefix(8))")
            #expect(String(decoding: answer.dropFirst(4), as: UTF8.self).contains(message), "\(String(decoding: answer.dropFirst(4), as: UTF8.self))")
        }
        let listed = try agent.run(["agent", "list"])
        #expect(listed.status == 0, "the agent still serves: \(listed.stderr)")
    }
}
