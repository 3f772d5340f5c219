import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The evidence as `coffer train` collects it: every part in one run, refusals before training, and the JSON shape.
@Suite(.ownThread)
struct EvidenceRunTests {
    /// One DP run with every part of the evidence, shared by the tests below (about 3 s in a debug build).
    static let everything: Result<TrainedModel, any Error> = Result {
        let recipe = try EvidenceSupport.recipe(rows: 1000, seed: 5) { r in
            r.noiseMultiplier = 0.8
            r.auditCanaries = 300
            r.membershipAttack = true
            r.utilityBaseline = true
            r.robustnessEpsilons = [0.1, 0.5]
        }
        return try TrainingRun.run(recipe)
    }

    @Test func aDPRunRecordsEveryPartAndTheAuditStaysBelowTheProof() throws {
        let trained = try Self.everything.get()
        let evidence = try #require(trained.privacy.evidence)
        #expect(evidence.version == 1)
        let audit = try #require(evidence.audit)
        let epsilon = try #require(trained.privacy.epsilon)
        #expect(audit.canaries == 300 && audit.hypotheses == 8 && audit.confidence == 0.95 && audit.delta == 1e-5)
        #expect(audit.epsilonLowerBound <= epsilon, "SOUNDNESS VIOLATION: audit \(audit.epsilonLowerBound) above proven \(epsilon)")
        #expect(trained.audit?.canaries.included.count == 300)
        #expect((trained.auditSeconds ?? -1) >= 0)
        #expect(evidence.membership?.tasks.count == 3)
        #expect(evidence.robustness?.epsilons == [0.1, 0.5])
        #expect(trained.privacy.datasetSize == 800, "the canaries are not counted as data")
    }

    /// The non-private baseline is the recipe with privacy off, same seed, same split: its metrics are those of that run.
    @Test func theUtilityBaselineIsTheSameRecipeWithoutPrivacy() throws {
        let trained = try Self.everything.get()
        let utility = try #require(trained.privacy.evidence?.utility)
        let alone = try TrainingRun.run(
            try EvidenceSupport.recipe(rows: 1000, seed: 5) { r in
                r.privacy = false
                r.noiseMultiplier = nil
            }
        )
        #expect(utility.baseline == "non-private")
        for metric in alone.metrics {
            let task = try #require(utility.tasks[metric.task])
            #expect(task.metric == metric.metric)
            #expect(task.nonPrivate == metric.value, "non-private training is deterministic given the seed")
            let mine = try #require(trained.metrics.first { $0.task == metric.task })
            #expect(task.privateValue == mine.value)
            #expect(task.cost == (metric.metric == "rmse" ? mine.value - metric.value : metric.value - mine.value))
        }
    }

    @Test func theEvidenceIsWrittenAsDocumented() throws {
        let trained = try Self.everything.get()
        let bytes = try Checkpoint.privacyJSON(trained.privacy)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        let evidence = try #require(json["evidence"] as? [String: Any])
        #expect(Set(evidence.keys) == ["version", "audit", "membership", "utility", "robustness"])
        let audit = try #require(evidence["audit"] as? [String: Any])
        #expect(
            Set(audit.keys) == [
                "method", "score", "canaries", "confidence", "delta", "hypotheses", "k_plus", "k_minus", "guesses", "correct",
                "epsilon_lower_bound",
            ]
        )
        #expect(audit["method"] as? String == "steinke-nasr-jagielski-2023")
        let membership = try #require(evidence["membership"] as? [String: Any])
        #expect(Set(membership.keys) == ["members", "non_members", "population", "max_auc", "max_tpr_at_1pct_fpr", "tasks"])
        let cls = try #require((membership["tasks"] as? [String: Any])?["cls"] as? [String: [String: Double]])
        #expect(Set(cls["loss"]?.keys.map { $0 } ?? []) == ["auc", "tpr_at_1pct_fpr"])
        #expect(Set(cls["population"]?.keys.map { $0 } ?? []) == ["auc", "tpr_at_1pct_fpr", "fpr"])
        let utility = try #require((evidence["utility"] as? [String: Any])?["tasks"] as? [String: [String: Any]])
        #expect(Set(utility["reg"]?.keys.map { $0 } ?? []) == ["metric", "private", "non_private", "cost"])
        let robustness = try #require(evidence["robustness"] as? [String: Any])
        #expect(Set(robustness.keys) == ["norm", "epsilons", "pgd_steps", "pgd_step_fraction", "rows", "tasks"])
        // It reads back to the same value, and the inclusion bits are nowhere in it.
        #expect(try JSONDecoder().decode(PrivacyReport.self, from: Data(bytes)) == trained.privacy)
        #expect(!String(decoding: bytes, as: UTF8.self).contains("included"))
        // A run without evidence writes "evidence": null.
        var plain = trained.privacy
        plain.evidence = nil
        #expect(String(decoding: try Checkpoint.privacyJSON(plain), as: UTF8.self).contains("\"evidence\" : null"))
    }

    /// The TrainingRun path of the audit with the noise off (a test-only parameter): the bound is large.
    @Test func anAuditedRunWithoutNoiseShowsALargeBound() throws {
        let recipe = try EvidenceSupport.recipe(rows: 1000, seed: 6) { r in
            r.privacy = false
            r.noiseMultiplier = nil
            r.auditCanaries = 300
        }
        let trained = try TrainingRun.run(recipe, progress: nil, auditWithoutPrivacy: true, canarySeed: 1)
        let audit = try #require(trained.privacy.evidence?.audit)
        #expect(audit.epsilonLowerBound > 2.5, "\(audit)")
    }

    @Test func requestsThatCannotBeMetAreRefusedBeforeTraining() throws {
        let noPrivacy = try EvidenceSupport.recipe { r in
            r.privacy = false
            r.noiseMultiplier = nil
            r.auditCanaries = 500
        }
        #expect(
            throws: CofferTrainingError.invalidConfiguration(
                "audit_canaries needs differential privacy: this recipe trains without it (privacy: false), so there is no epsilon to audit"
            )
        ) { _ = try TrainingRun.run(noPrivacy) }
        let minimum = try #require(OneRunAudit.minimumCanaries(delta: 1e-5))
        let few = try EvidenceSupport.recipe { $0.auditCanaries = 10 }
        #expect(
            throws: CofferTrainingError.invalidParameter(
                "10 audit canaries are too few for a meaningful bound: even all-correct guesses could not show epsilon >= 1 at 95% confidence; use at least \(minimum)"
            )
        ) { _ = try TrainingRun.run(few) }
        let noValidation = try EvidenceSupport.recipe { r in
            r.validationSplit = 0
            r.membershipAttack = true
        }
        #expect(
            throws: CofferTrainingError.invalidConfiguration(
                "membership_attack needs at least 2 validation rows (the non-members and the population): raise validation_split"
            )
        ) { _ = try TrainingRun.run(noValidation) }
        #expect(throws: CofferTrainingError.invalidConfiguration("audit_canaries must be in 1...1000000, got 0")) {
            _ = try EvidenceSupport.recipe { $0.auditCanaries = 0 }
        }
        #expect(throws: CofferTrainingError.invalidConfiguration("robustness_epsilons must be finite numbers > 0, got [0.0]")) {
            _ = try EvidenceSupport.recipe { $0.robustnessEpsilons = [0] }
        }
    }
}
