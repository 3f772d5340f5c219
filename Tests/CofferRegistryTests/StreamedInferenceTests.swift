import CofferCrypto
import CofferTestSupport
import CofferTraining
import Foundation
import Testing

@testable import CofferRegistry

/// `coffer infer` (``InferenceSession/predictOnce(registry:tokenText:table:now:)``): a few rows predicted as the model
/// decrypts, more from the whole model in locked memory; uses taken only for predictions that are released, and none
/// released from a model that does not match its signed digest, even when every chunk authenticates.
struct StreamedInferenceTests {
    private final class Collected: ByteSink {
        var bytes: [UInt8] = []
        func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) { self.bytes += bytes }
    }

    /// A registry holding the trained checkpoint as m:1, whose publisher alice may open sessions on.
    private func populated() async throws -> (RegistryFixture, UnlockedIdentity) {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: try f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        try await f.registry.grant(Grant(principal: "alice", role: .inference, scope: "m"), by: admin)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try await TrainedCheckpoint.write(into: f.path("model"))]), publisher: alice)
        return (f, alice)
    }

    private func rows(_ count: Int) throws -> CSVTable {
        let lines = try SyntheticData(rows: 9, features: 3, classes: 3, seed: 9).csv().split(separator: "\n")
        return try CSVTable(text: lines.prefix(1 + count).joined(separator: "\n"), source: "rows.csv")
    }

    private func uses(_ f: RegistryFixture) async throws -> Int { try await f.registry.sessions().map(\.uses).reduce(0, +) }

    @Test func aFewRowsArePredictedAsTheModelDecryptsAndMoreFromTheWholeModel() async throws {
        let (f, alice) = try await populated()
        let session = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: alice, ttl: 600)
        let whole = try await InferenceSession(registry: f.registry, token: session.token, countingUse: false, auditingOpen: false)
        for count in [1, 3, 5] {
            let (view, predicted) = try await InferenceSession.predictOnce(
                registry: f.registry,
                tokenText: session.token.text(),
                table: try rows(count)
            )
            #expect(predicted == (try whole.predict(try rows(count)).1), "\(count) rows")
            #expect(view.architecture.tasks.count == 3)
        }
        #expect(try await uses(f) == 1 + 3 + 5, "one use per row predicted")
        let missing = try CSVTable(text: "x0,x7,x2\n1,2,3", source: "rows.csv")
        await expectRefusal("x1") {
            _ = try await InferenceSession.predictOnce(registry: f.registry, tokenText: session.token.text(), table: missing)
        }
        #expect(try await uses(f) == 9, "a failed prediction takes no use")
        #expect(try await f.registry.auditEntries().contains { $0.action == "infer" && $0.outcome == .failed && $0.reason.contains("x1") })
    }

    /// A key holder can seal other bytes under the version's data key: every chunk then authenticates, and the prediction
    /// is computed as they stream, but the plaintext's digest is not the signed one, so nothing is released or counted.
    @Test func aModelResealedWithOtherWeightsIsPredictedFromButNotReleased() async throws {
        let (f, alice) = try await populated()
        let session = try await f.registry.openSession(try ModelReference(parsing: "m:1"), identity: alice, ttl: 600)
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:1")).id)
        let file = try #require(stored.files.first { $0.path == Checkpoint.modelFile })
        var other = Array(try Data(contentsOf: URL(fileURLWithPath: f.path("model/\(Checkpoint.modelFile)"))))
        other[other.count - 2] ^= 0x01  // a weight of the last tensor, near the end of the file
        let resealed = Collected()
        let box = try await f.registry.unwrapDataKey(stored, identity: alice)
        _ = try SealedFile.seal(from: MemorySource(other), to: resealed, dataKey: box.key, stanzas: [])
        #expect(resealed.bytes.count == file.sealedSize, "the same length, so only the digest can tell")
        let blob = f.blobPath(file.sealedSHA256)
        try FileManager.default.removeItem(atPath: blob)
        try Data(resealed.bytes).write(to: URL(fileURLWithPath: blob))

        for count in [1, 5] {
            await expectRefusal("\(Checkpoint.modelFile) does not match its signed SHA-256") {
                _ = try await InferenceSession.predictOnce(registry: f.registry, tokenText: session.token.text(), table: try rows(count))
            }
        }
        #expect(try await uses(f) == 0)
        #expect(try await f.registry.auditEntries().filter { $0.action == "infer" && $0.outcome == .failed }.count == 2)
    }
}
