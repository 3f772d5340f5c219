import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// What the later reviews' tests forge with: a version pushed honestly, then records signed and appended as a publisher
/// or a server holding the registry key could, and the check that every reader refuses the result.
extension SecurityFindingsTests {
    /// Pushes m:3, trained on dataset d with `privacy`, and returns its `version` record's facts and place in the ledger:
    /// the honest record a forgery starts from.
    func pushM3(_ f: RegistryFixture, _ privacy: PrivacyMetadata, by alice: UnlockedIdentity) async throws -> (LedgerChange.VersionFacts, Int64) {
        var request = PushRequest(model: "m", paths: [try f.makeModel("m3", ["w.bin": bytes(500, seed: 3)])])
        request.datasetID = "d"
        request.privacy = privacy
        _ = try await f.registry.push(request, publisher: alice)
        let pushed = try await f.registry.ledgerState()
        let stored = try #require(try await f.registry.metadata.ledgerRecords(after: pushed.seq - 1, limit: nil).last)
        guard case .version(let facts) = try Registry.parse(Array(stored.envelope)).change, facts.version == "3" else {
            throw CofferRegistryError.tampered("not m:3's record")
        }
        return (facts, stored.seq)
    }

    /// Local verify, local pull (which writes nothing) and a remote client's check of the package a server sends each
    /// refuse `reference` with `line`.
    func expectEveryReaderRefuses(
        _ reference: ModelReference,
        _ f: RegistryFixture,
        reader: Registry,
        as alice: UnlockedIdentity,
        line: String
    )
        async throws
    {
        await #expect(try refusal { _ = try await reader.verify(reference) } == line)
        let out = f.path("refused-pull")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        await #expect(try refusal { _ = try await reader.pull(reference, identity: alice, into: "\(out)/m") } == line)
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty, "the refused pull wrote nothing")
        _ = try await reader.signAuditHead(with: try f.registryKey)
        let ledger = try await RemoteLedger.sync(from: StoredLedger(registry: reader), location: "https://d.test", key: nil, memory: nil)
        let package = try await reader.package(reference, keyID: nil, includeKey: false, for: "alice")
        let expected = try RemoteExpectation(reference, ledger: ledger)
        #expect(await refusal { _ = try RemotePull.verifiedFiles(package, expected: expected, trusting: nil) } == line)
    }

    /// DP-SGD privacy metadata with a history, and the statistics' and batches' source as given.
    static func dpSGD(standardisation: String?, batchSampling: String?) -> PrivacyMetadata {
        var privacy = PrivacyMetadata()
        privacy.mechanism = "dp-sgd"
        privacy.delta = 1e-5
        privacy.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.5, steps: 400)]
        privacy.standardisation = standardisation
        privacy.batchSampling = batchSampling
        return privacy
    }

    /// Appends a `version` record that `signer` signed for `facts` at the end of the chain `state` replayed, as a
    /// publisher with write access to the database could; `by` names the signer as the ledger does (a principal's name,
    /// or a key ID where there are no principals).
    func appendForgedVersion(
        _ f: RegistryFixture,
        _ facts: LedgerChange.VersionFacts,
        after state: LedgerState,
        by: String,
        signer: borrowing Identity
    ) throws {
        let record = LedgerRecord.sign(
            registry: state.registry,
            seq: state.seq + 1,
            prev: state.hash,
            at: "2026-12-07T00:00:00Z",
            by: by,
            change: .version(facts),
            signer: signer
        )
        try attack(
            f,
            "INSERT INTO ledger (seq, kind, object, envelope, hash) VALUES (?, 'version', ?, ?, ?)",
            [record.seq, "version:\(facts.model):\(facts.version)", Data(record.envelope), record.hash]
        )
    }
}
