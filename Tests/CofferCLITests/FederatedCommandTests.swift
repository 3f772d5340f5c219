import CofferTestSupport
import Foundation
import Testing

/// `coffer fl serve` and several `coffer fl join` as real processes on loopback.
@Suite(.ownThread)
struct FederatedCommandTests {
    /// A `coffer` process left running in `directory`, with the test passphrase.
    static func background(_ args: [String], in directory: URL, environment extra: [String: String] = [:]) throws -> BackgroundCoffer {
        try BackgroundCoffer(args, in: directory, environment: CofferProcess.environment(in: directory, extra))
    }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Keys for a coordinator and `sites` sites, their CSV shards of the RAND data, and a recipe.
    static func prepare(_ dir: Scratch, sites: Int, rows: Int = 600) throws {
        for name in ["coordinator"] + (0..<sites).map({ "site\($0)" }) { try dir.keygen(name) }
        let lines = try String(contentsOf: repository.appendingPathComponent("data/randhie.csv"), encoding: .utf8).split(separator: "\n")
        for s in 0..<sites {
            let shard = [lines[0]] + stride(from: 1 + s, to: lines.count, by: sites).prefix(rows).map { lines[$0] }
            try dir.write("site\(s).csv", Data((shard.joined(separator: "\n") + "\n").utf8))
        }
        try dir.write("recipe.json", Data(recipe(epochs: 1).utf8))
    }

    static func recipe(epochs: Int) -> String {
        """
        {"data": "unused.csv", "features": ["lncoins", "idp", "lpi", "fmde", "disea"],
         "tasks": [{"name": "health", "kind": "classification", "one_hot": ["hlthg", "hlthf", "hlthp"]},
                   {"name": "limited", "kind": "binary", "column": "physlm", "threshold": 0.5}],
         "trunk": [16], "epochs": \(epochs), "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.9, "expected_batch_size": 64,
         "privacy": false, "seed": 3}
        """
    }

    static func join(_ dir: Scratch, site: Int, coordinator: String, recipe: String = "recipe.json", extra: [String] = []) throws -> BackgroundCoffer
    {
        try Self.background(
            [
                "fl", "join", "--coordinator", coordinator, "--coordinator-key", "keys/coordinator.pub", "--recipe", recipe,
                "--data", "site\(site).csv", "--identity", "keys/site\(site).key",
            ] + extra,
            in: dir.url
        )
    }

    @Test func aCoordinatorAndFourSiteProcessesFederateAndPushEveryRound() throws {
        let dir = try Scratch()
        try Self.prepare(dir, sites: 4)
        let home = dir.path("registry")
        let initialised = try CofferProcess.run(["init", "--home", home, "--owner", "keys/coordinator.pub"], in: dir.url)
        #expect(initialised.status == 0, "\(initialised.stderr)")
        _ = try CofferProcess.run(["trust", "add", "keys/coordinator.pub", "--identity", "keys/coordinator.key", "--home", home], in: dir.url)
        // The coordinator's temporary directory is a file, so that anything written there fails (root ignores modes):
        // no global model passes through it.
        let temporary = dir.path("not-a-directory")
        try dir.write("not-a-directory", Data())
        let serve = try Self.background(
            [
                "fl", "serve", "--recipe", "recipe.json", "--identity", "keys/coordinator.key", "--listen", "127.0.0.1:0",
                "--rounds", "3", "--clip-norm", "1", "--noise-multiplier", "2", "--nonprivate-statistics", "--train-timeout", "2",
                "--push", "fl/health", "--push-every-round", "--home", home, "--json",
            ] + (0..<4).flatMap { ["--site", "keys/site\($0).pub"] },
            in: dir.url,
            environment: ["TMPDIR": temporary]
        )
        let coordinator = try #require(serve.waitForListeningURL("coffer fl: coordinating", seconds: 60), "\(serve.stderrSoFar)")
        // Three sites take part; the fourth joins and is then stopped: it never answers, and times out every round.
        let sites = try (0..<3).map { try Self.join(dir, site: $0, coordinator: coordinator, extra: ["--rounds", "3"]) }
        let silent = try Self.join(dir, site: 3, coordinator: coordinator)
        let start = Date()
        while !serve.stderrSoFar.contains("joined: 4 of 4") && Date() < start + 30 { usleep(20_000) }
        kill(silent.pid, SIGSTOP)
        let served = serve.finish(within: 120)
        kill(silent.pid, SIGKILL)
        _ = silent.finish(within: 5)
        #expect(served.status == 0, "\(served.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: served.stdout) as? [String: Any], "\(served.stdoutText)")
        #expect(report["aggregated"] as? Int == 3)
        #expect(report["mechanism"] as? String == "dp-fedavg")
        #expect((report["rounds"] as? [[String: Any]])?.map { $0["sites"] as? Int } == [3, 3, 3])
        #expect(served.stderr.contains("no advertise answer within 2 s from"))
        #expect(!served.stderr.contains("error"), "\(served.stderr)")
        for site in sites {
            let output = site.finish(within: 30)
            #expect(output.status == 0, "\(output.stderr)")
            #expect(output.stdoutText.contains("federation over: 3 rounds, 3 aggregated; this site trained in 3 rounds"), "\(output.stdoutText)")
        }
        // Three versions, each the child of the one before, with the site-level claim and the participants.
        let log = try CofferProcess.run(["log", "fl/health", "--home", home, "--json"], in: dir.url)
        let versions = try #require(try JSONSerialization.jsonObject(with: log.stdout) as? [[String: Any]], "\(log.stderr)")
        #expect(versions.map { $0["version"] as? String } == ["3", "2", "1"])
        #expect(versions.map { $0["parent"] as? String } == ["fl/health:2", "fl/health:1", nil])
        let last = versions[0]
        #expect(last["mechanism"] as? String == "dp-fedavg")
        #expect(last["privacy_unit"] as? String == "site")
        #expect(last["steps"] as? Int == 3)
        #expect(last["noise_multiplier"] as? Double == 2)
        #expect(last["clipping_norm"] as? Double == 1)
        #expect(abs((last["epsilon"] as? Double ?? 0) - (report["epsilon"] as? Double ?? -1)) < 1e-9)
        // Under DP the version does not say which sites a round sampled, nor how many: amplification by sampling needs
        // the sample kept secret.
        let tags = last["tags"] as? [String: String] ?? [:]
        #expect(tags["fl_sites"] == "4" && tags["fl_sites_per_round"] == nil && tags["fl_sampled"] == nil, "\(tags)")
        // Its standardisation came from exact sums released without DP (--nonprivate-statistics), and it says so, signed.
        #expect(last["standardisation"] as? String == "nonprivate" && last["batch_sampling"] as? String == "secret", "\(last)")
        let message = last["message"] as? String ?? ""
        #expect(message.hasSuffix("the sampled sites are not named (DP-FedAvg's guarantee needs the sample kept secret)"), "\(message)")
        #expect(!message.contains("key IDs"), "\(message)")
        let verified = try CofferProcess.run(["verify", "fl/health:3", "--home", home], in: dir.url)
        #expect(verified.status == 0, "\(verified.stderr)")
        // Pushed from memory: the checkpoint's two files (and the model-signing bundle pull adds).
        let pulled = try CofferProcess.run(
            ["pull", "fl/health:3", "--identity", "keys/coordinator.key", "--home", home, "--out", "pulled"],
            in: dir.url
        )
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: dir.path("pulled")).sorted() == ["model.safetensors", "model.sig", "privacy.json"]
        )
        let privacy = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: dir.url.appendingPathComponent("pulled/privacy.json"))) as? [String: Any]
        )
        #expect(privacy["mechanism"] as? String == "dp-fedavg")
    }

    /// `fl simulate --data` splits the user's training data into a scratch folder; an interrupt removes it with the
    /// split rows (helper-41: they stayed in $TMPDIR).
    /// The split training data lives only while it is read: its folder is gone while the simulation runs. A file of
    /// the user's named like it (here the data itself) is not taken for a leftover.
    @Test func theSplitDataGoesOnceReadAndNothingOfTheUsersWithIt() throws {
        let dir = try Scratch()
        try Self.prepare(dir, sites: 1, rows: 2000)
        try FileManager.default.createDirectory(atPath: dir.path("tmp"), withIntermediateDirectories: true)
        try dir.write("tmp/coffer-fl-sim-data.csv", try dir.read("site0.csv"))
        let simulate = try BackgroundCoffer(
            ["fl", "simulate", "--recipe", "recipe.json", "--data", "tmp/coffer-fl-sim-data.csv", "--sites", "3", "--rounds", "500"],
            in: dir.url,
            environment: CofferProcess.environment(in: dir.url, ["TMPDIR": dir.path("tmp")])
        )
        func left() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: dir.path("tmp"))) ?? ["unreadable"] }
        let deadline = Date() + 60
        while left() != ["coffer-fl-sim-data.csv"], simulate.status == nil, Date() < deadline { usleep(10_000) }
        #expect(left() == ["coffer-fl-sim-data.csv"] && simulate.status == nil, "\(left()) \(simulate.stderrSoFar)")
        let ended = simulate.terminate(with: SIGINT, within: 20)
        #expect(ended.status == 128 + SIGINT, "\(ended.stderr)")
        #expect(left() == ["coffer-fl-sim-data.csv"])
    }

    /// With no folder to split the data into, one line says so.
    @Test func aMissingTemporaryDirectoryIsOneLine() throws {
        let dir = try Scratch()
        try Self.prepare(dir, sites: 1, rows: 100)
        let simulate = try CofferProcess.run(
            ["fl", "simulate", "--recipe", "recipe.json", "--data", "site0.csv", "--sites", "3", "--rounds", "1"],
            in: dir.url,
            environment: ["TMPDIR": dir.path("missing")]
        )
        expectFailure(simulate, "cannot create directory: No such file or directory")
    }

    /// Without OpenSSL 3's ChaCha20 (a libcrypto.so.3 that does not load, one that loads but is not OpenSSL 3's, with no
    /// EVP_CIPHER_fetch, and one whose EVP_CIPHER_fetch finds no ChaCha20, the last two built here with a C compiler:
    /// $CC, else clang, as the Swift toolchain has one, else cc), secure aggregation's masks come from libsodium's
    /// ChaCha20, the same bytes (MaskExpanderTests): a simulation runs its round to the end and evaluates the model, as
    /// with OpenSSL. Coordinators and sites refused to start without it while a failure later ended the process.
    @Test(.enabled(if: cCompiler != nil, "no C compiler ($CC, clang or cc) to build a fake libcrypto with"))
    func withoutOpenSSLsChaCha20TheFederationRunsOnLibsodium() throws {
        let dir = try Scratch()
        try Self.prepare(dir, sites: 3, rows: 100)
        let fakes: [String: String?] = [
            "not-a-library": nil,
            "old": "int OPENSSL_init_crypto(void) { return 1; }",
            "no-chacha": """
            #include <stddef.h>
            #include <string.h>
            void *OSSL_LIB_CTX_new(void) { static int context; return &context; }
            const void *EVP_CIPHER_fetch(void *context, const char *name, const char *properties) { return NULL; }
            unsigned long ERR_get_error(void) { return 42; }
            void ERR_error_string_n(unsigned long code, char *out, size_t size) { strncpy(out, "fake provider: no ChaCha20", size); }
            void *EVP_CIPHER_CTX_new(void) { return NULL; }
            void EVP_CIPHER_CTX_free(void *ctx) {}
            int EVP_EncryptInit_ex(void *ctx, const void *cipher, void *engine, const unsigned char *key, const unsigned char *iv) { return 0; }
            int EVP_EncryptUpdate(void *ctx, unsigned char *out, int *written, const unsigned char *in, int count) { return 0; }
            """,
        ]
        let arguments = [
            "fl", "simulate", "--recipe", "recipe.json", "--data", "site0.csv", "--sites", "3", "--rounds", "1", "--evaluate", "site1.csv", "--json",
        ]
        func metrics(_ run: CofferProcess.Output) throws -> [String: Double] {
            let report = try JSONSerialization.jsonObject(with: run.stdout) as? [String: Any]
            let rounds = report?["rounds"] as? [[String: Any]] ?? []
            #expect(report?["mode"] as? String == "secure" && rounds.count == 1 && rounds.first?["outcome"] as? String == "ok", "\(report ?? [:])")
            return report?["metrics"] as? [String: Double] ?? [:]
        }
        // With OpenSSL: the model its masks give (the masks cancel, and the recipe's seed fixes the rest).
        let withOpenSSL = try CofferProcess.run(arguments, in: dir.url)
        #expect(withOpenSSL.status == 0, "\(withOpenSSL.stderr)")
        let expected = try metrics(withOpenSSL)
        #expect(expected.count == 2, "\(expected)")
        for (name, source) in fakes {
            try FileManager.default.createDirectory(atPath: dir.path(name), withIntermediateDirectories: true)
            if let source {
                try dir.write("\(name)/fake.c", Data(source.utf8))
                let built = try ProgramRun.run(
                    "/usr/bin/env",
                    [try #require(cCompiler), "-shared", "-fPIC", "-o", dir.path("\(name)/libcrypto.so.3"), dir.path("\(name)/fake.c")]
                )
                try #require(built.status == 0, "\(built.stderr)")
            } else {
                try dir.write("\(name)/libcrypto.so.3", Data("not a shared library".utf8))
            }
            // In front of any search path the test run has, not in its place.
            let searchPath = ([dir.path(name)] + [ProcessInfo.processInfo.environment["LD_LIBRARY_PATH"]].compactMap { $0 })
            let simulate = try CofferProcess.run(arguments, in: dir.url, environment: ["LD_LIBRARY_PATH": searchPath.joined(separator: ":")])
            #expect(simulate.status == 0, "\(name): \(simulate.stderr)")
            #expect(try metrics(simulate) == expected, "\(name)")
        }
    }

    @Test func badSitesAreRefusedWithOneLineAndNothingIsPushed() async throws {
        let dir = try Scratch()
        try Self.prepare(dir, sites: 3, rows: 200)
        try dir.keygen("stranger")
        try dir.write("other.json", Data(Self.recipe(epochs: 2).utf8))
        let home = dir.path("registry")
        _ = try CofferProcess.run(["init", "--home", home, "--owner", "keys/coordinator.pub"], in: dir.url)
        let serve = try Self.background(
            [
                "fl", "serve", "--recipe", "recipe.json", "--identity", "keys/coordinator.key", "--listen", "127.0.0.1:0",
                "--rounds", "1", "--join-timeout", "8", "--push", "fl/never", "--home", home, "--client-timeout", "1",
            ] + (0..<3).flatMap { ["--site", "keys/site\($0).pub"] },
            in: dir.url
        )
        let coordinator = try #require(serve.waitForListeningURL("coffer fl: coordinating", seconds: 60), "\(serve.stderrSoFar)")
        // A join trickled a byte at a time (helper-47 held 600 such connections, 830 MB) is cut once its allowance, a
        // second plus one for each 1,024 bytes, runs out.
        let trickled = try await RawConnection.trickle(
            port: try #require(URLComponents(string: coordinator)?.port),
            head: "POST /v1/fl/join HTTP/1.1\r\nHost: x\r\nContent-Length: LENGTH\r\n\r\n",
            length: 100_000,
            chunk: 1,
            interval: 0.2,
            budget: 6
        )
        #expect(trickled.cut && trickled.seconds < 4, "\(trickled)")
        // Another recipe: refused at join. A key the coordinator never enrolled: refused. Two good sites are too few.
        let mismatched = try Self.join(dir, site: 2, coordinator: coordinator, recipe: "other.json").finish(within: 30)
        expectFailure(mismatched, "coffer: the coordinator refused: recipe mismatch: site ")
        try FileManager.default.copyItem(atPath: dir.path("site0.csv"), toPath: dir.path("stranger.csv"))
        let stranger = try Self.background(
            [
                "fl", "join", "--coordinator", coordinator, "--coordinator-key", "keys/coordinator.pub", "--recipe", "recipe.json",
                "--data", "stranger.csv", "--identity", "keys/stranger.key",
            ],
            in: dir.url
        ).finish(within: 30)
        expectFailure(stranger, "the coordinator refused: unknown site ")
        let good = try (0..<2).map { try Self.join(dir, site: $0, coordinator: coordinator) }
        let served = serve.finish(within: 60)
        #expect(served.status == 1)
        #expect(
            served.stderr.hasSuffix("coffer: invalid federation parameter: only 2 of 3 sites joined, at least 3 are needed\n"),
            "\(served.stderr)"
        )
        #expect(!served.stderr.contains("error"), "\(served.stderr)")
        for site in good {
            let output = site.finish(within: 30)
            #expect(
                output.stdoutText.contains("federation over: the federation did not start: invalid federation parameter: only 2 of 3 sites joined")
            )
        }
        let listed = try CofferProcess.run(["list", "--home", home, "--json"], in: dir.url)
        #expect(
            listed.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]" || listed.stdoutText.contains("[]"),
            "\(listed.stdoutText)"
        )
        // Bad command lines: one line each. A bad URL is named before a CA file is read, and http never reads one.
        let join = ["fl", "join", "--coordinator-key", "keys/coordinator.pub", "--recipe", "recipe.json", "--data", "site0.csv"]
        expectFailure(
            try CofferProcess.run(join + ["--identity", "keys/site0.key", "--coordinator", "ftp://x", "--ca-cert", "missing.pem"], in: dir.url),
            "the coordinator URL must be http://HOST:PORT or https://HOST:PORT, got ftp://x"
        )
        let plain = ["fl", "join", "--coordinator", "http://127.0.0.1:9", "--ca-cert", "missing.pem", "--coordinator-key", "keys/coordinator.pub"]
        expectFailure(
            try CofferProcess.run(plain + ["--recipe", "missing.json", "--data", "site0.csv", "--identity", "keys/site0.key"], in: dir.url),
            "missing.json"
        )
        expectFailure(
            try CofferProcess.run(
                [
                    "fl", "serve", "--recipe", "recipe.json", "--identity", "keys/coordinator.key", "--site", "keys/site0.pub", "--listen",
                    "0.0.0.0:9",
                ],
                in: dir.url
            ),
            "plain HTTP on 0.0.0.0 would expose the global model"
        )
        expectFailure(
            try CofferProcess.run(
                [
                    "fl", "simulate", "--recipe", "recipe.json", "--data", "site0.csv", "--plain", "--clip-norm", "1", "--noise-multiplier", "1",
                    "--nonprivate-statistics",
                ],
                in: dir.url
            ),
            "--plain runs FedAvg without DP: drop --clip-norm and --noise-multiplier"
        )
        expectFailure(
            try CofferProcess.run(
                ["fl", "serve", "--recipe", "recipe.json", "--identity", "keys/coordinator.key", "--site", "keys/site0.pub", "--threshold", "0.4"],
                in: dir.url
            ),
            "--threshold takes a count"
        )
        expectFailure(
            try CofferProcess.run(
                ["fl", "epsilon", "--sample-rate", "1.5", "--noise-multiplier", "1", "--rounds", "3", "--delta", "1e-5"],
                in: dir.url
            ),
            "sample rate must be in (0, 1]"
        )
    }
}

/// A C compiler on this machine: $CC, else clang (the Swift toolchain's), else cc; nil when there is none.
private let cCompiler: String? = {
    let environment = ProcessInfo.processInfo.environment
    let candidates = [environment["CC"]].compactMap { $0 } + ["clang", "cc"]
    let directories = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
    return candidates.first { name in
        name.hasPrefix("/")
            ? FileManager.default.isExecutableFile(atPath: name)
            : directories.contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(name)") }
    }
}()
