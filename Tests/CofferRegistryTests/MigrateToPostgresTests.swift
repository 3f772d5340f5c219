import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import PostgresNIO
import Testing

@testable import CofferRegistry

/// `coffer migrate --to` (docs/FORMAT.md, "Moving an embedded registry"): an embedded registry in use (principals,
/// grants, a budget charged, an alias, a token, a live session, an erased version) copied onto PostgreSQL is the same
/// registry, and what it refuses leaves nothing behind.
@Suite(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct MigrateToPostgresTests {
    /// Blobs copied into the new home's directory, or into an OCI repository (where each live version is also
    /// published as its ModelPack manifest).
    @Test(arguments: ["directory", "oci"]) func anEmbeddedRegistryMovesOntoPostgresAsTheSameRegistry(blobs: String) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await RegistryFixture(.sqlite)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        try await f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m/"), by: admin)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        try await f.registry.setBudget(dataset: "d", epsilon: 10, delta: 1e-5, by: admin)
        let weights = bytes(50_000)
        for version in 1...3 {
            var request = PushRequest(model: "m/risk", paths: [try f.makeModel("model\(version)", ["w.bin": weights + [UInt8(version)]])])
            request.recipients = [bob.publicIdentity]
            if version == 1 {
                let segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]
                request.datasetID = "d"
                request.privacy.mechanism = "dp-sgd"
                request.privacy.delta = 1e-5
                request.privacy.segments = segments
                request.privacy.standardisation = "public"
                request.privacy.batchSampling = "secret"
                request.privacy.epsilon = Registry.composedEpsilon(segments, delta: 1e-5)
            }
            _ = try await f.registry.push(request, publisher: alice)
        }
        try await f.registry.setAlias("prod", model: "m/risk", version: "1", by: admin)
        let token = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 3600, by: admin)
        let session = try await f.registry.openSession(try ModelReference(parsing: "m/risk@prod"), identity: bob, ttl: 600, maxUses: 5)
        try await f.registry.useSession(id: session.info.id, principal: "bob")
        _ = try await f.registry.erase(model: "m/risk", version: "3", by: admin)
        // A truncation of SQLite's log still owed, which a reader blocks (here through the whole move), is SQLite's
        // business: the mark stays behind.
        try await #require(f.registry.metadata as? SQLiteMetadataStore).write { db in
            try db.execute(sql: "INSERT INTO registry_meta (key, value) VALUES (?, 'owed')", arguments: [SQLiteMetadataStore.truncationOwedKey])
        }
        var holding = Configuration()
        holding.allowsUnsafeTransactions = true
        let reader = try DatabaseQueue(path: "\(f.home)/registry.sqlite", configuration: holding)
        try reader.inDatabase { db in
            try db.execute(sql: "BEGIN")
            _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM registry_meta")
        }
        defer { try? reader.inDatabase { db in try db.execute(sql: "COMMIT") } }
        let sourceLedger = try await f.registry.metadata.ledgerRecords(after: 0, limit: nil)
        let sourceAudit = try await f.registry.metadata.auditEntries(since: nil)

        let database = try await PostgresTestSupport.registryDatabase()
        let moved = f.path("moved")
        let report = try await Registry.migrate(
            from: f.home,
            to: moved,
            backends: Backends(
                metadata: database.endpoint.url,
                blobs: blobs == "oci" ? try OCITestRegistry.plain.get().url("migrated/\(UUID().uuidString.lowercased().prefix(13))") : blobs
            ),
            memory: f.memory
        )
        #expect(report.rows["versions"] == 3 && report.rows["ledger"] == sourceLedger.count && report.blobsSent == 2)
        #expect(report.published == (blobs == "oci" ? 2 : 0), "the erased version has no manifest")
        #expect(report.rows["uploads"] == nil, "unfinished uploads stay behind")
        // The copy leaves statistics behind it: the planner knows the copied rows before autovacuum comes round.
        let analyzed = try await database.withDatabase { pool in
            try await pool.scalar(Bool.self, "SELECT EXISTS (SELECT 1 FROM pg_stats WHERE tablename = 'versions')")
        }
        #expect(analyzed == true)

        // The source is only read. It is checked before the copy is: a client that has seen the copy (its `migrate`
        // audit entry, its later records) rightly calls the source a rollback of the same registry.
        #expect(try await f.registry.fsck().problems.isEmpty)
        let copy = try await Registry(at: moved, memory: f.memory)
        #expect(copy.metadata is PostgresMetadataStore)
        #expect(try await copy.identity == f.registry.identity)
        #expect(try await f.registry.metadata.meta(SQLiteMetadataStore.truncationOwedKey) == "owed")
        #expect(try await copy.metadata.meta(SQLiteMetadataStore.truncationOwedKey) == nil)
        #expect(try await copy.metadata.meta("identity_key_id") == f.registry.metadata.meta("identity_key_id"))
        #expect(try await copy.metadata.ledgerRecords(after: 0, limit: nil) == sourceLedger)
        let copiedAudit = try await copy.metadata.auditEntries(since: nil)
        #expect(Array(copiedAudit.dropLast()) == sourceAudit)
        #expect(copiedAudit.last?.action == "migrate" && copiedAudit.last?.principal == "registry")
        #expect(try await copy.list() == f.registry.list())
        #expect(try await copy.budget(dataset: "d") == f.registry.budget(dataset: "d"))
        #expect(try await copy.verifyAudit().entries == copiedAudit.count)
        #expect(try await copy.fsck().problems.isEmpty)

        // Keys, the token's hash key and the session's sealed key copy all came along: bob pulls, his token
        // authenticates, and the session opened before the move serves from the copy, its uses counted on.
        _ = try await copy.pull(try ModelReference(parsing: "m/risk:2"), identity: bob, into: f.path("out"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: f.path("out/w.bin"))) == Data(weights + [2]))
        #expect(try await copy.authenticateToken(token.token.text()).principal.name == "bob")
        let opened = try await InferenceSession(registry: copy, token: session.token)
        #expect(opened.withFile("w.bin") { Array($0) } == weights + [1])
        #expect(try await copy.sessions().first { $0.id == session.info.id }?.uses == 2)
        await expectRefusal("was erased") { _ = try await copy.pull(try ModelReference(parsing: "m/risk:3"), identity: bob, into: f.path("x")) }

        // The identities moved past the copied ids: the next push is version 4 with row id 4, and all is still sound.
        var next = PushRequest(model: "m/risk", paths: [try f.makeModel("model4", ["w.bin": bytes(100)])])
        next.recipients = [bob.publicIdentity]
        #expect(try await copy.push(next, publisher: alice).version == "4")
        #expect(try await copy.fsck().problems.isEmpty)
        await copy.close()

        // A database holding a registry already, and a destination that is not empty, are refused, leaving nothing
        // (asked by a client that has not seen the copy, to which the source is not a rollback).
        let other = ClientMemory(directory: f.path("other-client"))
        let again = f.path("again")
        await expectRefusal("holds rows already") {
            _ = try await Registry.migrate(from: f.home, to: again, backends: Backends(metadata: database.endpoint.url), memory: other)
        }
        #expect(!FileManager.default.fileExists(atPath: again))
        let fresh = try await PostgresTestSupport.registryDatabase()
        await expectRefusal("must be a new or empty directory") {
            _ = try await Registry.migrate(from: f.home, to: moved, backends: Backends(metadata: fresh.endpoint.url), memory: other)
        }
        #expect(FileManager.default.fileExists(atPath: "\(moved)/backends.json"), "the first copy is untouched")
    }

    /// A source whose ledger was rewritten behind its back is not copied.
    @Test func aTamperedSourceIsNotCopied() async throws {
        let alice = try person("alice")
        let f = try await RegistryFixture(.sqlite)
        let dir = try f.makeModel("model", ["w.bin": bytes(1000)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        try await f.attack("UPDATE ledger SET envelope = X'7B7D' WHERE seq = 2")
        let database = try await PostgresTestSupport.registryDatabase()
        let target = f.path("moved")
        let message = await refusal {
            _ = try await Registry.migrate(from: f.home, to: target, backends: Backends(metadata: database.endpoint.url), memory: f.memory)
        }
        #expect(!message.isEmpty && !message.contains("\n"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: target))
    }
}
