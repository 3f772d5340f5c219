import CofferTestSupport
import Foundation
import Testing

/// Budgets, policies, rotation, recipients and erasure through the built binary, in a registry owned by alice.
@Suite(.ownThread)
struct GovernanceCommandTests {
    private func coffer(_ args: [String], _ dir: Scratch) throws -> CofferProcess.Output {
        try CofferProcess.run(args + ["--home", dir.path("home")], in: dir.url)
    }

    @Test func budgetPolicyRotationAndErasure() throws {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.keygen("bob")
        let admin = ["--identity", "keys/alice.key"]
        #expect(try coffer(["init", "--owner", "keys/alice.pub"], dir).status == 0)
        #expect(try coffer(["trust", "add", "keys/alice.pub"] + admin, dir).status == 0)
        #expect(try coffer(["principal", "add", "bob", "keys/bob.pub", "--role", "reader", "--role", "decrypt"] + admin, dir).status == 0)
        #expect(try CofferProcess.run(["synth", "--rows", "300", "--features", "3", "--out", "data"], in: dir.url).status == 0)
        #expect(try CofferProcess.run(["train", "--config", "data/recipe.json", "--out", "ckpt"], in: dir.url).status == 0)

        // The checkpoint's privacy.json is read by push and charged to the dataset's budget.
        #expect(try coffer(["budget", "set", "data.csv", "--epsilon", "20", "--delta", "1e-5"] + admin, dir).status == 0)
        let push = try coffer(["push", "m", "ckpt", "--dataset", "data.csv"] + admin, dir)
        #expect(push.status == 0, "\(push.stderr)")
        let budget = try JSONSerialization.jsonObject(with: try coffer(["budget", "show", "data.csv", "--json"], dir).stdout) as? [String: Any]
        #expect((budget?["spent"] as? Double ?? 0) > 0 && (budget?["versions"] as? [Any])?.count == 1)
        #expect(budget?["models"] is NSNull, "any model may be charged: \(budget ?? [:])")
        expectFailure(try coffer(["budget", "set", "data.csv", "--epsilon", "0", "--delta", "1e-5"] + admin, dir), "budget epsilon must be > 0")
        // Only m (and the team/ namespace) may be charged from now on: another model's push naming the dataset is refused.
        let scoped = try coffer(["budget", "set", "data.csv", "--epsilon", "20", "--delta", "1e-5", "--model", "m", "--model", "team/"] + admin, dir)
        #expect(scoped.stdoutText.contains("only m, team/ may be charged"), "\(scoped.stdoutText) \(scoped.stderr)")
        expectFailure(
            try coffer(["push", "other", "ckpt", "--dataset", "data.csv"] + admin, dir),
            "refused: dataset data.csv's budget is for m, team/ only: other may not be charged to it"
        )
        #expect(try coffer(["budget", "show", "data.csv"], dir).stdoutText.contains("only versions of m, team/ may be charged"))
        expectFailure(
            try coffer(["budget", "set", "data.csv", "--epsilon", "20", "--delta", "1e-5", "--model", "a b"] + admin, dir),
            "invalid model scope 'a b'"
        )

        #expect(try coffer(["policy", "set", "m@prod", "--max-epsilon", "0.5"] + admin, dir).status == 0)
        expectFailure(try coffer(["alias", "set", "m@prod", "1"] + admin, dir), "policy refused: alias prod of m requires epsilon <= 0.5")
        #expect(try coffer(["policy", "set", "m@prod", "--max-epsilon", "50", "--require-budget"] + admin, dir).status == 0)
        #expect(try coffer(["alias", "set", "m@prod", "1"] + admin, dir).status == 0)
        let policyJSON = try coffer(["policy", "show", "m", "--json"], dir)
        let policies = try #require(try JSONSerialization.jsonObject(with: policyJSON.stdout) as? [[String: Any]], "\(policyJSON.stdoutText)")
        #expect(policies.count == 1 && policies[0]["alias"] as? String == "prod", "\(policies)")
        #expect((policies[0]["rules"] as? [String: Any])?["max_epsilon"] as? Double == 50, "\(policies)")

        #expect(try coffer(["recipient", "add", "m", "keys/bob.pub"] + admin, dir).status == 0)
        let rotate = try coffer(["key", "rotate"] + admin, dir)
        #expect(rotate.status == 0 && rotate.stdoutText.contains("registry key rotated"), "\(rotate.stderr)")
        #expect(try coffer(["pull", "m@prod", "--identity", "keys/bob.key", "--out", "pulled"], dir).status == 0)
        let rekey = try coffer(["rekey", "m:1"] + admin, dir)
        #expect(rekey.status == 0 && rekey.stdoutText.contains("re-encrypted m:1 under a new data key"), "\(rekey.stderr)")
        #expect(try coffer(["pull", "m@prod", "--identity", "keys/bob.key", "--out", "pulled-again"], dir).status == 0)
        #expect(try coffer(["fsck"], dir).status == 0)

        #expect(try coffer(["erase", "m:1"] + admin, dir).status == 0)
        expectFailure(try coffer(["pull", "m:1", "--identity", "keys/bob.key", "--out", "again"], dir), "m:1 was erased at")
        let shown = try JSONSerialization.jsonObject(with: try coffer(["show", "m:1", "--json"], dir).stdout) as? [String: Any]
        #expect((shown?["erased"] as? [String: Any])?["by"] as? String == "alice")
        expectFailure(try coffer(["erase", "m:1"] + admin, dir), "m:1 was already erased")
        expectFailure(try coffer(["erase", "m:1", "--identity", "keys/bob.key"], dir), "bob lacks the admin role")
        #expect(try coffer(["audit", "sign"], dir).status == 0)
        #expect(try coffer(["audit", "verify"], dir).stdoutText.contains("audit log ok"))
    }
}
