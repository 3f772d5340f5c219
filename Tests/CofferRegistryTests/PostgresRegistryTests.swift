import CofferCrypto
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import CofferRegistry

/// A whole registry on PostgreSQL, and what only a shared database brings: two Registry instances (two processes, or
/// two replicas) over one database at once.
@Suite(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct PostgresRegistryTests {
    /// alice (admin, trusted signer) and bob (reader, decrypt, inference on m/), with m/risk:1 pushed for bob.
    private func populated(_ alice: UnlockedIdentity, _ bob: UnlockedIdentity) async throws -> RegistryFixture {
        let f = try await RegistryFixture(.postgres)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        try await f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m/"), by: admin)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        var request = PushRequest(model: "m/risk", paths: [try f.makeModel("model", ["w.bin": bytes(4000)])])
        request.recipients = [bob.publicIdentity]
        _ = try await f.registry.push(request, publisher: alice)
        return f
    }

    private func store(_ registry: Registry) throws -> PostgresMetadataStore {
        try #require(registry.metadata as? PostgresMetadataStore)
    }

    /// A database that holds a registry's ledger is never written over by another `init`, and a registry whose
    /// database is unreachable fails to open with one line naming the engine.
    @Test func anotherRegistryOnTheSameDatabaseIsRefused() async throws {
        let f = try await RegistryFixture(.postgres)
        let url = try #require(f.postgres).endpoint.url
        let other = f.path("other-home")
        await expectRefusal("already holds a Coffer registry") {
            _ = try await Registry.create(
                at: other,
                passphrase: passphrase("x"),
                kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
                backends: Backends(metadata: url, blobs: "directory"),
                memory: nil
            )
        }
        #expect(try await f.registry.metadata.ledgerEnd() == 1, "the first registry's ledger is untouched")
        let closed = f.path("closed-home")
        try FileManager.default.createDirectory(atPath: closed, withIntermediateDirectories: true)
        try Data(#"{"format":"coffer-backends-v1","metadata":"postgres://coffer@127.0.0.1:1/none","blobs":"directory"}"#.utf8)
            .write(to: URL(fileURLWithPath: "\(closed)/backends.json"))
        let message = await refusal { _ = try await Registry(at: closed, memory: nil) }
        #expect(message.hasPrefix("PostgreSQL at 127.0.0.1:1/none: "), "\(message)")
        #expect(!message.contains("\n"))
    }

    /// `init` creates a database the server does not have yet (any name: it is quoted, never pasted), and only `init`:
    /// a registry opened on a database that is gone is refused in one line, not started empty.
    @Test func initCreatesAMissingDatabaseAndNothingElseDoes() async throws {
        let registryDatabase = try await PostgresTestSupport.registryDatabase()
        let f = try await RegistryFixture()
        let name = "new \"db\"; DROP DATABASE \(registryDatabase.name) -- \(UUID().uuidString.prefix(8))"
        let url = registryDatabase.cluster.endpoint(name).url
        let registry = try await Registry.create(
            at: f.path("created-home"),
            passphrase: passphrase("x"),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            backends: Backends(metadata: url, blobs: "directory"),
            memory: nil
        )
        #expect(try await registry.metadata.ledgerEnd() == 1)
        await registry.close()
        let names = try await PostgresTestSupport.admin(registryDatabase.cluster) { connection in
            var names: [String] = []
            for try await name in try await connection.query("SELECT datname FROM pg_database", logger: connection.logger).decode(String.self) {
                names.append(name)
            }
            return names
        }
        #expect(names.contains(name) && names.contains(registryDatabase.name), "\(names)")

        let gone = f.path("gone-home")
        try FileManager.default.createDirectory(atPath: gone, withIntermediateDirectories: true)
        let missing = registryDatabase.cluster.endpoint("missing_\(UUID().uuidString.prefix(8).lowercased())")
        try JSONEncoder().encode(Backends(metadata: missing.url, blobs: "directory")).write(to: URL(fileURLWithPath: "\(gone)/backends.json"))
        let message = await refusal { _ = try await Registry(at: gone, memory: nil) }
        #expect(message.hasPrefix("\(missing.engine): ") && message.contains("does not exist"), "\(message)")
        #expect(!names.contains(missing.database))
    }

    /// PostgreSQL restarted while pushes run (a failover, an upgrade): each push lands whole or fails in one line
    /// naming PostgreSQL, the registry reconnects by itself (no reopen), the next push lands, and fsck finds nothing
    /// half-written.
    @Test func pushesGoOnAcrossAPostgresRestart() async throws {
        let cluster = try await Offload.run { try PostgresTestSupport.privateCluster() }
        _ = try await PostgresTestSupport.admin(cluster) { connection in
            try await connection.query("CREATE DATABASE restarted", logger: connection.logger)
        }
        let f = try await RegistryFixture()
        let environment = ["PGPASSFILE": cluster.passfile]
        let registry = try await Registry.create(
            at: f.path("pg-home"),
            passphrase: passphrase("registry passphrase"),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            backends: Backends(metadata: cluster.endpoint("restarted").url),
            memory: f.memory,
            environment: environment
        )
        let alice = try person("alice")
        let key = Array(try Data(contentsOf: URL(fileURLWithPath: f.path("pg-home/registry.key"))))
        let registryKey = UnlockedIdentity(try Identity.decrypt(keyFile: key, passphrase: passphrase("registry passphrase")))
        try await registry.trust(alice.publicIdentity, by: Signer(registryKey))
        let dir = try f.makeModel("model", ["w.bin": bytes(2_000_000)])
        let restarted = Mutex(false)
        let pushes = Task {
            // Pushes until three have started after the restart; each must end (landed or refused) within a minute.
            var outcomes: [String] = []
            var afterwards = 0
            while afterwards < 3, outcomes.count < 500 {
                if restarted.withLock({ $0 }) { afterwards += 1 }
                outcomes.append(
                    await outcome(within: .seconds(60), diagnose: { await sessions(on: "restarted", of: cluster) }) {
                        "pushed \(try await registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice).version)"
                    }
                )
            }
            return outcomes
        }
        try await Task.sleep(for: .milliseconds(200))
        try await Offload.run { try PostgresTestSupport.restart(cluster) }
        restarted.withLock { $0 = true }
        let outcomes = await pushes.value
        #expect(outcomes.contains { !$0.hasPrefix("pushed ") } || outcomes.count > 3, "the restart came while pushes ran: \(outcomes)")
        for outcome in outcomes where !outcome.hasPrefix("pushed ") {
            #expect(outcome.hasPrefix("PostgreSQL at 127.0.0.1:\(cluster.port)/restarted") && !outcome.contains("\n"), "\(outcome)")
        }
        let after = try await registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        let landed = outcomes.filter { $0.hasPrefix("pushed ") }.count
        #expect(after.version == String(landed + 1), "versions numbered without a gap: \(outcomes)")
        let report = try await registry.fsck()
        #expect(report.problems.isEmpty, "\(report.problems)")
        #expect(try await registry.list(model: "m").count == landed + 1)
        await registry.close()
    }

    /// Pushes raced from two Registry instances: each push is decided on the ledger's end, the loser of a race is told
    /// the ledger moved and decides again, so every version lands, numbered 1...n without a gap or a repeat, and the
    /// audit chain stays one line.
    @Test func concurrentPushesFromTwoInstancesAllLandWithoutGaps() async throws {
        let f = try await RegistryFixture(.postgres)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let other = try await f.reopen()
        let perInstance = 4
        var directories: [String] = []
        for i in 0..<(2 * perInstance) { directories.append(try f.makeModel("model\(i)", ["w.bin": bytes(3000, seed: UInt8(i))])) }
        let paths = directories
        let versions = try await withThrowingTaskGroup(of: [String].self) { group in
            for (index, registry) in [f.registry, other].enumerated() {
                group.addTask {
                    var pushed: [String] = []
                    for i in 0..<perInstance {
                        let request = PushRequest(model: "team/m", paths: [paths[index * perInstance + i]])
                        pushed.append(try await registry.push(request, publisher: alice).version)
                    }
                    return pushed
                }
            }
            var all: [String] = []
            for try await pushed in group { all += pushed }
            return all
        }
        #expect(versions.compactMap(Int.init).sorted() == Array(1...(2 * perInstance)))
        let listed = try await other.list(model: "team/m", where: nil, limit: 100)
        #expect(listed.map(\.version).compactMap(Int.init).sorted() == Array(1...(2 * perInstance)))
        let report = try await f.registry.verifyAudit()
        #expect(report.entries >= 2 * perInstance + 2)
        let fsck = try await other.fsck()
        #expect(fsck.isClean, "\(fsck.problems)")
        await other.close()
    }

    /// A session limited to 5 uses, used 12 times at once through two instances: exactly 5 succeed, and the last use
    /// destroyed the key copy (a rotation followed, so the copy's sealed bytes open nowhere).
    @Test func sessionUsesAreCountedAcrossInstances() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        let other = try await f.reopen()
        let opened = try await f.registry.openSession(try ModelReference(parsing: "m/risk:1"), identity: bob, ttl: 600, maxUses: 5)
        let id = opened.info.id
        let successes = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<12 {
                let registry = i.isMultiple(of: 2) ? f.registry : other
                group.addTask {
                    do {
                        try await registry.useSession(id: id, principal: "bob")
                        return true
                    } catch CofferRegistryError.sessionRefused {
                        return false
                    }
                }
            }
            var count = 0
            for try await success in group where success { count += 1 }
            return count
        }
        #expect(successes == 5)
        let row = try #require(try await store(other).session(.id(id)))
        #expect(row.session.uses == 5)
        #expect(row.session.wrappedKey == nil, "the last use destroyed the key copy")
        await other.close()
    }

    /// One rate bucket (burst 3, refilling once a minute) drawn from by two instances at the same instant: three
    /// tokens in all, whichever instance asks.
    @Test func rateBucketsAreSharedAcrossInstances() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        let other = try await f.reopen()
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        let waits = try await withThrowingTaskGroup(of: Double?.self) { group in
            for i in 0..<8 {
                let registry = i.isMultiple(of: 2) ? f.registry : other
                group.addTask { try await registry.takeRateToken(session: "s1", rate: 1.0 / 60, burst: 3, now: now) }
            }
            var waits: [Double?] = []
            for try await wait in group { waits.append(wait) }
            return waits
        }
        #expect(waits.filter { $0 == nil }.count == 3)
        for wait in waits.compactMap({ $0 }) { #expect(abs(wait - 60) < 0.001) }
        // A minute later one token is back, for either instance.
        #expect(try await other.takeRateToken(session: "s1", rate: 1.0 / 60, burst: 3, now: now.addingTimeInterval(60)) == nil)
        #expect(try await f.registry.takeRateToken(session: "s1", rate: 1.0 / 60, burst: 3, now: now.addingTimeInterval(60)) != nil)
        await other.close()
    }

    /// One replica at a time signs audit heads: the first to ask leads, the others do not, and when the leader's
    /// connection ends (it stopped, or died) the next to ask takes over.
    @Test func oneInstanceLeadsAuditHeadSigningAndAnotherTakesOver() async throws {
        let f = try await RegistryFixture(.postgres)
        let first = try await f.reopen()
        let second = try await f.reopen()
        #expect(await first.leadsAuditHeadSigning())
        #expect(await first.leadsAuditHeadSigning(), "it keeps leading")
        #expect(await !second.leadsAuditHeadSigning())
        #expect(await !f.registry.leadsAuditHeadSigning())
        await first.close()
        #expect(await second.leadsAuditHeadSigning())
        #expect(await !f.registry.leadsAuditHeadSigning())
        await second.close()
    }

    /// Revoking a session crypto-shreds its key copy: the row's sealed bytes, as PostgreSQL may still hold them (a
    /// dead tuple, the WAL, a backup), were sealed under an epoch whose key file is destroyed, and open under no key
    /// file that exists. The other sealed values were re-sealed and still open.
    @Test func aRevokedSessionsKeyCopyIsCryptoShredded() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        let postgres = try #require(f.postgres)
        let opened = try await f.registry.openSession(try ModelReference(parsing: "m/risk:1"), identity: bob, ttl: 600)
        let id = opened.info.id
        let (sealed, epochBefore) = try await postgres.withDatabase { database in
            let row = try #require(try await database.query("SELECT wrapped_key FROM sessions WHERE id = \(id)").first)
            let sealed = Array(try row.decode(ByteBuffer.self).readableBytesView)
            return (sealed, try #require(try await database.scalar(Int64.self, "SELECT epoch FROM epoch_state")))
        }
        #expect(EpochSeal.epoch(of: sealed) == UInt32(epochBefore), "stored sealed under the current epoch")
        let keyFile = "\(f.home)/epochs/\(epochBefore).key"
        let key = try SecretKey(copying: Array(try Data(contentsOf: URL(fileURLWithPath: keyFile))).withUnsafeBytes { $0 })
        let rowKey = SealedColumn.sessionWrappedKey.rowKey([id])
        #expect(EpochSeal.open(sealed, key: key, column: .sessionWrappedKey, rowKey: rowKey) != nil, "the copy opened before the revocation")

        try await f.registry.revokeSession(id: id, identity: bob)

        #expect(!FileManager.default.fileExists(atPath: keyFile), "the old epoch's key file is destroyed")
        let epochs = try store(f.registry).keys.keyFileEpochs()
        #expect(epochs == [UInt32(epochBefore) + 1])
        for epoch in epochs {
            let current = try SecretKey(
                copying: Array(try Data(contentsOf: URL(fileURLWithPath: "\(f.home)/epochs/\(epoch).key"))).withUnsafeBytes { $0 }
            )
            var relabelled = sealed
            relabelled.replaceSubrange(4..<8, with: [UInt8(epoch >> 24), UInt8(epoch >> 16 & 0xff), UInt8(epoch >> 8 & 0xff), UInt8(epoch & 0xff)])
            #expect(EpochSeal.open(sealed, key: current, column: .sessionWrappedKey, rowKey: rowKey) == nil)
            #expect(EpochSeal.open(relabelled, key: current, column: .sessionWrappedKey, rowKey: rowKey) == nil)
        }
        let remaining = try await postgres.withDatabase { database in
            try await database.scalar(Int64.self, "SELECT count(*) FROM sessions WHERE wrapped_key IS NOT NULL")
        }
        #expect(remaining == 0)
        // The version's wrapped keys were re-sealed under the new epoch: bob still pulls.
        let pulled = try await f.registry.pull(try ModelReference(parsing: "m/risk:1"), identity: bob, into: f.path("out"))
        #expect(pulled.files == ["w.bin"])
        let fsck = try await f.registry.fsck()
        #expect(fsck.isClean, "\(fsck.problems)")
    }

    /// Erasing a version on PostgreSQL: its wrapped keys are deleted and the epoch moves on, so the sealed stanzas
    /// PostgreSQL may keep (dead tuples, WAL, backups) open under no key file that exists; the other version's keys
    /// were re-sealed and still open; the erased version refuses to be pulled.
    @Test func erasureCryptoShredsTheWrappedKeys() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        var request = PushRequest(model: "m/risk", paths: [f.path("model")])
        request.recipients = [bob.publicIdentity]
        _ = try await f.registry.push(request, publisher: alice)
        let postgres = try #require(f.postgres)
        let erasedID = try #require(try await f.registry.metadata.version(model: "m/risk", version: "1")).id
        let sealed = try await postgres.withDatabase { database in
            try await database.query("SELECT recipient_key_id, stanza FROM wrapped_keys WHERE version_id = \(erasedID)").map { row in
                let (recipient, stanza) = try row.decode((String, ByteBuffer).self)
                return (recipient, Array(stanza.readableBytesView))
            }
        }
        #expect(sealed.count == 3, "wrapped for the registry, the publisher and bob")
        let epochBefore = try store(f.registry).keys.keyFileEpochs()

        await #expect(try f.registry.erase(model: "m/risk", version: "1", by: Signer(alice)) == ["m/risk:1"])

        let epochsAfter = try store(f.registry).keys.keyFileEpochs()
        #expect(epochsAfter.count == 1 && epochsAfter.first! > epochBefore.last!, "\(epochBefore) -> \(epochsAfter)")
        let current = try SecretKey(
            copying: Array(try Data(contentsOf: URL(fileURLWithPath: "\(f.home)/epochs/\(epochsAfter[0]).key"))).withUnsafeBytes { $0 }
        )
        for (recipient, bytes) in sealed {
            #expect(EpochSeal.open(bytes, key: current, column: .wrappedKeyStanza, rowKey: "\(erasedID)\n\(recipient)") == nil)
        }
        await expectRefusal("erased") {
            _ = try await f.registry.pull(try ModelReference(parsing: "m/risk:1"), identity: bob, into: f.path("out1"))
        }
        let pulled = try await f.registry.pull(try ModelReference(parsing: "m/risk:2"), identity: bob, into: f.path("out2"))
        #expect(pulled.files == ["w.bin"])
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
    }

    /// `audit verify` walks 10,000 entries as a stream, and finds an edit in the middle of them.
    @Test func auditVerifyStreamsTenThousandEntries() async throws {
        let f = try await RegistryFixture(.postgres)
        let drafts = (0..<10_000).map { i in
            AuditDraft(principal: "p\(i % 7)", action: "infer", target: "session-\(i)", outcome: .ok, reason: "m:1")
        }
        let began = Date()
        try await f.registry.metadata.commit(UnitOfWork(audit: drafts))
        let appended = Date().timeIntervalSince(began)
        let verifying = Date()
        let report = try await f.registry.verifyAudit()
        let verified = Date().timeIntervalSince(verifying)
        #expect(report.entries == 10_001)
        print(
            "PostgreSQL audit: 10,000 entries appended in one commit in \(String(format: "%.2f", appended)) s, verified in \(String(format: "%.2f", verified)) s"
        )

        try await f.tamper("UPDATE audit_log SET reason = 'm:2' WHERE seq = 5000")
        await expectRefusal("entry 5000 was edited") { _ = try await f.registry.verifyAudit() }
    }

    /// Rows changed behind the registry's back are caught: an alias moved by SQL (fsck's replay of the ledger
    /// disagrees), and an immutability trigger left disabled (the store's own check).
    @Test func fsckCatchesRowsChangedBehindTheRegistrysBack() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        _ = try await f.registry.push(PushRequest(model: "m/risk", paths: [f.path("model")]), publisher: alice)
        let clean = try await f.registry.fsck()
        #expect(clean.isClean, "\(clean.problems)")

        try await f.tamper("DELETE FROM grants WHERE principal = 'bob'")
        let report = try await f.registry.fsck()
        #expect(!report.isClean)
        #expect(report.problems.contains { $0.contains("grant") }, "\(report.problems)")

        let postgres = try #require(f.postgres)
        _ = try await postgres.withDatabase { database in try await database.query("ALTER TABLE ledger DISABLE TRIGGER ledger_is_append_only") }
        let disabled = try await f.registry.fsck()
        #expect(disabled.problems.contains("PostgreSQL trigger ledger_is_append_only is disabled (its immutability rule is not enforced)"))

        _ = try await postgres.withDatabase { database in try await database.query("INSERT INTO coffer_migrations (name) VALUES ('9999_unknown.sql')")
        }
        let migrations = try await f.registry.fsck()
        #expect(migrations.problems.contains { $0.hasPrefix("PostgreSQL migrations recorded") && $0.contains("9999_unknown.sql") })
    }

    /// A sealed wrapped key copied onto another recipient's row opens nowhere: the sealing binds each value to its
    /// row, so swapping rows behind the registry's back is caught, not served.
    @Test func aSealedValueMovedToAnotherRowDoesNotOpen() async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let f = try await populated(alice, bob)
        try await f.tamper(
            """
            UPDATE wrapped_keys w SET stanza = o.stanza FROM wrapped_keys o
            WHERE w.version_id = o.version_id AND w.recipient_key_id <> o.recipient_key_id
            """
        )
        await expectRefusal("does not open under epoch") {
            _ = try await f.registry.pull(try ModelReference(parsing: "m/risk:1"), identity: bob, into: f.path("out"))
        }
        #expect(!f.exists("out/w.bin"))
    }
}

/// Coffer's sessions on `database` as pg_stat_activity shows them (state, wait, query), or why they could not be read.
private func sessions(on database: String, of cluster: PostgresTestSupport.Cluster) async -> String {
    do {
        return try await PostgresTestSupport.admin(cluster) { connection in
            let rows = try await connection.query(
                """
                SELECT pid::text || ' ' || coalesce(state, '?') || ' waiting on ' || coalesce(wait_event_type || '/' || wait_event, '-')
                    || ' since ' || coalesce(state_change::text, '?') || ': ' || coalesce(query, '?')
                FROM pg_stat_activity WHERE datname = \(database) AND application_name = 'coffer'
                """,
                logger: connection.logger
            )
            var lines: [String] = []
            for try await row in rows { lines.append(try row.decode(String.self)) }
            return "sessions on \(database): \(lines.isEmpty ? "none" : lines.joined(separator: "; "))"
        }
    } catch {
        return "pg_stat_activity unreadable: \(error)"
    }
}

/// What `body` returned or threw (as its message), or "hung" when it took longer than `limit`, with what `diagnose`
/// saw at that moment: a wait that never ends fails the test instead of stopping the suite, and says where it waited.
private func outcome(
    within limit: Duration,
    diagnose: @escaping @Sendable () async -> String = { "" },
    _ body: @escaping @Sendable () async throws -> String
) async -> String {
    let answered = Mutex(false)
    return await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
        let first = { @Sendable () -> Bool in
            answered.withLock { done in
                defer { done = true }
                return !done
            }
        }
        let work = Task {
            let result: String
            do { result = try await body() } catch { result = "\(error)" }
            if first() { continuation.resume(returning: result) }
        }
        Task {
            try? await Task.sleep(for: limit)
            let seen = await diagnose()
            if first() {
                work.cancel()
                continuation.resume(returning: "hung for \(limit): \(seen)")
            }
        }
    }
}
