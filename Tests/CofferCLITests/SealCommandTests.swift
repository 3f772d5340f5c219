import CofferTestSupport
import Foundation
import Testing

/// `coffer keygen`, `seal` and `unseal` driven as a user would, through the built binary.
@Suite(.ownThread)
struct SealCommandTests {
    @Test func keygenWritesThreeFilesWithPrivateKeyMode0600() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        let manager = FileManager.default
        let keyMode = try manager.attributesOfItem(atPath: dir.path("keys/alice.key"))[.posixPermissions] as? Int
        #expect(keyMode == 0o600)
        #expect(dir.exists("keys/alice.pub") && dir.exists("keys/alice.pem"))
        #expect(String(decoding: try dir.read("keys/alice.pem"), as: UTF8.self).hasPrefix("-----BEGIN PUBLIC KEY-----"))
        let again = try CofferProcess.run(["keygen", "--out", "keys/alice"], in: dir.url)
        expectFailure(again, "keys/alice.key already exists")
    }

    /// `keygen --force` stopped at random moments replaces all three files or none: a new private key beside the old
    /// public one would have lost the old key for nothing. No temporary file is left either.
    @Test func keygenForceInterruptedReplacesAllThreeFilesOrNone() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        func inodes() throws -> [UInt64] {
            try ["key", "pub", "pem"].map {
                try #require(FileManager.default.attributesOfItem(atPath: dir.path("keys/alice.\($0)"))[.systemFileNumber] as? UInt64)
            }
        }
        // Signals spread over a whole keygen's time, so that some land in its renames. Other tests' load changes that
        // time while this one runs (CI once interrupted all 40): the span doubles after ten runs that all ended by the
        // signal and halves after ten that all finished, and the runs go on until both outcomes were seen.
        let started = Date()
        try dir.keygen("timed")
        var span = UInt32(Date().timeIntervalSince(started) * 1.2e6)
        var outcomes: Set<Int32> = []
        var recent: Set<Int32> = []
        for run in 1...160 where run <= 40 || outcomes.count < 2 {
            let before = try inodes()
            let keygen = try BackgroundCoffer(
                ["keygen", "--out", "keys/alice", "--force", "--kdf-ops", "1", "--kdf-memory", "64"],
                in: dir.url,
                environment: CofferProcess.environment(in: dir.url)
            )
            usleep(UInt32.random(in: 0...span))
            let ended = keygen.terminate(with: SIGINT, within: 20)
            let replaced = zip(before, try inodes()).filter { $0 != $1 }.count
            #expect(replaced == 0 || replaced == 3, "\(replaced) of the three files replaced; exit \(ended.status)")
            #expect(ended.status == 0 || ended.status == 128 + SIGINT, "\(ended.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path("keys")).count == 6)
            outcomes.insert(ended.status)
            recent.insert(ended.status)
            if run % 10 == 0 {
                if recent == [128 + SIGINT] { span = min(max(span, 1000) * 2, 60_000_000) }
                if recent == [0] { span = max(span / 2, 1000) }
                recent = []
            }
        }
        #expect(outcomes.count == 2, "some keygens were interrupted and some finished: \(outcomes)")
    }

    @Test func sealUnsealRoundTripThroughFilesAndPipes() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        let plain = randomData(300_000)
        try dir.write("plain.bin", plain)
        let seal = try CofferProcess.run(["seal", "--to", "keys/alice.pub", "--chunk-size", "16K", "-o", "plain.cfs", "plain.bin"], in: dir.url)
        #expect(seal.status == 0, "\(seal.stderr)")
        #expect(seal.stderr.isEmpty, "no progress bar when stderr is not a terminal")
        let unseal = try CofferProcess.run(["unseal", "--identity", "keys/alice.key", "-o", "out.bin", "plain.cfs"], in: dir.url)
        #expect(unseal.status == 0, "\(unseal.stderr)")
        #expect(try dir.read("out.bin") == plain)

        let piped = try CofferProcess.run(["seal", "--to", "keys/alice.pub", "-o", "-", "-"], in: dir.url, stdin: plain)
        #expect(piped.status == 0)
        let back = try CofferProcess.run(["unseal", "--identity", "keys/alice.key", "-o", "-", "-"], in: dir.url, stdin: piped.stdout)
        #expect(back.status == 0, "\(back.stderr)")
        #expect(back.stdout == plain)
    }

    /// OpenSSL's ChaCha20-Poly1305 seals large files (from 8 MiB) in a library context of Coffer's own, and libcrypto
    /// is told to read no openssl.cnf: the host's configuration (here OPENSSL_CONF naming a FIFO nobody writes, which a
    /// read would wait on forever) has no say. Before, the first chunk's EVP_CipherInit_ex read it, and the seal hung.
    @Test func sealingWithOpenSSLReadsNoOpenSSLConfiguration() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        let plain = Data(count: 16 << 20)
        try dir.write("plain.bin", plain)
        #expect(mkfifo(dir.path("openssl.cnf"), 0o600) == 0)
        let environment = CofferProcess.environment(in: dir.url, ["OPENSSL_CONF": dir.path("openssl.cnf")])
        for args in [
            ["seal", "--to", "keys/alice.pub", "-o", "plain.cfs", "plain.bin"],
            ["unseal", "--identity", "keys/alice.key", "-o", "out.bin", "plain.cfs"],
        ] {
            let run = try BackgroundCoffer(args, in: dir.url, environment: environment).finish(within: 60)
            #expect(run.status == 0, "\(args[0]): \(run.status) \(run.stderr)")
        }
        #expect(try dir.read("out.bin") == plain)
    }

    @Test func rangeReadEqualsTheSlice() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        let plain = randomData(200_000)
        try dir.write("plain.bin", plain)
        _ = try CofferProcess.run(["seal", "--to", "keys/alice.pub", "--chunk-size", "4K", "-o", "plain.cfs", "plain.bin"], in: dir.url)
        for (range, slice) in [("1000:50000", 1000..<50000), (":10", 0..<10), ("199990:", 199_990..<200_000), ("5:5", 5..<5)] {
            let result = try CofferProcess.run(["unseal", "--identity", "keys/alice.key", "--range", range, "-o", "-", "plain.cfs"], in: dir.url)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == plain.subdata(in: slice), "range \(range)")
        }
        let outside = try CofferProcess.run(["unseal", "--identity", "keys/alice.key", "--range", "0:200001", "-o", "-", "plain.cfs"], in: dir.url)
        expectFailure(outside, "range 0:200001 out of bounds for 200000 plaintext bytes")
        let piped = try CofferProcess.run(
            ["unseal", "--identity", "keys/alice.key", "--range", "0:1", "-o", "-", "-"],
            in: dir.url,
            stdin: try dir.read("plain.cfs")
        )
        expectFailure(piped, "--range needs a regular file")
    }

    @Test func errorsAreOneLineAndLeaveNoOutput() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.keygen("bob")
        let plain = randomData(20_000)
        try dir.write("plain.bin", plain)
        _ = try CofferProcess.run(["seal", "--to", "keys/alice.pub", "--chunk-size", "4K", "-o", "good.cfs", "plain.bin"], in: dir.url)
        let good = try dir.read("good.cfs")
        let headerLength = 30 + 92 + 32
        func unseal(_ file: String, identity: String = "keys/alice.key", passphrase: String? = "test passphrase") throws -> CofferProcess.Output {
            try CofferProcess.run(["unseal", "--identity", identity, "-o", "out.bin", file], in: dir.url, passphrase: passphrase)
        }

        expectFailure(try unseal("good.cfs", passphrase: "wrong"), "wrong passphrase")
        expectFailure(try unseal("good.cfs", passphrase: nil), "no passphrase: set COFFER_PASSPHRASE")
        expectFailure(try unseal("missing.cfs"), "missing.cfs: No such file or directory")
        expectFailure(try unseal("plain.bin"), "not a Coffer sealed file")
        expectFailure(try unseal("good.cfs", identity: "keys/bob.key"), "not a recipient")
        expectFailure(try unseal("good.cfs", identity: "keys/alice.pub"), "is not a Coffer identity file")

        var version = good
        version[8] = 9
        try dir.write("version.cfs", version)
        expectFailure(try unseal("version.cfs"), "unsupported sealed-file version 9")

        var flipped = good
        flipped[headerLength + (4096 + 16) * 2 + 10] ^= 0x20
        try dir.write("flipped.cfs", flipped)
        expectFailure(try unseal("flipped.cfs"), "authentication failed at chunk 2")

        try dir.write("truncated.cfs", good.prefix(headerLength + (4096 + 16) * 3))
        expectFailure(try unseal("truncated.cfs"), "truncated file: chunk 2 is not the final chunk")

        #expect(!dir.exists("out.bin"))
        #expect(!dir.entries.contains { $0.contains("coffer-tmp") }, "temporary files left: \(dir.entries)")
    }

    /// Neither plaintext nor a sealed file is printed to a terminal (`script` gives the command one, as a user's shell
    /// would): refused before any work with one line, and nothing of the file reaches the terminal.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script") && FileManager.default.fileExists(atPath: "/dev/ptmx")))
    func sealAndUnsealRefuseToPrintToATerminal() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        let plain = Data((0..<6000).map { UInt8(65 + $0 % 26) })
        try dir.write("plain.txt", plain)
        #expect(try CofferProcess.run(["seal", "--to", "keys/alice.pub", "-o", "good.cfs", "plain.txt"], in: dir.url).status == 0)
        for (arguments, refusal) in [
            ("seal --to keys/alice.pub -o - plain.txt", "-o - would print the sealed file (binary) to a terminal: pipe or redirect it"),
            ("unseal --identity keys/alice.key -o - good.cfs", "-o - would print the plaintext to a terminal: pipe or redirect it"),
            ("unseal --identity keys/alice.key -o /dev/tty good.cfs", "/dev/tty is a terminal: the plaintext is not printed to one"),
        ] {
            let command = "cd '\(dir.url.path)' && '\(CofferProcess.binary)' \(arguments)"
            let run = try ProgramRun.run("/usr/bin/script", ["-qec", command, "/dev/null"], environment: CofferProcess.environment(in: dir.url))
            let shown = run.stdoutText.replacingOccurrences(of: "\r\n", with: "\n")
            #expect(run.status == 1 && shown.hasPrefix("coffer: \(refusal)"), "\(arguments): \(shown)")
            #expect(shown.split(separator: "\n").count == 1 && !shown.contains("ABCDEFGHIJ"), "\(arguments): \(shown)")
        }
        // Through a pipe it still flows.
        let piped = try CofferProcess.run(["unseal", "--identity", "keys/alice.key", "-o", "-", "good.cfs"], in: dir.url)
        #expect(piped.status == 0 && piped.stdout == plain, "\(piped.stderr)")
    }

    /// An argument that is not UTF-8 (a Latin-1 file name) is refused: Swift would have mended it into another name,
    /// and the sealed file would have been written there.
    @Test func anArgumentThatIsNotUTF8IsRefusedNotMended() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.write("plain.txt", Data("plain".utf8))
        let command = #"cd "$0" && exec "$1" seal --to keys/alice.pub -o "$(printf 'caf\351.cfs')" plain.txt"#
        let run = try ProgramRun.run("/bin/sh", ["-c", command, dir.url.path, CofferProcess.binary])
        expectFailure(run, "coffer: argument 5 is not UTF-8 (caf\u{FFFD}.cfs): Coffer reads names and paths as UTF-8")
        #expect(!dir.entries.contains { $0.hasSuffix(".cfs") }, "\(dir.entries)")
    }

    @Test func emptyPassphraseFileIsRefused() throws {
        let dir = try Scratch()
        try dir.write("empty", Data("\n".utf8))
        chmod(dir.path("empty"), 0o600)
        let result = try CofferProcess.run(["keygen", "--out", "k/a", "--passphrase-file", "empty"], in: dir.url, passphrase: nil)
        expectFailure(result, "the passphrase is empty")
        #expect(!dir.exists("k/a.key"))
    }

    @Test func aWeakNewPassphraseIsRefusedUnlessAcceptedAndThenWarned() throws {
        let dir = try Scratch()
        let refused = try CofferProcess.run(["keygen", "--out", "k/a"], in: dir.url, passphrase: "password1")
        expectFailure(refused, "the new passphrase is weak (shorter than 12 characters): choose a longer one, or pass --accept-weak-passphrase")
        #expect(!dir.exists("k/a.key"))
        let digits = try CofferProcess.run(["init", "--home", "home"], in: dir.url, passphrase: "123456789012")
        expectFailure(digits, "the new passphrase is weak (about 39 bits by its length and character classes, under 48)")
        #expect(!dir.exists("home/registry.key"))
        let accepted = try CofferProcess.run(["keygen", "--out", "k/a", "--accept-weak-passphrase"], in: dir.url, passphrase: "password1")
        #expect(accepted.status == 0 && dir.exists("k/a.key"))
        #expect(accepted.stderr == "coffer: warning: the new passphrase is weak (shorter than 12 characters); accepted as asked\n")
    }

    @Test func overlongPassphraseIsRefusedNotTruncated() throws {
        let dir = try Scratch()
        let result = try CofferProcess.run(["keygen", "--out", "k/a"], in: dir.url, passphrase: String(repeating: "x", count: 5000))
        expectFailure(result, "the passphrase is longer than 4096 bytes")
        #expect(!dir.exists("k/a.key"))
    }

    @Test func interruptedUnsealLeavesNoTemporaryFile() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.write("plain.bin", randomData(100_000))
        _ = try CofferProcess.run(["seal", "--to", "keys/alice.pub", "--chunk-size", "4K", "-o", "plain.cfs", "plain.bin"], in: dir.url)
        let sealed = try dir.read("plain.cfs")
        // Feed half the file through a FIFO and hold it open: unseal blocks mid-stream with its temporary file open.
        #expect(mkfifo(dir.path("fifo"), 0o600) == 0)
        let unseal = try BackgroundCoffer(
            ["unseal", "--identity", "keys/alice.key", "-o", "out.bin", "fifo"],
            in: dir.url,
            environment: CofferProcess.environment(in: dir.url)
        )
        let writer = try FileHandle(forWritingTo: dir.url.appendingPathComponent("fifo"))
        writer.write(sealed.prefix(sealed.count / 2))
        var waited = 0
        while !dir.entries.contains(where: { $0.contains("coffer-tmp") }) && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        #expect(dir.entries.contains { $0.contains("coffer-tmp") }, "unseal should be writing its temporary file")
        let ended = unseal.terminate()
        try writer.close()
        #expect(ended.status == 128 + SIGTERM)
        #expect(!dir.entries.contains { $0.contains("coffer-tmp") }, "left: \(dir.entries)")
        #expect(!dir.exists("out.bin"))
    }

    @Test func attestationSignAndVerify() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.keygen("bob")
        try dir.write("model.bin", randomData(5000))
        let sign = try CofferProcess.run(["attestation", "sign", "--identity", "keys/alice.key", "-o", "model.dsse.json", "model.bin"], in: dir.url)
        #expect(sign.status == 0, "\(sign.stderr)")
        let verify = try CofferProcess.run(["attestation", "verify", "--trust", "keys/alice.pub", "model.dsse.json", "model.bin"], in: dir.url)
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdoutText.contains("signed by alice"))
        let untrusted = try CofferProcess.run(["attestation", "verify", "--trust", "keys/bob.pub", "model.dsse.json"], in: dir.url)
        expectFailure(untrusted, "is not trusted")
        try dir.write("model.bin", randomData(5000))
        let changed = try CofferProcess.run(["attestation", "verify", "--trust", "keys/alice.pub", "model.dsse.json", "model.bin"], in: dir.url)
        expectFailure(changed, "model.bin does not match its signed SHA-256")
    }
}
