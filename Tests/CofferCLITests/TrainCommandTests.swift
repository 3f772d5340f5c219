import CofferTestSupport
import Foundation
import Testing

/// `coffer train`, `predict` and `privacy` through the built binary, on small data written by the test.
@Suite(.ownThread)
struct TrainCommandTests {
    private func recipe(_ dir: Scratch, _ overrides: [String: Any] = [:]) throws {
        var rows = ["a,b,label,value,flag"]
        for i in 0..<400 { rows.append("\(Double(i % 17) / 17),\(Double(i % 5)),\(i % 3),\(Double(i % 7) * 0.5),\(i % 2)") }
        try dir.write("data.csv", Data((rows.joined(separator: "\n") + "\n").utf8))
        var recipe: [String: Any] = [
            "data": "data.csv", "features": ["a", "b"],
            "tasks": [
                ["name": "c", "kind": "classification", "column": "label", "labels": ["l0", "l1", "l2"]],
                ["name": "r", "kind": "regression", "column": "value"],
                ["name": "f", "kind": "binary", "column": "flag"],
            ],
            "trunk": [8], "epochs": 2, "learning_rate": 0.05, "expected_batch_size": 40, "noise_multiplier": 1.0, "delta": 1e-5,
            "pruning_ratio": 0.3, "seed": 3, "feature_bounds": ["a": [0, 1], "b": [0, 4]],
        ]
        for (k, v) in overrides { recipe[k] = v }
        try dir.write("recipe.json", try JSONSerialization.data(withJSONObject: recipe))
    }

    @Test func trainWritesACheckpointThatPredicts() throws {
        let dir = try Scratch()
        try recipe(dir)
        let train = try CofferProcess.run(["train", "--config", "recipe.json", "--out", "ckpt", "--json"], in: dir.url)
        #expect(train.status == 0, "\(train.stderr)")
        let report = try JSONSerialization.jsonObject(with: train.stdout) as? [String: Any]
        #expect((report?["epsilon"] as? Double ?? 0) > 0)
        #expect(report?["noise_multiplier"] as? Double == 1 && report?["standardisation"] as? String == "dp", "DP-SGD's sigma, not the statistics'")
        #expect(abs((report?["achieved_sparsity"] as? Double ?? 0) - 0.3) < 0.02, "16 of 56 weights")
        let privacy = try JSONSerialization.jsonObject(with: try dir.read("ckpt/privacy.json")) as? [String: Any]
        #expect(privacy?["mechanism"] as? String == "dp-sgd")
        #expect(
            (privacy?["segments"] as? [[String: Any]])?.last?["steps"] as? Int == 24,
            "320 training rows, q = 40/320: 8 steps an epoch, 2 epochs and 1 fine-tuning"
        )
        // The standardisation statistics' DP release comes first in the history, and is said to be there.
        let first = (privacy?["segments"] as? [[String: Any]])?.first
        #expect(first?["sample_rate"] as? Double == 1 && first?["noise_multiplier"] as? Double == 10 && first?["steps"] as? Int == 1)
        #expect((privacy?["standardisation"] as? [String: Any])?["method"] as? String == "dp")
        #expect(privacy?["batch_sampling"] as? String == "secret")
        try dir.write("x.csv", Data("a,b\n0.1,2\n0.9,4\n".utf8))
        let predict = try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "x.csv", "--json"], in: dir.url)
        #expect(predict.status == 0, "\(predict.stderr)")
        #expect((try JSONSerialization.jsonObject(with: predict.stdout) as? [Any])?.count == 2)
        try dir.write("y.csv", Data("a\n0.1\n".utf8))
        expectFailure(try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "y.csv"], in: dir.url), "column 'b' is missing")
    }

    @Test func badTrainingInputNamesTheFieldRowOrColumn() throws {
        let dir = try Scratch()
        try recipe(dir, ["noise_multiplier": 0])
        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url),
            "noise_multiplier must be > 0 with privacy on"
        )
        try recipe(dir, ["pruning_ratio": 1.0])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "pruning_ratio must be in [0, 1)")
        try recipe(dir, ["clipping_norm": 0])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "clipping_norm must be > 0")
        try recipe(dir, ["features": ["a", "nope"], "feature_bounds": [0, 4]])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "column 'nope' is missing")
        // Under DP the statistics released with the model need a source, one only, and bounds for exactly the features.
        try recipe(dir, ["feature_bounds": NSNull()])
        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url),
            "under DP the standardisation statistics need a source"
        )
        try recipe(dir, ["nonprivate_statistics": true])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "not several")
        try recipe(dir, ["feature_bounds": ["a": [0, 1], "c": [0, 4]]])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "'c' is not one of the features")
        try recipe(dir, ["statistics_noise_multiplier": 1e12])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "too large")
        for bounds in [[1, 1], [-1e308, 1e308], [0, 5e-324]] {
            try recipe(dir, ["feature_bounds": bounds])
            expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "low < high")
        }
        try recipe(dir, ["tasks": [["name": "c", "kind": "classification", "column": "label"]]])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "needs labels")
        try recipe(dir)
        var csv = String(decoding: try dir.read("data.csv"), as: UTF8.self)
        csv = csv.replacingOccurrences(of: "\n0.0,0.0,0,0.0,0\n", with: "\n0.0,abc,0,0.0,0\n")
        try dir.write("data.csv", Data(csv.utf8))
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "column 'b': 'abc' is not a number")
        try dir.write("data.csv", Data("a,b,label,value,flag\n".utf8))
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "no data rows")
        try recipe(dir, ["target_epsilon": 1e-6, "noise_multiplier": NSNull()])
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "target unreachable")
        try dir.write("recipe.json", Data("{\"data\": \"data.csv\"".utf8))
        expectFailure(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o"], in: dir.url), "invalid training configuration")
        #expect(!dir.exists("o"))
    }

    @Test func evaluateScoresALabelledCSVAndRefusesUnseenClasses() throws {
        let dir = try Scratch()
        // Without DP and without labels, the class count comes from the data (0, 1, 2): a class 3 was never seen.
        let tasks: [[String: Any]] = [
            ["name": "c", "kind": "classification", "column": "label"], ["name": "r", "kind": "regression", "column": "value"],
            ["name": "f", "kind": "binary", "column": "flag"],
        ]
        try recipe(dir, ["pruning_ratio": 0, "privacy": false, "noise_multiplier": NSNull(), "tasks": tasks])
        #expect(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "ckpt"], in: dir.url).status == 0)
        let scored = try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "data.csv", "--evaluate", "--json"], in: dir.url)
        let metrics = try JSONSerialization.jsonObject(with: scored.stdout) as? [String: Double]
        #expect(Set(metrics?.keys.map { $0 } ?? []) == ["c.accuracy", "r.rmse", "f.auc"])
        try dir.write("unseen.csv", Data("a,b,label,value,flag\n0.5,1,0,1,0\n0.5,1,3,1,0\n".utf8))
        expectFailure(
            try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "unseen.csv", "--evaluate"], in: dir.url),
            "row 3, column 'label': class 3 of task 'c' was not seen in training (3 classes)"
        )
        try dir.write("unlabelled.csv", Data("a,b\n0.5,1\n".utf8))
        expectFailure(
            try CofferProcess.run(["predict", "--checkpoint", "ckpt", "--input", "unlabelled.csv", "--evaluate"], in: dir.url),
            "label"
        )
    }

    @Test func synthWritesAReproducibleDatasetAndARecipeThatTrains() throws {
        let dir = try Scratch()
        for out in ["s1", "s2"] {
            let synth = try CofferProcess.run(
                ["synth", "--rows", "600", "--features", "4", "--classes", "3", "--seed", "5", "--out", out],
                in: dir.url
            )
            #expect(synth.status == 0, "\(synth.stderr)")
        }
        let first = try Data(contentsOf: dir.url.appendingPathComponent("s1/data.csv"))
        #expect(first == (try Data(contentsOf: dir.url.appendingPathComponent("s2/data.csv"))), "same seed, same bytes")
        #expect(String(decoding: first, as: UTF8.self).hasPrefix("x0,x1,x2,x3,cls,bin,reg\n"))
        let train = try CofferProcess.run(["train", "--config", "s1/recipe.json", "--out", "ckpt", "--json"], in: dir.url)
        #expect(train.status == 0, "\(train.stderr)")
        expectFailure(try CofferProcess.run(["synth", "--rows", "0", "--out", "s3"], in: dir.url), "rows must be > 0")
    }

    @Test func privacyCommandMatchesTheReference() throws {
        let dir = try Scratch()
        let out = try CofferProcess.run(
            [
                "privacy", "epsilon", "--sample-rate", "0.004266666666666667", "--noise-multiplier", "1.1", "--steps", "14062", "--delta", "1e-5",
                "--json",
            ],
            in: dir.url
        )
        let json = try JSONSerialization.jsonObject(with: out.stdout) as? [String: Any]
        #expect(abs((json?["epsilon"] as? Double ?? 0) - 2.5966) < 1e-4)
        #expect(json?["order"] as? Double == 8.1)
        expectFailure(
            try CofferProcess.run(
                ["privacy", "epsilon", "--sample-rate", "1.5", "--noise-multiplier", "1", "--steps", "1", "--delta", "1e-5"],
                in: dir.url
            ),
            "sample rate must be in (0, 1]"
        )
        let reference = [
            "privacy", "epsilon", "--sample-rate", "0.004266666666666667", "--noise-multiplier", "1.1", "--steps", "14062", "--delta", "1e-5",
        ]
        let pld = try CofferProcess.run(reference + ["--accountant", "pld", "--json"], in: dir.url)
        let pldJSON = try JSONSerialization.jsonObject(with: pld.stdout) as? [String: Any]
        #expect(abs((pldJSON?["epsilon"] as? Double ?? 0) - 2.3817) < 1e-3)
        #expect(pldJSON?["accountant"] as? String == "pld")
        expectFailure(try CofferProcess.run(reference + ["--accountant", "moments"], in: dir.url), "unknown accountant 'moments': use rdp or pld")
        // A release made before the steps (coffer train's DP statistics, 1:SIGMA:1) is composed with them, by each accountant.
        for (accountant, alone) in [("rdp", 2.5966), ("pld", 2.3817)] {
            let after = try CofferProcess.run(reference + ["--accountant", accountant, "--after", "1:4:1", "--json"], in: dir.url)
            let epsilon = (try JSONSerialization.jsonObject(with: after.stdout) as? [String: Any])?["epsilon"] as? Double ?? 0
            #expect(epsilon > alone + 0.01, "\(accountant): \(epsilon) after the release, \(alone) without")
        }
        expectFailure(
            try CofferProcess.run(reference + ["--after", "1:4"], in: dir.url),
            "--after 1:4: expected RATE:SIGMA:STEPS with a rate in (0, 1], a sigma over 0 and at least one step"
        )
    }

    @Test func evidenceOptionsRecordTheAuditAndRefuseWhatCannotBeMet() throws {
        let dir = try Scratch()
        try recipe(dir, ["pruning_ratio": 0])
        let train = try CofferProcess.run(
            [
                "train", "--config", "recipe.json", "--out", "ckpt", "--audit-canaries", "200", "--membership", "--audit-report", "audit.json",
                "--json",
            ],
            in: dir.url
        )
        #expect(train.status == 0, "\(train.stderr)")
        let report = try JSONSerialization.jsonObject(with: train.stdout) as? [String: Any]
        let audit = (report?["evidence"] as? [String: Any])?["audit"] as? [String: Any]
        #expect(audit?["canaries"] as? Int == 200)
        #expect((audit?["epsilon_lower_bound"] as? Double ?? -1) <= (report?["epsilon"] as? Double ?? 0))
        #expect(
            try FileManager.default.attributesOfItem(atPath: dir.url.appendingPathComponent("audit.json").path)[.posixPermissions] as? Int == 0o600
        )
        let privacy = String(decoding: try dir.read("ckpt/privacy.json"), as: UTF8.self)
        #expect(privacy.contains("\"epsilon_lower_bound\"") && privacy.contains("\"max_auc\"") && !privacy.contains("included"))

        // Pushed, the evidence is signed with the version: show prints it beside epsilon, list filters on it, and an
        // alias policy can require it.
        try dir.keygen("alice")
        let registry = ["--home", "home"]
        for args in [["init"], ["trust", "add", "keys/alice.pub"], ["push", "m", "ckpt", "--identity", "keys/alice.key"]] {
            let result = try CofferProcess.run(args + registry, in: dir.url)
            #expect(result.status == 0, "\(args): \(result.stderr)")
        }
        let shown = try CofferProcess.run(["show", "m"] + registry, in: dir.url).stdoutText
        #expect(shown.contains("evidence:") && shown.contains("audit epsilon >= ") && shown.contains("(200 canaries)"), "\(shown)")
        #expect(shown.contains("membership attack AUC "), "\(shown)")
        let listed = try CofferProcess.run(["list", "m", "--where", "audit_epsilon>=0 and membership_auc<=1", "--json"] + registry, in: dir.url)
        #expect((try JSONSerialization.jsonObject(with: listed.stdout) as? [Any])?.count == 1, "\(listed.stderr)")
        let policy = try CofferProcess.run(["policy", "set", "m@prod", "--require-audit", "--max-membership-auc", "0.01"] + registry, in: dir.url)
        #expect(policy.status == 0, "\(policy.stderr)")
        expectFailure(try CofferProcess.run(["alias", "set", "m@prod", "1"] + registry, in: dir.url), "requires membership AUC <= 0.01")
        #expect(try CofferProcess.run(["policy", "set", "m@prod", "--require-audit"] + registry, in: dir.url).status == 0)
        let moved = try CofferProcess.run(["alias", "set", "m@prod", "1"] + registry, in: dir.url)
        #expect(moved.status == 0, "\(moved.stderr)")

        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o", "--audit-report", "a.json"], in: dir.url),
            "--audit-report needs an audit: give --audit-canaries M"
        )
        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o", "--audit-canaries", "5"], in: dir.url),
            "5 audit canaries are too few for a meaningful bound"
        )
        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o", "--robustness-epsilons", "0.1,x"], in: dir.url),
            "--robustness-epsilons must be comma-separated numbers, got '0.1,x'"
        )
        try recipe(dir, ["privacy": false, "noise_multiplier": NSNull()])
        expectFailure(
            try CofferProcess.run(["train", "--config", "recipe.json", "--out", "o", "--audit-canaries", "200"], in: dir.url),
            "audit_canaries needs differential privacy"
        )
        expectFailure(
            try CofferProcess.run(["privacy", "audit", "--config", "recipe.json", "--canaries", "200"], in: dir.url),
            "audit_canaries needs differential privacy"
        )
        #expect(!dir.exists("o"))
    }

    @Test func privacyAttackScoresAMembersFileAndRefusesOneThatDoesNotMatch() throws {
        let dir = try Scratch()
        try recipe(dir, ["pruning_ratio": 0])
        #expect(try CofferProcess.run(["train", "--config", "recipe.json", "--out", "ckpt"], in: dir.url).status == 0)
        var rows = ["a,b,label,value,flag,member"]
        for i in 0..<60 { rows.append("\(Double(i % 17) / 17),\(Double(i % 5)),\(i % 3),\(Double(i % 7) * 0.5),\(i % 2),\(i % 3 == 0 ? 1 : 0)") }
        try dir.write("members.csv", Data((rows.joined(separator: "\n") + "\n").utf8))
        let attack = try CofferProcess.run(["privacy", "attack", "--checkpoint", "ckpt", "--members", "members.csv", "--json"], in: dir.url)
        #expect(attack.status == 0, "\(attack.stderr)")
        let json = try JSONSerialization.jsonObject(with: attack.stdout) as? [String: Any]
        #expect(json?["members"] as? Int == 20 && json?["non_members"] as? Int == 20 && json?["population"] as? Int == 20)
        #expect(Set((json?["tasks"] as? [String: Any])?.keys.map { $0 } ?? []) == ["c", "r", "f"])
        try dir.write("bad.csv", Data("a,label,value,flag,member\n0.1,1,1,0,1\n".utf8))
        expectFailure(
            try CofferProcess.run(["privacy", "attack", "--checkpoint", "ckpt", "--members", "bad.csv"], in: dir.url),
            "bad.csv does not match the checkpoint's features: column 'b' is missing (the checkpoint's features: a, b)"
        )
        let split = try CofferProcess.run(["split", "--config", "recipe.json", "--out", "split"], in: dir.url)
        #expect(split.status == 0, "\(split.stderr)")
        #expect(String(decoding: try dir.read("split/validation.csv"), as: UTF8.self).split(separator: "\n").count == 81, "80 rows and the header")
    }
}
