import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

extension SecurityFindingsTests {
    /// helper-71: the replay accepted a second `version` record for a version already recorded (fsck named it), and
    /// verify and pull (local and remote) judged the charge on the first record, while the budget counted the second. A
    /// publisher with write access appended, rewriting nothing a client has seen, a charged record that leaves the source
    /// out for a statement saying `nonprivate`. helper-73: readers found "the first" by an unsigned column, so with that
    /// column edited the second record was the one read. A version now has one record: the replay refuses a second, for
    /// every reader and every client that syncs.
    @Test func review71_aSecondRecordForARecordedVersionBreaksTheLedger() async throws {
        let (f, alice, admin) = try await owned()
        // d has no budget yet: honest, not charged.
        var (facts, _) = try await pushM3(f, Self.dpSGD(standardisation: "nonprivate", batchSampling: "secret"), by: alice)
        try await f.registry.setBudget(dataset: "d", epsilon: 100, delta: 1e-5, by: admin)
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        // Appended only: nothing any client remembers is rewritten.
        let state = try await f.registry.ledgerState()
        facts.charged = true
        facts.standardisation = nil
        facts.batchSampling = nil
        try appendForgedVersion(f, facts, after: state, by: "alice", signer: alice.identity)
        let line = "integrity check failed: ledger record \(state.seq + 1): records m:3 a second time: a version has one record"
        await #expect(try refusal { _ = try await Registry(at: f.home, memory: nil).ledgerState() } == line)
        await #expect(try refusal { _ = try await f.registry.verify(try ModelReference(parsing: "m:3")) } == line)
        await expectRefusal("records m:3 a second time") {
            _ = try await RemoteLedger.sync(from: StoredLedger(registry: f.registry), location: "https://d.test", key: nil, memory: nil)
        }
        #expect(try await f.registry.fsck().problems.contains { $0.hasSuffix("records m:3 a second time: a version has one record") })
    }

    /// helper-71: verify, pull and the remote client compared a version's record with its statement on digest and
    /// publisher only (fsck compared dataset, mechanism and segments too). A charged record whose facts are DP-SGD with a
    /// tiny history, for a statement that says mechanism `none` with no history, was charged by the replay and released
    /// by every reader: the budget said the model cost almost nothing, its signed statement that it is not private at all.
    @Test func review71_aChargedRecordThatMisstatesItsStatementsMechanismIsRefused() async throws {
        let (f, alice, admin) = try await owned()
        var privacy = PrivacyMetadata()
        privacy.mechanism = "none"
        var (facts, _) = try await pushM3(f, privacy, by: alice)
        let (statement, _) = try await f.registry.authenticate(
            try await f.registry.loadVersion(try await f.registry.resolve(ModelReference(parsing: "m:3")).id)
        )
        try await f.registry.setBudget(dataset: "d", epsilon: 1, delta: 1e-5, by: admin)
        let state = try await f.registry.ledgerState()
        facts.charged = true
        facts.mechanism = "dp-sgd"
        facts.segments = [PrivacySegment(sampleRate: 0.001, noiseMultiplier: 5, steps: 1)]
        facts.standardisation = "public"
        facts.batchSampling = "secret"
        try appendForgedVersion(f, facts, after: state, by: "alice", signer: alice.identity)
        await expectRefusal("records m:3 a second time") { _ = try await Registry(at: f.home, memory: nil).ledgerState() }

        // Were such a record the version's only one, it would disagree with the statement: every reader compares them.
        #expect(
            throws: CofferRegistryError.tampered(
                "m:3: its ledger record disagrees with its signed statement (dataset, history, mechanism, standardisation or batches)"
            )
        ) {
            try Registry.checkRecord(facts, of: statement, in: LedgerState(registry: state.registry), label: "m:3")
        }
    }

    /// helper-72: a remote read by `NAME` or `NAME@ALIAS` took the ledger record the server sent on its signature and
    /// place alone, and the reader judges a version's record against its statement. A server holding the registry key
    /// could send a record that never entered the ledger; now every read's record must be the one replayed at its place.
    @Test func review72_anAliasReadTakesOnlyTheRecordTheLedgerHolds() async throws {
        let (f, alice, admin) = try await owned()
        let (facts, seq) = try await pushM3(f, Self.dpSGD(standardisation: "public", batchSampling: "secret"), by: alice)
        try await f.registry.setAlias("prod", model: "m", version: "3", by: admin)
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let served = StoredLedger(registry: f.registry)
        let ledger = try await RemoteLedger.sync(from: served, location: "https://d.test", key: nil, memory: nil)
        let prod = try ModelReference(parsing: "m@prod")
        var package = try await f.registry.package(prod, keyID: nil, includeKey: false, for: "alice")
        let expected = try RemoteExpectation(prod, ledger: ledger)
        #expect(try await RemotePull.confirmedDigest(package, expected: expected, from: served) == facts.digest)

        // The same version's record signed again by the registry key at the same place, saying it was trained on
        // another dataset: a valid signature, at a place the replay holds, that the ledger never held.
        let sent = try #require(package.record.flatMap { Data(base64Encoded: $0) })
        let genuine = try Registry.parse(Array(sent))
        var other = facts
        other.dataset = "elsewhere"
        let forged = resigned(genuine, change: .version(other), signer: try f.registryKey.identity)
        package.record = Data(forged.envelope).base64EncodedString()
        #expect(try Registry.checkVersionRecord(forged, model: "m", version: "3", state: ledger.state).dataset == "elsewhere", "it checks out alone")
        await expectRefusal("m:3: the server sent a ledger record that is not the one replayed here at \(seq)") {
            _ = try await RemotePull.confirmedDigest(package, expected: expected, from: served)
        }
    }
}

extension SecurityFindingsTests {
    /// A DP statement's version charged, by another version's record naming its digest, to another dataset or with
    /// another history than its statement's: the budgets would count a charge the publisher's statement does not
    /// describe, and every reader refuses it (the last of `Registry.checkRecord`'s refusals to get a test).
    @Test(arguments: [("other", 400), ("d", 4)])
    func review71_aChargeForAnotherDatasetOrHistoryThanTheStatementsIsRefused(dataset: String, steps: Int) async throws {
        let (f, alice, admin) = try await owned()
        try await f.registry.setBudget(dataset: "d", epsilon: 100, delta: 1e-5, by: admin)
        var (facts, _) = try await pushM3(f, Self.dpSGD(standardisation: "public", batchSampling: "secret"), by: alice)
        try await f.registry.setBudget(dataset: "other", epsilon: 100, delta: 1e-5, by: admin)
        let state = try await f.registry.ledgerState()
        #expect(state.charges(of: facts.digest).map(\.dataset) == ["d"], "the honest push is charged to d")
        facts.version = "4"
        facts.dataset = dataset
        facts.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.5, steps: steps)]
        try appendForgedVersion(f, facts, after: state, by: "alice", signer: alice.identity)
        let reader = try await Registry(at: f.home, memory: nil)
        #expect(try await reader.ledgerState().charges(of: facts.digest).count == 2, "the replay took the second charge")
        let line = "integrity check failed: m:3: charged to dataset \(dataset) with another history than its statement's"
        try await expectEveryReaderRefuses(try ModelReference(parsing: "m:3"), f, reader: reader, as: alice, line: line)
    }

    /// helper-72: a local reader checked a version's record against the chain's verified end only when it was the last
    /// record; one below it was taken on its signature and place. Someone able to write the database and sign as the
    /// publisher swapped m:1's record for one signed again (here with another time): a reader that remembered the chain
    /// took it. Now the record's links are walked to a hash the verified state holds.
    @Test func review72_aLocalReadTakesOnlyTheRecordTheVerifiedChainHolds() async throws {
        let (f, alice, _) = try await owned()
        let memory = ClientMemory(directory: f.path("remembered"))
        let before = try await Registry(at: f.home, memory: memory)
        _ = try await before.verify(try ModelReference(parsing: "m:1"))
        let row = try #require(try await f.registry.metadata.firstLedgerRecord(kind: "version", object: "version:m:1"))
        let genuine = try Registry.parse(Array(row.envelope))
        #expect(genuine.seq < (try await before.ledgerState()).seq, "m:1's record is below the chain's end")
        let swapped = resigned(genuine, at: "2031-01-01T00:00:00.000Z", signer: alice.identity)
        try attack(f, "UPDATE ledger SET envelope = ?, hash = ? WHERE seq = ?", [Data(swapped.envelope), swapped.hash, genuine.seq])

        let reader = try await Registry(at: f.home, memory: memory)
        let line =
            "integrity check failed: m:1: its ledger record is not the one the verified chain holds at \(genuine.seq): the database was rewritten"
        await #expect(try refusal { _ = try await reader.verify(try ModelReference(parsing: "m:1")) } == line)
        // The reader that confirmed the genuine record remembers that record, not its place.
        await #expect(try refusal { _ = try await before.verify(try ModelReference(parsing: "m:1")) } == line)
        let out = f.path("refused-pull")
        await #expect(try refusal { _ = try await reader.pull(try ModelReference(parsing: "m:1"), identity: alice, into: out) } == line)
        #expect(!FileManager.default.fileExists(atPath: out), "the refused pull wrote nothing")
        _ = try await reader.verify(try ModelReference(parsing: "m:2"))
        // A reader that replays the whole chain finds the broken link there.
        await expectRefusal("ledger record \(genuine.seq + 1)") { _ = try await Registry(at: f.home, memory: nil).ledgerState() }
    }

    /// helper-73: a server marks the audit log in the ledger when the last mark is older than five minutes, and read
    /// that mark's time from the newest `audit.head` row, unchecked: whoever could write the database replaced that
    /// row, below the chain's end, with one dated 2100, and no mark was made again. The time now comes from the replay.
    @Test func review73_theAuditMarksTimeIsTheReplayedOnes() async throws {
        let (f, alice, _) = try await owned()
        _ = try await f.registry.signAuditHead(with: try f.registryKey)
        let marked = try await f.registry.ledgerState()
        let mark = try #require(try await f.registry.metadata.ledgerRecords(after: marked.seq - 1, limit: 1).first)
        let genuine = try Registry.parse(Array(mark.envelope))
        guard case .auditHead = genuine.change else { throw CofferRegistryError.tampered("record \(mark.seq) is not an audit.head record") }
        _ = try await pushM3(f, PrivacyMetadata(), by: alice)
        let dated2100 = resigned(genuine, at: "2100-01-01T00:00:00.000Z", signer: alice.identity)
        try attack(f, "UPDATE ledger SET envelope = ?, hash = ? WHERE seq = ?", [Data(dated2100.envelope), dated2100.hash, genuine.seq])
        let later = Date().addingTimeInterval(600)
        #expect(try await f.registry.signAuditHeadIfUnsigned(with: try f.registryKey, now: later) != nil)
        let state = try await f.registry.ledgerState()
        #expect((state.auditHead?.seq ?? 0) > (marked.auditHead?.seq ?? 0), "a new mark was made")
        #expect(state.auditMarkedAt != genuine.at && state.auditMarkedAt != dated2100.at)
    }

    /// helper-74: a state remembered before versions were recorded is filled in by one walk of the chain, which must
    /// refuse a chain naming a version twice: a client that replayed one before the rule remembers its end.
    @Test func review74_fillingARememberedStateRefusesAVersionRecordedTwice() async throws {
        let (f, alice, _) = try await owned()
        let (facts, _) = try await pushM3(f, PrivacyMetadata(), by: alice)
        let state = try await f.registry.ledgerState()
        try appendForgedVersion(f, facts, after: state, by: "alice", signer: alice.identity)
        let second = try #require(try await f.registry.metadata.ledgerRecords(after: state.seq, limit: 1).first)
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(state)) as! [String: Any]
        json["recordedVersionKeys"] = nil
        json["seq"] = second.seq
        json["hash"] = try Registry.parse(Array(second.envelope)).hash
        let remembered = try JSONDecoder().decode(LedgerState.self, from: JSONSerialization.data(withJSONObject: json))
        #expect(remembered.lacksIndexes)
        await expectRefusal("'s ledger records m:3 a second time: a version has one record") {
            _ = try await RemoteLedger.filledIndexes(remembered, from: StoredLedger(registry: f.registry), location: f.home)
        }
    }
}
