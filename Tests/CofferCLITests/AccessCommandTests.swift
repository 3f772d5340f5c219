import CofferTestSupport
import Foundation
import Testing

/// Principals, grants, sessions, `infer` and the audit log through the built binary.
@Suite(.ownThread)
struct AccessCommandTests {
    private func coffer(_ args: [String], _ dir: Scratch) throws -> CofferProcess.Output {
        try CofferProcess.run(args + ["--home", dir.path("home")], in: dir.url)
    }

    /// A registry owned by alice; bob may open sessions on `m/` through `prod`; a small trained checkpoint pushed
    /// by alice as m/risk with bob as a recipient.
    private func setUp() throws -> Scratch {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.keygen("bob")
        #expect(try coffer(["init", "--owner", "keys/alice.pub"], dir).status == 0)
        // The owner named at init is a trusted signer from the start.
        let trusted = try coffer(["trust", "add", "keys/alice.pub", "--identity", "keys/alice.key"], dir)
        #expect(trusted.status == 0 && trusted.stdoutText.contains("already trusted"), "\(trusted.stdoutText) \(trusted.stderr)")
        expectFailure(try coffer(["trust", "add", "keys/bob.pub", "--identity", "keys/bob.key"], dir), "is not a principal of this registry")
        #expect(try coffer(["principal", "add", "bob", "keys/bob.pub", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["grant", "bob", "inference", "--on", "m/", "--alias", "prod", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try CofferProcess.run(["synth", "--rows", "400", "--features", "4", "--classes", "3", "--out", "data"], in: dir.url).status == 0)
        let train = try CofferProcess.run(["train", "--config", "data/recipe.json", "--out", "ckpt"], in: dir.url)
        #expect(train.status == 0, "\(train.stderr)")
        let push = try coffer(["push", "m/risk", "ckpt", "--identity", "keys/alice.key", "--recipient", "keys/bob.pub", "--alias", "prod"], dir)
        #expect(push.status == 0, "\(push.stderr)")
        return dir
    }

    @Test func aSessionPredictsAsThePlaintextCheckpointDoes() throws {
        let dir = try setUp()
        // Uses count rows: the 400-row prediction takes 400, the export 1.
        let open = try coffer(["session", "open", "m/risk@prod", "--identity", "keys/bob.key", "--ttl", "10m", "--max-uses", "401"], dir)
        #expect(open.status == 0, "\(open.stderr)")
        let token = open.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("cfs_") && token.count == 68)
        let inferred = try coffer(["infer", "--session", token, "--input", "data/data.csv", "--json"], dir)
        #expect(inferred.status == 0, "\(inferred.stderr)")
        let plaintext = try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "data/data.csv", "--json"], in: dir.url)
        #expect(inferred.stdout == plaintext.stdout, "weights read in place from sodium memory predict exactly as the plaintext checkpoint")
        // Plaintext out of a session is a pull: the inference role alone does not release it (and spends no more uses).
        expectFailure(try coffer(["infer", "--session", token, "--raw", "--file", "model.safetensors"], dir), "bob lacks the reader role on m/risk")
        #expect(try coffer(["grant", "bob", "reader", "--on", "m/risk", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["grant", "bob", "decrypt", "--on", "m/risk", "--identity", "keys/alice.key"], dir).status == 0)
        let raw = try coffer(["infer", "--session", token, "--raw", "--file", "model.safetensors"], dir)
        #expect(raw.stdout == (try Data(contentsOf: dir.url.appendingPathComponent("ckpt/model.safetensors"))))
        expectFailure(try coffer(["infer", "--session", token, "--input", "data/data.csv"], dir), "has used all 401 of its uses")

        let list = try coffer(["session", "list", "--json"], dir)
        #expect(!list.stdoutText.contains(token) && list.stdoutText.contains("\"uses\":401"))
        let audit = try coffer(["audit", "--json"], dir)
        #expect(!audit.stdoutText.contains(token))
        let entries = try JSONSerialization.jsonObject(with: audit.stdout) as? [[String: Any]] ?? []
        // The export is its own action, not an inference.
        #expect(entries.filter { $0["action"] as? String == "infer" }.map { $0["outcome"] as? String } == ["ok", "refused"])
        #expect(entries.filter { $0["action"] as? String == "export" }.map { $0["outcome"] as? String } == ["refused", "ok"])
        #expect(try coffer(["audit", "sign"], dir).status == 0)
        let verified = try coffer(["audit", "verify"], dir)
        #expect(verified.stdoutText.contains("audit log ok") && verified.stdoutText.contains("0 not yet signed"), "\(verified.stdoutText)")
    }

    @Test func aModelFromElsewhereIsRefusedPlainlySpendsNothingAndExportsWithRaw() throws {
        let dir = try setUp()
        // scikit-learn weights saved as safetensors: not a Coffer checkpoint (no coffer.* metadata).
        let header = Data(#"{"coef":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}}"#.utf8)
        var file = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Data($0) }
        file += header + Data(count: 16)
        try FileManager.default.createDirectory(atPath: dir.path("sk"), withIntermediateDirectories: true)
        try dir.write("sk/weights.safetensors", file)
        #expect(
            try coffer(["push", "m/sk", "sk", "--identity", "keys/alice.key", "--recipient", "keys/bob.pub", "--alias", "prod"], dir).status == 0
        )
        #expect(try coffer(["grant", "bob", "reader", "--on", "m/sk", "--identity", "keys/alice.key"], dir).status == 0)
        #expect(try coffer(["grant", "bob", "decrypt", "--on", "m/sk", "--identity", "keys/alice.key"], dir).status == 0)
        let open = try coffer(["session", "open", "m/sk@prod", "--identity", "keys/bob.key", "--ttl", "10m", "--max-uses", "5"], dir)
        let token = open.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        expectFailure(
            try coffer(["infer", "--session", token, "--input", "data/data.csv"], dir),
            "m/sk:1 is not a Coffer checkpoint (a model.safetensors from coffer train or coffer fl, with its coffer.* metadata), the only kind infer runs: coffer infer --raw exports its plaintext, audited, to run it elsewhere"
        )
        #expect(try coffer(["session", "list", "--json"], dir).stdoutText.contains("\"uses\":0"), "the refused prediction spent nothing")
        let raw = try coffer(["infer", "--session", token, "--raw"], dir)
        #expect(raw.status == 0 && raw.stdout == file, "\(raw.stderr)")
        let entries =
            try JSONSerialization.jsonObject(with: try coffer(["audit", "--json", "--model", "m/sk"], dir).stdout) as? [[String: Any]] ?? []
        let outcomes = entries.compactMap { entry in (entry["action"] as? String).map { "\($0) \(entry["outcome"] as? String ?? "?")" } }
        #expect(outcomes.contains("infer failed") && outcomes.contains("export ok") && !outcomes.contains("infer ok"), "\(outcomes)")
    }

    /// A change request that is not one (a typo, a truncated paste, something else's text) is one line, before any
    /// key is unlocked; the approvals themselves are tested in ChangeRequestTests and tools/interop/test_web.py.
    @Test func aMalformedChangeRequestIsRefusedInOneLine() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        #expect(try coffer(["init", "--owner", "keys/alice.pub"], dir).status == 0)
        for text in ["cfr1.", "cfr1.@@@", "cft_" + String(repeating: "ab", count: 32)] {
            expectFailure(try coffer(["approve", text, "--identity", "keys/alice.key"], dir), "not a change request")
        }
        let truncated =
            "cfr1."
            + Data(#"{"payloadType":"application/vnd.coffer.request.v1+json","payload":"e30","signatures":[]}"#.utf8)
            .base64EncodedString().replacingOccurrences(of: "=", with: "").replacingOccurrences(of: "+", with: "-").replacingOccurrences(
                of: "/",
                with: "_"
            )
        expectFailure(try coffer(["approve", truncated, "--show"], dir), "not a change request")
    }

    @Test func refusalsAreOneLineAndNothingIsDecrypted() throws {
        let dir = try setUp()
        let short = try coffer(["session", "open", "m/risk@prod", "--identity", "keys/bob.key", "--ttl", "1s"], dir)
        let token = short.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        Thread.sleep(forTimeInterval: 1.2)
        expectFailure(try coffer(["infer", "--session", token, "--input", "data/data.csv"], dir), "expired at")
        expectFailure(try coffer(["infer", "--session", "cfs_0123", "--input", "data/data.csv"], dir), "malformed session token")
        expectFailure(
            try coffer(["infer", "--session", "cfs_" + String(repeating: "ab", count: 32), "--input", "data/data.csv"], dir),
            "unknown session token"
        )
        expectFailure(try coffer(["session", "open", "m/risk:1", "--identity", "keys/bob.key", "--ttl", "1m"], dir), "bob lacks the inference role")
        expectFailure(try coffer(["session", "open", "m/risk@prod", "--identity", "keys/bob.key", "--ttl", "soon"], dir), "invalid duration 'soon'")
        expectFailure(try coffer(["grant", "bob", "owner", "--identity", "keys/alice.key"], dir), "unknown role 'owner'")
        expectFailure(try coffer(["grant", "bob", "admin", "--identity", "keys/bob.key"], dir), "bob lacks the admin role")
        expectFailure(try coffer(["pull", "m/risk", "--identity", "keys/bob.key", "--out", "out"], dir), "bob lacks the reader role")
        #expect(!dir.exists("out/model.safetensors"))
    }
}
