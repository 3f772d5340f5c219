import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

/// The registry commands driven through the built binary, each test with its own registry directory.
@Suite(.ownThread)
struct RegistryCommandTests {
    /// A registry in `dir/home`, an identity `keys/alice`, and a model directory `model/`.
    private func setUp() throws -> Scratch {
        let dir = try Scratch()
        #expect(try coffer(["init"], dir).status == 0)
        try dir.keygen("alice")
        try FileManager.default.createDirectory(atPath: dir.path("model/tokenizer"), withIntermediateDirectories: true)
        try dir.write("model/model.safetensors", randomData(150_000))
        try dir.write("model/tokenizer/vocab.json", Data(#"{"a":1}"#.utf8))
        return dir
    }

    /// Starts `coffer push m model` and returns its pid, for tests that run several at once or kill it. ``Spawn`` and
    /// waitpid, not Foundation's Process: a Process SIGKILLed here once never returned from waitUntilExit, and the
    /// thread it held was one of the test runner's two.
    private func startPush(_ dir: Scratch) throws -> pid_t {
        let arguments = ["push", "m", dir.path("model"), "--identity", dir.path("keys/alice.key"), "--home", dir.path("home")]
        return try Spawn.start(CofferProcess.binary, arguments, environment: CofferProcess.environment(in: dir.url))
    }

    private func coffer(_ args: [String], _ dir: Scratch, passphrase: String? = "test passphrase") throws -> CofferProcess.Output {
        try CofferProcess.run(args + ["--home", dir.path("home")], in: dir.url, passphrase: passphrase)
    }

    @Test func initOnUnreachableOrMalformedBackendsIsOneLineAndLeavesNothing() throws {
        let dir = try Scratch()
        // A port nothing listens on: the kernel refuses at once.
        expectFailure(try coffer(["init", "--blobs", "oci+http://127.0.0.1:1/models"], dir), "OCI registry 127.0.0.1:1/models: connection refused")
        #expect(!FileManager.default.fileExists(atPath: dir.path("home")), "nothing of a refused init stays")
        expectFailure(try coffer(["init", "--blobs", "oci://bob:hunter2@registry.example/models"], dir), "a password in the oci URL is refused")
        expectFailure(try coffer(["init", "--blobs", "s3://bucket"], dir), "--blobs must be directory or an oci://")
        expectFailure(try coffer(["init", "--metadata", "mysql://db"], dir), "--metadata must be sqlite or a postgres:// URL")
        try FileManager.default.createDirectory(atPath: dir.path("home"), withIntermediateDirectories: true)
        try dir.write("home/notes.txt", Data("mine".utf8))
        expectFailure(try coffer(["init", "--blobs", "oci+http://127.0.0.1:1/models"], dir), "connection refused")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: dir.path("home")) == ["notes.txt"],
            "a directory that existed keeps only what it held"
        )
    }

    @Test func pushListVerifyPullShow() throws {
        let dir = try setUp()
        try dir.write(
            "privacy.json",
            Data(#"{"mechanism":"dp-sgd","epsilon":2.9,"delta":1e-5,"segments":[{"sample_rate":0.01,"noise_multiplier":1.1,"steps":1000}]}"#.utf8)
        )
        // An alias is a signed record: in a registry without principals only a trusted signer (or the registry's key) moves one.
        expectFailure(
            try coffer(["push", "team/fraud", "model", "--identity", "keys/alice.key", "--alias", "prod"], dir),
            "alice is not a trusted signer of this registry"
        )
        let push = try coffer(["push", "team/fraud", "model", "--identity", "keys/alice.key", "--privacy", "privacy.json"], dir)
        #expect(push.status == 0, "\(push.stderr)")
        #expect(push.stdoutText.hasPrefix("pushed team/fraud:1 sha256:"))
        // The size as printf's %.1f writes it (146.5 KiB: the two files setUp writes).
        let bytes = try ["model/model.safetensors", "model/tokenizer/vocab.json"].reduce(0) { $0 + (try dir.read($1).count) }
        #expect(push.stdoutText.hasSuffix(String(format: "(2 files, %.1f KiB)\n", Double(bytes) / 1024)), "\(push.stdoutText)")
        expectFailure(try coffer(["verify", "team/fraud"], dir), "which is not a trusted signer")
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        #expect(try coffer(["alias", "set", "team/fraud@prod", "1", "--identity", "keys/alice.key"], dir).status == 0)

        let list = try coffer(["list", "--where", "epsilon<=3", "--json"], dir)
        #expect(list.status == 0, "\(list.stderr)")
        let versions = try JSONSerialization.jsonObject(with: list.stdout) as? [[String: Any]]
        #expect(versions?.count == 1)
        #expect(versions?.first?["epsilon"] as? Double == 2.9)
        #expect(versions?.first?["steps"] as? Int == 1000)
        #expect(versions?.first?["noise_multiplier"] as? Double == 1.1)
        #expect(try coffer(["list", "--where", "epsilon<2"], dir).stdoutText.split(separator: "\n").count == 1, "header only")

        #expect(try coffer(["verify", "team/fraud@prod"], dir).stdoutText.contains("verified"))
        let deep = try coffer(["verify", "team/fraud:1", "--read-data", "--identity", "keys/alice.key"], dir)
        #expect(deep.status == 0 && deep.stdoutText.contains("plaintext"), "\(deep.stderr)")

        let pull = try coffer(["pull", "team/fraud@prod", "--identity", "keys/alice.key", "--out", "pulled"], dir)
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(try dir.read("pulled/model.safetensors") == dir.read("model/model.safetensors"))
        #expect(try dir.read("pulled/tokenizer/vocab.json") == dir.read("model/tokenizer/vocab.json"))
        #expect(dir.exists("pulled/model.sig"))

        let show = try coffer(["show", "team/fraud:1", "--json"], dir)
        let shown = try JSONSerialization.jsonObject(with: show.stdout) as? [String: Any]
        #expect((shown?["files"] as? [[String: Any]])?.count == 2)
        #expect(shown?["delta"] as? Double == 1e-5)
        // In text: who and what first, then the privacy card (segments as in JSON), the files, the identifiers.
        let text = try coffer(["show", "team/fraud:1"], dir).stdoutText.split(separator: "\n").map(String.init)
        let labels = text.map { $0.split(separator: ":", maxSplits: 1).first.map(String.init) ?? "" }
        #expect(Array(labels.prefix(5)) == ["model", "version", "created", "publisher", "signature"], "\(text)")
        #expect(text.contains { $0.hasPrefix("publisher:") && $0.contains("alice (key ") }, "the publisher by its trusted name")
        #expect(text.contains("  segments:             q=0.01 sigma=1.1 steps=1000"), "\(text)")
        let order = ["privacy", "  epsilon", "files", "digest"].map { label in labels.firstIndex(of: label) ?? -1 }
        #expect(order == order.sorted() && !order.contains(-1), "\(text)")
        #expect(labels.last == "digest")
        #expect(try coffer(["fsck"], dir).status == 0)
    }

    /// Text from the registry reaches the terminal with its control characters escaped: a tag (unsigned, any writer of
    /// the registry or a server can set it) cannot set the window title, hide text or forge a line of `show`.
    @Test func registryTextIsShownWithItsControlCharactersEscaped() throws {
        let dir = try setUp()
        #expect(try coffer(["push", "m", "model", "--identity", "keys/alice.key"], dir).status == 0)
        let hostile = "x\u{1B}]0;pwned\u{07}\u{1B}[8m\nfiles:\r\u{9B}2J"
        let tagged = try coffer(["tag", "m:1", "note=\(hostile)"], dir)
        #expect(tagged.status == 0, "\(tagged.stderr)")
        let shown = try coffer(["show", "m:1"], dir)
        #expect(shown.status == 0 && !shown.stdoutText.isEmpty, "\(shown.stderr)")
        for forbidden: Unicode.Scalar in ["\u{1B}", "\u{07}", "\r", "\u{9B}"] {
            #expect(!shown.stdoutText.unicodeScalars.contains(forbidden), "\(forbidden.value) reached the terminal")
        }
        #expect(shown.stdoutText.contains(#"note=x\u001b]0;pwned\u0007\u001b[8m\u000afiles:\u000d\u009b2J"#), "\(shown.stdoutText)")
        #expect(!shown.stdoutText.split(separator: "\n").contains { $0.hasPrefix("files:\r") }, "no forged line")
        // Bidirectional and invisible characters too: U+202E would show `devorppa` as `approved`, U+200B hides in a name.
        let spoof = "\u{202E}devorppa\u{200B}\u{7F}"
        #expect(try coffer(["tag", "m:1", "state=\(spoof)"], dir).status == 0)
        let spoofed = try coffer(["show", "m:1"], dir)
        #expect(spoofed.stdoutText.contains(#"state=\u202edevorppa\u200b\u007f"#), "\(spoofed.stdoutText)")
        // `--json` keeps the same strings, escaped the JSON way: a parser reads the tag back exactly.
        let json = try coffer(["show", "m:1", "--json"], dir)
        #expect(json.status == 0, "\(json.stderr)")
        for forbidden: Unicode.Scalar in ["\u{1B}", "\u{9B}", "\u{7F}", "\u{202E}", "\u{200B}"] {
            #expect(!json.stdoutText.unicodeScalars.contains(forbidden), "\(forbidden.value) reached the terminal in JSON")
        }
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdoutText.utf8)) as? [String: Any])
        let tags = try #require(document["tags"] as? [String: Any], "\(json.stdoutText)")
        #expect(tags["state"] as? String == spoof && tags["note"] as? String == hostile, "\(tags)")
        // An error naming what the user typed says it in one line, escapes and all.
        let refused = try coffer(["show", "m:\u{1B}[2K9"], dir)
        #expect(refused.status == 1 && refused.stderr.hasSuffix("\n") && refused.stderr.dropLast().allSatisfy { $0 != "\n" })
        #expect(!refused.stderr.unicodeScalars.contains("\u{1B}") && refused.stderr.contains(#"\u001b[2K9"#), "\(refused.stderr)")
    }

    @Test func badInputIsOneLineAndChangesNothing() throws {
        let dir = try setUp()
        #expect(try coffer(["push", "m:1", "model", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        let push = ["--identity", "keys/alice.key"]
        expectFailure(try coffer(["push", "m:1", "model"] + push, dir), "version m:1 already exists")
        expectFailure(try coffer(["push", "bad name", "model"] + push, dir), "invalid model name 'bad name'")
        expectFailure(try coffer(["push", "m", "model", "--epsilon=-1"] + push, dir), "epsilon must be a finite number >= 0")
        expectFailure(try coffer(["push", "m", "model", "--delta", "1"] + push, dir), "delta must be in [0, 1)")
        try dir.write("broken.json", Data("{epsilon:".utf8))
        expectFailure(try coffer(["push", "m", "model", "--privacy", "broken.json"] + push, dir), "broken.json is not a JSON object")
        expectFailure(try coffer(["push", "m", "nowhere"] + push, dir), "nowhere: No such file or directory")
        try FileManager.default.createSymbolicLink(atPath: dir.path("model/link"), withDestinationPath: "/etc/hostname")
        expectFailure(try coffer(["push", "m", "model"] + push, dir), "is a symbolic link inside the model directory")
        try FileManager.default.removeItem(atPath: dir.path("model/link"))
        expectFailure(try coffer(["pull", "nope", "--out", "o"] + push, dir), "unknown model nope")
        expectFailure(try coffer(["pull", "m:7", "--out", "o"] + push, dir), "unknown version m:7")
        expectFailure(try coffer(["pull", "m@prod", "--out", "o"] + push, dir), "unknown alias m@prod")
        expectFailure(try CofferProcess.run(["list", "--home", dir.path("empty")], in: dir.url), "is not a Coffer registry")
        let list = try coffer(["list", "--json"], dir)
        #expect((try JSONSerialization.jsonObject(with: list.stdout) as? [Any])?.count == 1, "only the first push is stored")
        #expect(try coffer(["fsck"], dir).status == 0)
        #expect(!dir.exists("o"))
    }

    @Test func tamperedBlobIsCaughtByVerifyPullAndFsck() throws {
        let dir = try setUp()
        #expect(try coffer(["push", "m", "model", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        let shown = try JSONSerialization.jsonObject(with: try coffer(["show", "m", "--json"], dir).stdout) as? [String: Any]
        let digests = (shown?["files"] as? [[String: Any]] ?? []).compactMap { $0["sealed_sha256"] as? String }.sorted()
        let target = TestBackends.blobFile(try #require(digests.first), home: dir.path("home"))
        var data = try Data(contentsOf: URL(fileURLWithPath: target))
        data[data.count - 20] ^= 0x01
        try data.write(to: URL(fileURLWithPath: target))
        expectFailure(try coffer(["verify", "m"], dir), "does not match its signed SHA-256")
        expectFailure(try coffer(["pull", "m", "--identity", "keys/alice.key", "--out", "o"], dir), "integrity check failed")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: dir.path("o")))?.isEmpty ?? true)
        let fsck = try coffer(["fsck"], dir)
        #expect(fsck.status == 1)
        #expect(fsck.stdoutText.contains("is corrupt"))
    }

    /// A pull stopped (SIGTERM; Ctrl-\\, which the Swift runtime's backtracer used to take and hang on) after one file
    /// was decrypted and while the next was read: none of the model's plaintext stays, in a new output directory or in
    /// one that existed. Killed (SIGKILL), it leaves its staging folder, and the next pull into the same folder removes it.
    @Test(.enabled(if: TestBackends.blobsInDirectory, "needs the blob as a file the test can swap for a FIFO"))
    func anInterruptedPullLeavesNoDecryptedFile() throws {
        let dir = try setUp()
        #expect(try coffer(["push", "m", "model", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        let shown = try JSONSerialization.jsonObject(with: try coffer(["show", "m", "--json"], dir).stdout) as? [String: Any]
        let files = try #require(shown?["files"] as? [[String: Any]])
        #expect(files.compactMap { $0["path"] as? String } == ["model.safetensors", "tokenizer/vocab.json"], "the order of the pull")
        // The second file's blob becomes a FIFO: the pull decrypts the first into its staging folder, then waits on it.
        let blob = TestBackends.blobFile(try #require(files.last?["sealed_sha256"] as? String), home: dir.path("home"))
        let sealed = try Data(contentsOf: URL(fileURLWithPath: blob))
        #expect(unlink(blob) == 0 && mkfifo(blob, 0o600) == 0)
        try FileManager.default.createDirectory(atPath: dir.path("existing"), withIntermediateDirectories: true)
        for (output, stagedIn, signal) in [("new", ".", SIGTERM), ("existing", "existing", SIGQUIT), ("killed", ".", SIGKILL)] {
            let pull = try BackgroundCoffer(
                ["pull", "m", "--identity", "keys/alice.key", "--out", output, "--home", dir.path("home")],
                in: dir.url,
                environment: CofferProcess.environment(in: dir.url)
            )
            // Opened for writing once the pull has opened it for reading (without O_NONBLOCK, open would wait forever
            // for a pull that failed first); half of the blob, so that the pull waits for the rest.
            var writer: Int32 = -1
            let opening = Date() + 60
            while writer < 0, pull.status == nil, Date() < opening {
                writer = open(blob, O_WRONLY | O_NONBLOCK)
                if writer < 0 { usleep(10_000) }
            }
            try #require(writer >= 0, "the pull never opened the blob: \(pull.finish(within: 0).stderr)")
            defer { close(writer) }
            let half = Array(sealed.prefix(sealed.count / 2))
            #expect(write(writer, half, half.count) == half.count)
            let staging = dir.url.appendingPathComponent(stagedIn)
            func staged() -> [String] {
                ((try? FileManager.default.contentsOfDirectory(atPath: staging.path)) ?? []).filter { $0.hasPrefix(".coffer-pull-") }
            }
            let deadline = Date() + 60
            while Date() < deadline, !staged().contains(where: { dir.exists("\(stagedIn)/\($0)/model.safetensors") }) { usleep(10_000) }
            #expect(staged().contains { dir.exists("\(stagedIn)/\($0)/model.safetensors") }, "the first file was decrypted: \(pull.stderrSoFar)")
            let ended = pull.terminate(with: signal, within: 20)
            #expect(ended.status == 128 + signal, "\(ended.stderr)")
            #expect(staged().isEmpty == (signal != SIGKILL), "the staging folder went with the decrypted file in it, unless killed")
            #expect(!dir.exists(output) || output == "existing")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path("existing")).isEmpty)
        }
        #expect(unlink(blob) == 0 && FileManager.default.createFile(atPath: blob, contents: sealed))
        #expect(try coffer(["pull", "m", "--identity", "keys/alice.key", "--out", "again"], dir).status == 0)
        #expect(
            !(try FileManager.default.contentsOfDirectory(atPath: dir.url.path).contains { $0.hasPrefix(".coffer-pull-") }),
            "the killed pull's folder"
        )
    }

    /// Only what a killed pull recorded is removed after it: a model's own files named like temporary ones arrive whole,
    /// and a folder of the user's named like a staging folder keeps what is in it.
    @Test func filesNamedLikeLeftoversAreNeverTakenForThem() throws {
        let dir = try setUp()
        try dir.write("model/.cfg.coffer-tmp-1", Data("config".utf8))
        try FileManager.default.createDirectory(atPath: dir.path("model/.coffer-pull-cache"), withIntermediateDirectories: true)
        try dir.write("model/.coffer-pull-cache/x", Data("cache".utf8))
        #expect(try coffer(["push", "m", "model", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        try FileManager.default.createDirectory(atPath: dir.path(".coffer-pull-mine"), withIntermediateDirectories: true)
        try dir.write(".coffer-pull-mine/notes.txt", Data("notes".utf8))
        try dir.write(".out.coffer-tmp-mine", Data("mine".utf8))
        for output in ["new", "new/inner"] {
            let pull = try coffer(["pull", "m", "--identity", "keys/alice.key", "--out", output], dir)
            #expect(pull.status == 0, "\(pull.stderr)")
            #expect(try dir.read("\(output)/.cfg.coffer-tmp-1") == Data("config".utf8))
            #expect(try dir.read("\(output)/.coffer-pull-cache/x") == Data("cache".utf8))
        }
        #expect(try dir.read(".coffer-pull-mine/notes.txt") == Data("notes".utf8))
        #expect(try dir.read(".out.coffer-tmp-mine") == Data("mine".utf8))
    }

    @Test func concurrentPushesFromTwoProcessesGetDistinctVersions() throws {
        let dir = try setUp()
        let pushes = try (0..<2).map { _ in try startPush(dir) }
        #expect(pushes.map(Spawn.wait) == [0, 0])
        let list = try coffer(["list", "m", "--json"], dir)
        let versions = (try JSONSerialization.jsonObject(with: list.stdout) as? [[String: Any]])?.compactMap { $0["version"] as? String }
        #expect(versions?.sorted() == ["1", "2"])
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        #expect(try coffer(["fsck"], dir).status == 0)
    }

    /// SIGKILL `coffer push` at random moments: every time, fsck is clean, no partial version is listed, and gc reclaims what was left.
    @Test func pushKilledAtRandomMomentsLeavesWholeVersionsOnly() throws {
        let dir = try setUp()
        try dir.write("model/big.bin", randomData(3 << 20))
        #expect(try coffer(["trust", "add", "keys/alice.pub"], dir).status == 0)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<12 {
            let push = try startPush(dir)
            usleep(UInt32.random(in: 0...250_000, using: &generator))
            kill(push, SIGKILL)
            _ = Spawn.wait(push)
            let fsck = try coffer(["fsck", "--json"], dir)
            let report = try? JSONSerialization.jsonObject(with: fsck.stdout) as? [String: Any]
            #expect(report?["clean"] as? Bool == true, "exit \(fsck.status): \(fsck.stdoutText) \(fsck.stderr)")
        }
        // One push left to finish: on slower backends (PostgreSQL and OCI) every killed push may have died before its
        // commit, and the model must exist for `list`.
        let whole = try coffer(["push", "m", "model", "--identity", "keys/alice.key"], dir)
        #expect(whole.status == 0, "a push after the killed ones: \(whole.stderr)")
        let list = try coffer(["list", "m", "--json"], dir)
        try #require(list.status == 0, "list after the killed pushes: exit \(list.status): \(list.stderr)")
        let committed = (try JSONSerialization.jsonObject(with: list.stdout) as? [[String: Any]]) ?? []
        for version in committed {
            let name = "m:\(version["version"] as? String ?? "?")"
            #expect(try coffer(["verify", name], dir).status == 0, "\(name) is listed but does not verify")
        }
        #expect(try coffer(["gc", "--grace", "0"], dir).status == 0)
        let after = try JSONSerialization.jsonObject(with: try coffer(["fsck", "--json"], dir).stdout) as? [String: Any]
        #expect(after?["orphan_blobs"] as? Int == 0)
        #expect(after?["temporary_files"] as? Int == 0)
        #expect(after?["clean"] as? Bool == true)
    }

    /// A full disk fails the push with a clear message and leaves the registry as it was.
    @Test func diskFullIsReportedAndLeavesNoVersion() throws {
        let dir = try setUp()
        let mountPoint = dir.path("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mount = try ProgramRun.run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint]).status
        #expect(mount == 0, "mounting a 1 MiB tmpfs needs root, which tools/test and CI have")
        guard mount == 0 else { return }
        defer { _ = try? ProgramRun.run("/bin/umount", [mountPoint]) }
        let home = "\(mountPoint)/home"
        #expect(try CofferProcess.run(["init", "--home", home], in: dir.url).status == 0)
        try dir.write("model/big.bin", randomData(2 << 20))
        let push = try CofferProcess.run(["push", "m", "model", "--identity", "keys/alice.key", "--home", home], in: dir.url)
        expectFailure(push, "No space left on device")
        let list = try CofferProcess.run(["list", "--json", "--home", home], in: dir.url)
        #expect((try JSONSerialization.jsonObject(with: list.stdout) as? [Any])?.count == 0)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(home)/tmp")) ?? []
        #expect(left.isEmpty, "left in tmp/: \(left)")
    }
}
