import CofferCrypto
import Foundation
import Synchronization
import Testing

@testable import CofferRegistry

/// Verifying the audit chain from a checkpoint (the web audit page's check) on both metadata engines: what was
/// appended since is walked, what the checkpoint vouches for is looked up, and the prefix is walked again in slices.
struct AuditCheckpointTests {
    /// A registry with 30 refusals logged, a signed head over them, and its chain verified once in full.
    private func verified(_ backend: MetadataBackend) async throws -> (RegistryFixture, AuditCheckpoint) {
        let f = try await RegistryFixture(backend)
        for i in 1...30 { try await f.registry.recordRefusal(action: "probe", target: "m/a:1", reason: "r\(i)", principal: "p") }
        try await f.registry.signAuditHead(with: try f.registryKey)
        let full = try await f.registry.verifyAudit(continuingFrom: nil)
        let checkpoint = try #require(full.checkpoint)
        #expect(full.walked == full.report.entries && checkpoint.seq == Int64(full.report.entries))
        #expect(full.report == (try await f.registry.verifyAudit()))
        return (f, checkpoint)
    }

    private func append(_ f: RegistryFixture, _ count: Int) async throws {
        for i in 1...count { try await f.registry.recordRefusal(action: "probe", target: "m/a:1", reason: "later \(i)", principal: "p") }
    }

    @Test(arguments: MetadataBackend.available) func aCheckpointWalksOnlyWhatWasAppended(on backend: MetadataBackend) async throws {
        let (f, checkpoint) = try await verified(backend)
        let same = try await f.registry.verifyAudit(continuingFrom: checkpoint)
        #expect(same.walked == 0 && same.checkpoint == checkpoint)
        try await append(f, 5)
        let next = try await f.registry.verifyAudit(continuingFrom: checkpoint)
        #expect(next.walked == 5 && next.checkpoint?.seq == checkpoint.seq + 5)
        #expect(next.report == (try await f.registry.verifyAudit()), "the same report as a full walk")
        // The prefix, walked again a slice at a time, ends its round with nil.
        var cursor: Int64 = 0
        var slices = 0
        while let reached = try await f.registry.reverifyAudit(after: cursor, count: 10) {
            #expect(reached == min(cursor + 10, checkpoint.seq + 5))
            cursor = reached
            slices += 1
        }
        #expect(cursor == checkpoint.seq + 5 && slices == Int((cursor + 9) / 10))
    }

    /// A server signs a state head every few seconds while pages check the chain: a head signed during a check names a
    /// ledger record the check's own read of the ledger may not reach, unless the head is read first. (Read the other
    /// way round, this failed CI once with "records withheld" on an untampered registry.)
    @Test(arguments: MetadataBackend.available) func aHeadSignedDuringACheckIsNotTakenForTampering(on backend: MetadataBackend) async throws {
        let (f, checkpoint) = try await verified(backend)
        let signed = Flag()
        let signer = Task {
            defer { signed.set() }
            let key = try f.registryKey
            for i in 1...60 {
                try await f.registry.recordRefusal(action: "probe", target: "m/a:1", reason: "during \(i)", principal: "p")
                try await f.registry.signAuditHead(with: key, checkpoint: true)
            }
        }
        var checks = 0
        while !signed.isSet {
            _ = try await f.registry.verifyAudit(continuingFrom: checkpoint)
            checks += 1
        }
        try await signer.value
        #expect(checks > 1)
    }

    /// Damage after the checkpoint (in what the next check walks) and to what the checkpoint vouches for.
    @Test(
        arguments: MetadataBackend.available,
        [
            ("UPDATE audit_log SET reason = 'edited' WHERE seq = {C+2}", "entry {C+2} was edited"),
            ("DELETE FROM audit_log WHERE seq = {C+3}", "entry {C+3} is missing"),
            ("UPDATE audit_log SET entry_hash = prev_hash WHERE seq = {C}", "entries up to {C} were rewritten (entry {C} was verified before)"),
            ("DELETE FROM audit_log WHERE seq > 10", "is gone (truncated or rolled back)"),
            ("UPDATE audit_heads SET signature = entry_hash || entry_hash", "is not signed by a key of the registry's chain"),
        ]
    )
    func damageTheCheckpointCoversIsCaught(on backend: MetadataBackend, damage: (sql: String, expected: String)) async throws {
        let (f, checkpoint) = try await verified(backend)
        try await append(f, 5)
        func filled(_ text: String) -> String {
            text.replacingOccurrences(of: "{C+2}", with: "\(checkpoint.seq + 2)").replacingOccurrences(of: "{C+3}", with: "\(checkpoint.seq + 3)")
                .replacingOccurrences(of: "{C}", with: "\(checkpoint.seq)")
        }
        try await f.tamper(filled(damage.sql))
        let message = await refusal { _ = try await f.registry.verifyAudit(continuingFrom: checkpoint) }
        #expect(message.contains(filled(damage.expected)), "\(message)")
    }

    /// An entry of the verified prefix edited in place, its hash columns left alone, is not seen by the lookups (the
    /// page says so); the slices walking the prefix again find it, and so does a full walk.
    @Test(arguments: MetadataBackend.available) func anEntryEditedInPlaceBeforeTheCheckpointIsFoundByTheSlices(
        on backend: MetadataBackend
    ) async throws {
        let (f, checkpoint) = try await verified(backend)
        try await f.tamper("UPDATE audit_log SET principal = 'mallory' WHERE seq = 14")
        _ = try await f.registry.verifyAudit(continuingFrom: checkpoint)
        #expect(try await f.registry.reverifyAudit(after: 0, count: 10) == 10, "the first slice ends before the edit")
        let slice = await refusal { _ = try await f.registry.reverifyAudit(after: 10, count: 10) }
        #expect(slice.contains("entry 14 was edited"), "\(slice)")
        let full = await refusal { _ = try await f.registry.verifyAudit() }
        #expect(full.contains("entry 14 was edited"), "\(full)")
    }
}

/// Set once, read from another task.
private final class Flag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}
