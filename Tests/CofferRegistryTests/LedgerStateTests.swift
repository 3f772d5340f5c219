import CofferCrypto
import CofferTraining
import Foundation
import Testing

@testable import CofferRegistry

/// ``LedgerState/apply(_:)`` judges names in every record as the writers' commands do: a chain signed by whoever holds
/// the right key cannot bring a name into a reader's state (and so into its output) that no command would accept.
struct LedgerStateTests {
    /// A chain in memory: records signed and applied one by one.
    final class Chain {
        let root: UnlockedIdentity
        var state: LedgerState

        /// A new registry's chain, or with `adopting` records after its genesis that restate an older registry's past.
        init(adopting: Int64? = nil) throws {
            root = try person("registry")
            state = LedgerState(registry: root.publicIdentity.keyID)
            let adoption = adopting.map { LedgerChange.Adoption(records: $0, legacyKeys: []) }
            try append(.genesis(key: root.publicIdentity, owner: nil, adoption: adoption), by: "registry")
        }

        /// Signs `change` as the next record (by the root key unless `signer` is given) and applies it.
        func append(_ change: LedgerChange, by: String, signer: UnlockedIdentity? = nil) throws {
            let record = LedgerRecord.sign(
                registry: state.registry,
                seq: state.seq + 1,
                prev: state.hash,
                at: "2026-12-04T19:00:00Z",
                by: by,
                change: change,
                signer: (signer ?? root).identity
            )
            try state.apply(record)
        }

        func refuses(_ change: LedgerChange, by: String = "registry", signer: UnlockedIdentity? = nil, _ fragment: String) {
            let before = state
            do {
                try append(change, by: by, signer: signer)
                Issue.record("a record was accepted that should fail with \(fragment)")
            } catch {
                #expect("\(error)".contains(fragment), "\(error)")
            }
            #expect(state == before, "a refused record changes nothing")
        }
    }

    @Test func namesARecordBringsAreCheckedAsCommandsCheckThem() throws {
        let chain = try Chain()
        let bad = "prod\u{1b}[2J"
        chain.refuses(.policySet(model: "m", alias: bad, rules: PolicyRules(maxEpsilon: 1)), "invalid model or alias name")
        chain.refuses(.policySet(model: "../m", alias: nil, rules: PolicyRules(maxEpsilon: 1)), "invalid model or alias name")
        chain.refuses(.budgetSet(dataset: "d\nx", epsilon: 1, delta: 1e-5, models: nil), "invalid dataset id")
        try chain.append(.policySet(model: "m", alias: "staging", rules: PolicyRules(maxEpsilon: 8)), by: "registry")
        try chain.append(.budgetSet(dataset: "hf:org/name@rev", epsilon: 8, delta: 1e-5, models: nil), by: "registry")

        let digest = String(repeating: "a", count: 64)
        let facts = LedgerChange.VersionFacts(
            model: "m",
            version: "1",
            digest: digest,
            publisher: chain.root.publicIdentity,
            dataset: nil,
            mechanism: "none",
            segments: [],
            charged: false,
            overrideBy: nil
        )
        var freeText = facts
        freeText.dataset = "d\u{7}"
        chain.refuses(.version(freeText), "invalid dataset id")
        try chain.append(.version(facts), by: "registry")
        let aliasFacts = LedgerChange.AliasFacts(signer: chain.root.publicIdentity.keyID, charged: false)
        chain.refuses(.aliasSet(model: "m", alias: bad, version: "1", digest: digest, facts: aliasFacts), "invalid alias name")
        // An alias points at a version the chain recorded (helper-72: a reader resolving it found no version).
        chain.refuses(.aliasSet(model: "m", alias: "prod", version: "2", digest: digest, facts: aliasFacts), "at 2, which has no version record")
        try chain.append(.aliasSet(model: "m", alias: "prod", version: "1", digest: digest, facts: aliasFacts), by: "registry")
        #expect(chain.state.alias("prod", of: "m")?.version == "1")

        let alice = try person("alice")
        try chain.append(.principalAdd(name: "alice", identity: alice.publicIdentity, roles: []), by: "registry")
        chain.refuses(.grant(Grant(principal: "alice", role: .reader, scope: "m", alias: bad)), by: "alice", signer: alice, "invalid alias name")
        try chain.append(.grant(Grant(principal: "alice", role: .reader, scope: "m", alias: "prod")), by: "alice", signer: alice)
        #expect(chain.state.holds("alice", .reader, on: "m", alias: "prod"))
    }

    /// A budget that names its models is charged by no other model's version, whoever signed the record; a record
    /// without `models` (every budget before them) is charged by any, and encodes as it did before.
    @Test func aBudgetNamingItsModelsIsChargedByNoOther() throws {
        let chain = try Chain()
        chain.refuses(.budgetSet(dataset: "census", epsilon: 8, delta: 1e-5, models: ["team a/"]), "invalid scope team a/ for budget census")
        try chain.append(.budgetSet(dataset: "census", epsilon: 8, delta: 1e-5, models: ["team-a/", "shared"]), by: "registry")
        #expect(chain.state.budgets["census"]?.models == ["team-a/", "shared"])
        let segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 100)]
        func version(_ model: String, _ digest: Character) -> LedgerChange {
            .version(
                LedgerChange.VersionFacts(
                    model: model,
                    version: "1",
                    digest: String(repeating: digest, count: 64),
                    publisher: chain.root.publicIdentity,
                    dataset: "census",
                    mechanism: "dp-sgd",
                    segments: segments,
                    charged: true,
                    overrideBy: nil
                )
            )
        }
        chain.refuses(version("team-b/m", "b"), "charges team-b/m to dataset census, whose budget is for team-a/, shared only")
        chain.refuses(version("team-ab/m", "c"), "whose budget is for team-a/, shared only")
        try chain.append(version("team-a/m", "a"), by: "registry")
        try chain.append(version("shared", "d"), by: "registry")
        #expect(chain.state.budgets["census"]?.charges.map(\.model) == ["team-a/m", "shared"])
        // Nor is any version whose standardisation statistics were released without DP, whoever signed the record.
        guard case .version(var exact) = version("shared", "e") else { return }
        exact.version = "2"
        exact.standardisation = "nonprivate"
        chain.refuses(.version(exact), "differential privacy (its statistics' too)")
        exact.standardisation = nil
        exact.batchSampling = "seeded"
        chain.refuses(.version(exact), "differential privacy (its statistics' too)")
        exact.batchSampling = "secret"
        exact.standardisation = "dp"
        #expect(try LedgerChange(kind: "version", fields: LedgerChange.version(exact).fields) == .version(exact))
        #expect(LedgerChange.version(exact).fields["standardisation"] == .string("dp"))
        exact.standardisation = nil
        exact.batchSampling = nil
        #expect(LedgerChange.version(exact).fields["standardisation"] == nil, "records that do not say are the bytes they were")

        // Set again without models: any model may be charged, and the record is the bytes it was before models existed.
        let open = LedgerChange.budgetSet(dataset: "census", epsilon: 8, delta: 1e-5, models: nil)
        #expect(open.fields["models"] == nil)
        let parsed = try LedgerChange(kind: "budget.set", fields: ["dataset": .string("census"), "epsilon": .number(8), "delta": .number(1e-5)])
        #expect(parsed == open)
        try chain.append(open, by: "registry")
        try chain.append(version("team-b/m", "b"), by: "registry")
        for bad: JSONValue in [.array([]), .string("team-a/"), .array([.number(1)]), .array(Array(repeating: .string("m"), count: 65))] {
            #expect(throws: LedgerError.self) {
                try LedgerChange(kind: "budget.set", fields: ["dataset": .string("d"), "epsilon": .number(1), "delta": .number(1e-5), "models": bad])
            }
        }
    }

    /// Dataset ids were free text before 2026-11-28: a registry adopted from then still reads, as it did when adopted.
    @Test func anAdoptionRestatesWhatOlderCofferAccepted() throws {
        let chain = try Chain(adopting: 1)
        try chain.append(.budgetSet(dataset: "census 2020", epsilon: 4, delta: 1e-5, models: nil), by: "registry")
        #expect(chain.state.budgets["census 2020"] != nil)
        chain.refuses(.budgetSet(dataset: "census 2021", epsilon: 4, delta: 1e-5, models: nil), "invalid dataset id")
    }

    /// The runner's warm-up goes through every step: a record signed and verified, applied, remembered and read back,
    /// and the lookups of a statement's placeholders and a path's normalization.
    @Test func theRunnersWarmUpStartsALedgerAllTheWay() {
        #expect(ClientMemory.warmUp())
        #expect(Registry.warmUpForForks())
    }

    /// The versions recorded are kept by 16 bytes of each name's SHA-256, one base64 string in a remembered state: as
    /// the names themselves, a registry of 100,000 versions made every command decode 100,000 strings. A state
    /// remembered with the names (2026-12-07) is read as one without the set, which a walk of the chain fills in.
    @Test func theRecordedVersionsAreRememberedCompactlyAndTheNamesAreFilledInAgain() throws {
        let chain = try Chain()
        var versions = RecordedVersions()
        let added = (0..<10_000).filter { n in versions.insert("team/model-\(n % 7):\(n)") }.count
        let again = versions.insert("team/model-0:0")
        #expect(added == 10_000 && !again && versions.contains("team/model-3:10") && !versions.contains("team/model-4:3"))
        let encoded = try JSONEncoder().encode(versions)
        #expect(encoded.count < 22 * 10_000, "\(encoded.count) bytes for 10,000 versions")
        #expect(try JSONDecoder().decode(RecordedVersions.self, from: encoded) == versions)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(RecordedVersions.self, from: Data(#""AAAA""#.utf8)) }

        var json = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(chain.state)) as? [String: Any])
        #expect(json["recordedVersionKeys"] as? String == "", "an empty set is an empty string")
        json["recordedVersionKeys"] = nil
        json["recordedVersions"] = ["m:1"]
        let named = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: json))
        #expect(named.recordedVersionKeys == nil && named.lacksIndexes)
    }
}
