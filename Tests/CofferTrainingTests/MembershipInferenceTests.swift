import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The membership attacks on losses whose distributions, and so whose AUC and TPR, are known.
@Suite(.ownThread)
struct MembershipInferenceTests {
    static func uniform(_ count: Int, from low: Float, to high: Float, seed: UInt64) -> [Float] {
        var generator = SeededGenerator(seed: seed)
        return (0..<count).map { _ in generator.uniform(low, high) }
    }

    /// Members' losses U(0, 1), non-members' U(0.5, 1.5): AUC = P[member < non-member] = 1 - 1/8; at 1% FPR the
    /// threshold is 0.51, below which 51% of the members fall.
    @Test func shiftedLossesGiveTheirKnownAUCAndTPR() {
        let members = Self.uniform(20_000, from: 0, to: 1, seed: 1)
        let nonMembers = Self.uniform(20_000, from: 0.5, to: 1.5, seed: 2)
        let population = Self.uniform(20_000, from: 0.5, to: 1.5, seed: 3)
        let loss = MembershipInference.lossAttack(members: members, nonMembers: nonMembers)
        #expect(abs(loss.auc - 0.875) < 0.005, "\(loss)")
        #expect(abs(loss.tprAt1PctFPR - 0.51) < 0.01, "\(loss)")
        #expect(loss.fpr == nil)
        let attack = MembershipInference.populationAttack(members: members, nonMembers: nonMembers, population: population)
        #expect(abs(attack.auc - 0.875) < 0.005, "\(attack)")
        #expect(abs(attack.tprAt1PctFPR - 0.51) < 0.01, "\(attack)")
        #expect(abs((attack.fpr ?? 0) - 0.01) < 0.003, "the population's 1% quantile lets ~1% of the non-members through")
    }

    @Test func identicalLossesGiveNoAdvantage() {
        let members = Self.uniform(20_000, from: 0, to: 1, seed: 4)
        let nonMembers = Self.uniform(20_000, from: 0, to: 1, seed: 5)
        let loss = MembershipInference.lossAttack(members: members, nonMembers: nonMembers)
        #expect(abs(loss.auc - 0.5) < 0.01)
        #expect(abs(loss.tprAt1PctFPR - 0.01) < 0.005)
        let attack = MembershipInference.populationAttack(members: members, nonMembers: nonMembers, population: nonMembers)
        #expect(abs(attack.auc - 0.5) < 0.01)
    }

    @Test func tiesCountHalf() {
        // Every loss equal: the rank-sum AUC gives ties half a win; no threshold separates anyone.
        let loss = MembershipInference.lossAttack(members: [1, 1, 1], nonMembers: [1, 1])
        #expect(loss.auc == 0.5)
        #expect(loss.tprAt1PctFPR == 0)
    }

    /// A model trained without DP, long, on few rows with noisy labels remembers them; the same run with DP does much less.
    @Test func aMemorisingModelIsDetectedAndDPReducesIt() throws {
        func membership(_ privacy: Bool) throws -> Evidence.Membership {
            let recipe = try EvidenceSupport.recipe(rows: 300, seed: 3, labelNoise: 0.4) { r in
                r.trunk = [64, 64]
                r.epochs = privacy ? 10 : 60
                r.validationSplit = 0.5
                r.membershipAttack = true
                if privacy {
                    r.noiseMultiplier = 2
                } else {
                    r.privacy = false
                    r.noiseMultiplier = nil
                }
            }
            return try #require(try TrainingRun.run(recipe).privacy.evidence?.membership)
        }
        let open = try membership(false)
        #expect(open.members == 75 && open.nonMembers == 75 && open.population == 75)
        #expect(open.maxAUC > 0.65, "\(open)")
        #expect(Set(open.tasks.keys) == ["cls", "bin", "reg"])
        let dp = try membership(true)
        #expect(dp.maxAUC < open.maxAUC)
    }

    @Test func aMembersFileMustMatchTheCheckpoint() throws {
        let model = try MultiTaskModel(architecture: Architecture(inputs: 2, trunk: [4], tasks: [TaskSpec(name: "y", kind: .binary)]), seed: 1)
        let preprocessing = Preprocessing(
            features: ["a", "b"],
            means: [0, 0],
            standardDeviations: [1, 1],
            tasks: [.init(name: "y", kind: .binary, column: "y")]
        )
        func attack(_ csv: String) throws {
            _ = try MembershipInference.attack(model: model, preprocessing: preprocessing, members: try CSVTable(text: csv), source: "m.csv")
        }
        #expect(
            throws: CofferTrainingError.invalidData(
                "m.csv does not match the checkpoint's features: column 'b' is missing (the checkpoint's features: a, b)"
            )
        ) {
            try attack("a,c,y,member\n1,2,1,1\n")
        }
        #expect(throws: CofferTrainingError.invalidData("m.csv lacks column 'y' of task 'y': the attacks need every task's target")) {
            try attack("a,b,member\n1,2,1\n")
        }
        #expect(throws: CofferTrainingError.invalidData("m.csv: no 'member' column (1 for rows trained on, 0 for the others)")) {
            try attack("a,b,y\n1,2,1\n")
        }
        #expect(throws: CofferTrainingError.invalidData("m.csv row 3, column 'member': 2.0 is not 0 or 1")) {
            try attack("a,b,y,member\n1,2,1,1\n1,2,1,2\n")
        }
        #expect(throws: CofferTrainingError.invalidData("m.csv: no member rows (member = 1)")) {
            try attack("a,b,y,member\n1,2,1,0\n1,2,1,0\n")
        }
        #expect(
            throws: CofferTrainingError.invalidData("m.csv: 1 non-member rows (member = 0); the attacks need at least 2, or 1 and a population file")
        ) {
            try attack("a,b,y,member\n1,2,1,1\n1,2,1,0\n")
        }
        try attack("a,b,y,member\n1,2,1,1\n1,2,1,0\n3,1,0,0\n")
    }
}
