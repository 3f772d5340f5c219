import CofferTestSupport
import Foundation
import Testing

/// `share` and `unshare` through the built binary: the user stories of issue 20, as the user sees them.
@Suite(.ownThread)
struct ShareCommandTests {
    private func coffer(_ args: [String], _ dir: Scratch) throws -> CofferProcess.Output {
        try CofferProcess.run(args + ["--home", dir.path("home")], in: dir.url)
    }

    /// A registry owned by alice with bob and carol as principals holding nothing, and icu/mortality:1 pushed by alice.
    private func setUp() throws -> Scratch {
        let dir = try Scratch()
        for name in ["alice", "bob", "carol"] { try dir.keygen(name) }
        #expect(try coffer(["init", "--owner", "keys/alice.pub"], dir).status == 0)
        for name in ["bob", "carol"] {
            #expect(try coffer(["principal", "add", name, "keys/\(name).pub", "--identity", "keys/alice.key"], dir).status == 0)
        }
        try FileManager.default.createDirectory(atPath: dir.path("v1"), withIntermediateDirectories: true)
        try dir.write("v1/weights.bin", Data("version one weights".utf8))
        let push = try coffer(["push", "icu/mortality", "v1", "--identity", "keys/alice.key"], dir)
        #expect(push.status == 0 && !push.stderr.contains("warning"), "\(push.stderr)")
        return dir
    }

    @Test func sharingForPullReachesFutureVersionsAndUnshareEndsEverything() throws {
        let dir = try setUp()
        // Before sharing: one line, non-zero, nothing written.
        expectFailure(
            try coffer(["pull", "icu/mortality", "--identity", "keys/bob.key", "--out", "early"], dir),
            "bob lacks the reader role on icu/mortality"
        )
        #expect(!dir.exists("early/weights.bin"))

        let share = try coffer(["share", "icu/", "bob", "--pull", "--identity", "keys/alice.key"], dir)
        #expect(share.status == 0, "\(share.stderr)")
        #expect(share.stdoutText.contains("granted reader and decrypt on icu/ to bob"))
        #expect(share.stdoutText.contains("wrapped the data key of 1 versions for bob"))
        let first = try coffer(["pull", "icu/mortality:1", "--identity", "keys/bob.key", "--out", "b1"], dir)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(try dir.read("b1/weights.bin") == Data("version one weights".utf8))

        // A later version: bob pulls it with no further step.
        try FileManager.default.createDirectory(atPath: dir.path("v2"), withIntermediateDirectories: true)
        try dir.write("v2/weights.bin", Data("version two weights".utf8))
        #expect(try coffer(["push", "icu/mortality", "v2", "--identity", "keys/alice.key"], dir).status == 0)
        let second = try coffer(["pull", "icu/mortality", "--identity", "keys/bob.key", "--out", "b2"], dir)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try dir.read("b2/weights.bin") == Data("version two weights".utf8))

        #expect(
            try coffer(["token", "create", "--principal", "bob", "--scope", "read", "--ttl", "1d", "--identity", "keys/alice.key"], dir).status == 0
        )
        let unshare = try coffer(["unshare", "bob", "--identity", "keys/alice.key"], dir)
        #expect(unshare.status == 0, "\(unshare.stderr)")
        let said = unshare.stdoutText
        #expect(said.contains("unshared every model from bob:"))
        #expect(
            said.contains("grants revoked: reader on icu/, decrypt on icu/") || said.contains("grants revoked: decrypt on icu/, reader on icu/"),
            "\(said)"
        )
        #expect(said.contains("tokens revoked: ") && !said.contains("tokens revoked: none"), "\(said)")
        #expect(said.contains("wrapped keys removed: icu/mortality:1, icu/mortality:2"), "\(said)")
        #expect(said.contains("to rekey (bob could decrypt them): icu/mortality:1, icu/mortality:2"), "\(said)")
        let tokens = try coffer(["token", "list"], dir)
        #expect(tokens.stdoutText.contains("bob  read  revoked "), "\(tokens.stdoutText)")

        // Present and future: nothing opens for bob.
        expectFailure(try coffer(["pull", "icu/mortality:1", "--identity", "keys/bob.key", "--out", "late"], dir), "bob lacks the reader role")
        try FileManager.default.createDirectory(atPath: dir.path("v3"), withIntermediateDirectories: true)
        try dir.write("v3/weights.bin", Data("version three".utf8))
        #expect(try coffer(["push", "icu/mortality", "v3", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["grant", "bob", "reader", "--on", "icu/", "--identity", "keys/alice.key"], dir).status == 0)
        expectFailure(try coffer(["pull", "icu/mortality:3", "--identity", "keys/bob.key", "--out", "late"], dir), "bob lacks the decrypt role")
        #expect(!dir.exists("late/weights.bin"))

        // What bob did, from the audit log: his pulls, the refused ones included, and nothing else.
        let filtered = try coffer(["audit", "--principal", "bob", "--action", "pull", "--model", "icu/", "--since", "1h", "--json"], dir)
        #expect(filtered.status == 0, "\(filtered.stderr)")
        let pulls = try JSONSerialization.jsonObject(with: filtered.stdout) as? [[String: Any]] ?? []
        #expect(pulls.map { $0["outcome"] as? String } == ["refused", "ok", "ok", "refused", "refused"], "\(pulls)")
        #expect(pulls.allSatisfy { $0["principal"] as? String == "bob" && $0["action"] as? String == "pull" })
        let none = try coffer(["audit", "--model", "other/", "--json"], dir)
        #expect(none.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "\(none.stdoutText)")
        expectFailure(try coffer(["audit", "--since", "yesterday"], dir), "is not an RFC 3339 time")

        // Rekey on the way out: the versions carol could open are re-encrypted and listed.
        #expect(try coffer(["share", "icu/mortality", "carol", "--pull", "--identity", "keys/alice.key"], dir).status == 0)
        let rekeyed = try coffer(["unshare", "carol", "icu/mortality", "--rekey", "--identity", "keys/alice.key"], dir)
        #expect(rekeyed.status == 0, "\(rekeyed.stderr)")
        #expect(rekeyed.stdoutText.contains("re-encrypted: icu/mortality:1, icu/mortality:2, icu/mortality:3"), "\(rekeyed.stdoutText)")
        #expect(!rekeyed.stdoutText.contains("to rekey"))
        let pulled = try coffer(["pull", "icu/mortality:2", "--identity", "keys/alice.key", "--out", "a2"], dir)
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(try dir.read("a2/weights.bin") == Data("version two weights".utf8))
    }

    /// `coffer serve` over the scratch registry on a port the system picks, until `body` returns; the registry key
    /// stays with it.
    private func serving<R>(_ dir: Scratch, _ body: (String) throws -> R) throws -> R {
        let server = try BackgroundCoffer(
            ["serve", "--home", dir.path("home"), "--listen", "127.0.0.1:0"],
            in: dir.url,
            environment: CofferProcess.environment(in: dir.url, ["COFFER_STATE_DIR": dir.path(".server-state")])
        )
        defer { _ = server.terminate() }
        let url = try #require(server.waitForListeningURL("coffer: serving", seconds: 60), "\(server.stderrSoFar)")
        return try body(url)
    }

    @Test func anInferenceOnlyGrantForADayAndAHundredPredictions() throws {
        let dir = try setUp()
        #expect(try CofferProcess.run(["synth", "--rows", "400", "--features", "4", "--classes", "3", "--out", "data"], in: dir.url).status == 0)
        let train = try CofferProcess.run(["train", "--config", "data/recipe.json", "--out", "ckpt"], in: dir.url)
        #expect(train.status == 0, "\(train.stderr)")
        #expect(try coffer(["push", "icu/risk", "ckpt", "--identity", "keys/alice.key"], dir).status == 0)
        // Five rows, and a file with a column missing.
        let lines = String(decoding: try dir.read("data/data.csv"), as: UTF8.self).split(separator: "\n")
        try dir.write("five.csv", Data((lines.prefix(6).joined(separator: "\n") + "\n").utf8))
        let header = lines[0].split(separator: ",")
        try dir.write("bad.csv", Data("\(header[0])\n1.0\n".utf8))

        let share = try coffer(
            ["share", "icu/risk", "carol", "--infer", "--ttl", "1d", "--max-predictions", "100", "--identity", "keys/alice.key"],
            dir
        )
        #expect(share.status == 0, "\(share.stderr)")
        #expect(share.stdoutText.contains("granted inference on icu/risk to carol"))
        #expect(share.stdoutText.contains("limits: sessions of at most 86400 s, 100 predictions in all"), "\(share.stdoutText)")
        let principals = try coffer(["principal", "list"], dir)
        #expect(principals.stdoutText.contains("inference on icu/risk (sessions <= 86400 s, <= 100 predictions)"), "\(principals.stdoutText)")
        let minted = try coffer(["token", "create", "--principal", "carol", "--scope", "infer", "--ttl", "1d", "--identity", "keys/alice.key"], dir)
        let token = minted.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("cft_"), "\(minted.stderr)")

        // carol may not pull; locally she holds no key, so her sessions are the server's.
        expectFailure(try coffer(["pull", "icu/risk", "--identity", "keys/carol.key", "--out", "stolen"], dir), "carol lacks the reader role")
        expectFailure(
            try coffer(["session", "open", "icu/risk", "--identity", "keys/carol.key", "--ttl", "1h"], dir),
            "carol holds no key for icu/risk:1: an inference grant opens sessions through coffer serve"
        )
        try serving(dir) { url in
            let remote = ["--registry", url, "--token", token]
            func carol(_ args: [String]) throws -> CofferProcess.Output { try CofferProcess.run(args + remote, in: dir.url) }
            // `serve` says "serving" once its socket takes connections.
            let tooLong = try carol(["session", "open", "icu/risk", "--ttl", "365d"])
            expectFailure(tooLong, "carol's inference grant allows sessions of at most 86400 s")
            let open = try carol(["session", "open", "icu/risk", "--ttl", "1d"])
            #expect(open.status == 0, "\(open.stderr)")
            let session = open.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)

            // A 5-row CSV spends 5 of the 100; a failed prediction spends nothing and is audited as failed.
            let five = try carol(["infer", "--session", session, "--input", "five.csv", "--json"])
            #expect(five.status == 0, "\(five.stderr)")
            let failed = try carol(["infer", "--session", session, "--input", "bad.csv"])
            #expect(failed.status == 1 && failed.stdout.isEmpty, "\(failed.stderr)")
            let listed = try coffer(["session", "list", "--json"], dir)
            #expect(listed.stdoutText.contains("\"uses\":5") && listed.stdoutText.contains("\"maxUses\":100"), "\(listed.stdoutText)")
            // 400 rows do not fit in the 95 left: refused, nothing printed, nothing spent.
            let big = try carol(["infer", "--session", session, "--input", "data/data.csv"])
            expectFailure(big, "has 95 of its 100 uses left, and this call needs 400")
            #expect(big.stdout.isEmpty)
            // A second session while the first holds the rest of the grant: nothing left to give it.
            expectFailure(try carol(["session", "open", "icu/risk", "--ttl", "1h"]), "carol's inference grant on icu/risk has no predictions left")
        }
        let audit = try coffer(["audit", "--principal", "carol", "--action", "infer", "--json"], dir)
        let infers = try JSONSerialization.jsonObject(with: audit.stdout) as? [[String: Any]] ?? []
        #expect(infers.map { $0["outcome"] as? String }.suffix(3) == ["ok", "failed", "refused"], "\(infers)")
        #expect(infers.contains { ($0["reason"] as? String)?.contains("5 predictions") == true }, "\(infers)")
    }

    @Test func badSharesAreOneLineAndPushWarnsOfAnUntrustedSigner() throws {
        let dir = try setUp()
        expectFailure(try coffer(["share", "icu/", "bob", "--identity", "keys/alice.key"], dir), "give one of --pull or --infer")
        expectFailure(
            try coffer(["share", "icu/", "bob", "--pull", "--max-predictions", "5", "--identity", "keys/alice.key"], dir),
            "--ttl and --max-predictions limit inference"
        )
        expectFailure(try coffer(["share", "icu/", "bob", "--infer", "--ttl", "2x", "--identity", "keys/alice.key"], dir), "invalid duration '2x'")
        expectFailure(try coffer(["share", "icu/", "dave", "--pull", "--identity", "keys/alice.key"], dir), "dave")
        expectFailure(try coffer(["share", "icu/", "carol", "--pull", "--identity", "keys/bob.key"], dir), "bob lacks the admin role")
        expectFailure(try coffer(["unshare", "dave", "--identity", "keys/alice.key"], dir), "dave")
        // bob may publish but nobody trusts his key: the push succeeds and says what will happen at pull.
        #expect(try coffer(["grant", "bob", "publisher", "--on", "lab/", "--identity", "keys/alice.key"], dir).status == 0)
        try dir.write("v1/more.bin", Data("more".utf8))
        let push = try coffer(["push", "lab/x", "v1", "--identity", "keys/bob.key"], dir)
        #expect(push.status == 0, "\(push.stderr)")
        #expect(push.stderr.contains("warning: bob") && push.stderr.contains("is not a trusted signer"), "\(push.stderr)")
    }
}
