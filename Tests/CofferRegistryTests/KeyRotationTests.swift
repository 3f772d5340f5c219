import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// Key rotation, recipients, rekeying and erasure (GovernanceTests' registries).
extension GovernanceTests {
    @Test(arguments: MetadataBackend.available) func rotationRewrapsEveryKeyAndTheOldKeyOpensNothing(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        for _ in 0..<3 { _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice) }
        try await f.registry.addRecipient(try ModelReference(parsing: "m"), recipient: bob.publicIdentity, identity: alice)
        let registryKey = { () throws -> UnlockedIdentity in
            UnlockedIdentity(try Identity.decrypt(keyFile: try f.read("home/registry.key"), passphrase: passphrase(Self.passphraseText)))
        }
        let old = try registryKey()
        await #expect(try f.registry.signAuditHead(with: old) > 0)
        let fresh = try await f.registry.rotateKey(
            current: old,
            passphrase: passphrase(Self.passphraseText),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            by: admin
        )

        let reopened = try await f.reopen()
        await #expect(try reopened.identity == fresh)
        let current = try registryKey()
        #expect(current.publicIdentity == fresh, "registry.key now holds the new key")
        for version in ["1", "2", "3"] {
            let stored = try await reopened.loadVersion(try await reopened.resolve(try ModelReference(parsing: "m:\(version)")).id)
            await #expect(throws: CofferRegistryError.self) { _ = try await reopened.unwrapDataKey(stored, identity: old) }
            _ = try await reopened.unwrapDataKey(stored, identity: current)
            _ = try await reopened.pull(try ModelReference(parsing: "m:\(version)"), identity: bob, into: f.path("out\(version)"))
        }
        #expect(try f.read("out2/weights.bin") == bytes(20_000))
        let report = try await reopened.verifyAudit()
        #expect(report.signedThrough > 0, "heads signed by the retired key still verify")
        _ = try await reopened.signAuditHead(with: current)
        await #expect(try reopened.verifyAudit().unsigned == 0)
        await #expect(try reopened.fsck().problems.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func recipientsCanBeRemoved(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let (f, admin, dir) = try await owned(alice, on: backend)
        // bob is granted decrypt after the push, without the registry's key: the version's key is not wrapped for him.
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        await expectRefusal("holds no key") { _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("a")) }
        try await f.registry.addRecipient(try ModelReference(parsing: "m:1"), recipient: bob.publicIdentity, identity: alice)
        _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("b"))
        await #expect(
            try f.registry.removeRecipient(
                try ModelReference(parsing: "m"),
                keyID: bob.publicIdentity.keyID,
                by: try f.registry.principal(for: alice.identity)
            ) == 1
        )
        await expectRefusal("holds no key") { _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("c")) }
        await expectRefusal("never removed") {
            try await f.registry.removeRecipient(
                try ModelReference(parsing: "m"),
                keyID: try f.registry.identity.keyID,
                by: try f.registry.principal(for: alice.identity)
            )
        }
    }

    /// Through a registry opened with one SQLite connection (a command's) as with a pool (a server's).
    @Test(arguments: [SQLiteConnections.pool, .one])
    func erasureLeavesNothingDecryptableEvenFromABackup(connections: SQLiteConnections) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice)
        try await f.registry.setBudget(dataset: "d", epsilon: 10, delta: 1e-5, by: admin)
        _ = try await f.registry.push(
            request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]),
            publisher: alice
        )
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        try await f.registry.setAlias("prod", model: "m", version: "1", by: admin)
        let spent = try await f.registry.budget(dataset: "d").spent
        let stanzas = try await DatabaseQueue(path: "\(f.home)/registry.sqlite").read { db in
            try Data.fetchAll(db, sql: "SELECT stanza FROM wrapped_keys WHERE version_id = 1")
        }
        #expect(stanzas.count == 2, "the registry's and the publisher's")
        // A backup of the blob store's files, as an operator's would be.
        for digest in f.blobDigests() {
            try FileManager.default.createDirectory(atPath: f.path("backup/sha256/\(digest.prefix(2))"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: f.blobPath(digest), toPath: f.path("backup/sha256/\(digest.prefix(2))/\(digest)"))
        }

        let eraser = connections == .pool ? f.registry : try await Registry(at: f.home, memory: f.memory, sqlite: .one)
        await #expect(try eraser.erase(model: "m", version: "1", by: admin) == ["m:1"])
        // The keys are gone from the database, its free pages and its log once the erasure returns (a later commit
        // through the other registry would truncate the log too).
        for name in ["registry.sqlite", "registry.sqlite-wal"] {
            guard let file = FileManager.default.contents(atPath: "\(f.home)/\(name)") else { continue }
            for stanza in stanzas { #expect(file.range(of: stanza) == nil, "an erased key stanza survives in \(name)") }
        }
        let erasedPull = await refusal { _ = try await f.registry.pull(try ModelReference(parsing: "m:1"), identity: alice, into: f.path("out")) }
        #expect(erasedPull.contains("m:1 was erased at") && erasedPull.contains("by alice"))
        let shown = try await f.registry.show(try ModelReference(parsing: "m:1"))
        #expect(shown.erasedBy == "alice" && shown.erasedAt != nil && shown.aliases.isEmpty)
        await expectRefusal("was erased") { _ = try await f.registry.verify(try ModelReference(parsing: "m:1")) }
        await #expect(try f.registry.budget(dataset: "d").spent == spent, "erasure refunds nothing")
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        _ = try await f.registry.pull(try ModelReference(parsing: "m:2"), identity: alice, into: f.path("still"))

        // The backup's blobs hold no stanza.
        let registryKey = try Identity.decrypt(keyFile: try f.read("home/registry.key"), passphrase: passphrase(Self.passphraseText))
        let erasedBlob = try await f.registry.show(try ModelReference(parsing: "m:1")).files[0].sealedSHA256
        let backup = f.path("backup/sha256/\(erasedBlob.prefix(2))/\(erasedBlob)")
        #expect(FileManager.default.fileExists(atPath: backup) && !f.blobExists(erasedBlob))
        for identity in [0, 1] {
            let source = try FileDescriptorStream(readingFrom: backup)
            #expect(throws: CofferCryptoError.self) {
                if identity == 0 {
                    _ = try SealedFile.open(from: source, to: DiscardingSink(), identity: alice.identity)
                } else {
                    _ = try SealedFile.open(from: source, to: DiscardingSink(), identity: registryKey)
                }
            }
        }
        await #expect(try f.registry.auditEntries().contains { $0.action == "erase" && $0.target == "m:1" })
    }
}

extension GovernanceTests {
    /// Another process's read transaction holds a snapshot, which blocks the truncation of the log after an erasure:
    /// the erasure stands, and the truncation is carried out by a later commit of another open registry (a server's),
    /// or else by the next open.
    @Test func anErasureALongReadKeepsInTheLogIsTruncatedAwayLater() async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice)
        let database = "\(f.home)/registry.sqlite"
        func stanzas(_ version: Int) async throws -> [Data] {
            try await DatabaseQueue(path: database).read { db in
                try Data.fetchAll(db, sql: "SELECT stanza FROM wrapped_keys WHERE version_id = ?", arguments: [version])
            }
        }
        func filesHolding(_ stanzas: [Data]) -> [String] {
            ["registry.sqlite", "registry.sqlite-wal"].filter { name in
                let file = FileManager.default.contents(atPath: "\(f.home)/\(name)") ?? Data()
                return stanzas.contains { file.range(of: $0) != nil }
            }
        }
        var holding = Configuration()
        holding.allowsUnsafeTransactions = true
        let reader = try DatabaseQueue(path: database, configuration: holding)
        func eraseWhileReading(_ version: Int) async throws -> [Data] {
            _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
            let erased = try await stanzas(version)
            try reader.inDatabase { db in
                try db.execute(sql: "BEGIN")
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM versions")
            }
            let impatient = try await f.reopen(busyTimeout: 0.2)
            await #expect(try impatient.erase(model: "m", version: "\(version)", by: admin) == ["m:\(version)"])
            #expect(filesHolding(erased) == ["registry.sqlite-wal"], "the reader's snapshot kept the log's frames")
            try reader.inDatabase { db in try db.execute(sql: "COMMIT") }
            return erased
        }

        let first = try await eraseWhileReading(1)
        try await f.registry.setBudget(dataset: "d", epsilon: 1, delta: 1e-5, by: admin)  // any commit
        #expect(filesHolding(first).isEmpty)
        let second = try await eraseWhileReading(2)
        _ = try await f.reopen()
        #expect(filesHolding(second).isEmpty)
        await expectRefusal("was erased") { _ = try await f.registry.verify(try ModelReference(parsing: "m:1")) }
    }

    @Test(arguments: MetadataBackend.available) func rekeyLocksOutAKeptDataKeyAndEveryoneElseStillPulls(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let carol = try person("carol")
        let (f, admin, dir) = try await owned(alice, on: backend)
        for (name, who) in [("bob", bob.publicIdentity), ("carol", carol.publicIdentity)] {
            try await f.registry.addPrincipal(name: name, identity: who, roles: [.reader, .decrypt], by: admin)
        }
        var request = PushRequest(model: "m", paths: [dir])
        request.recipients = [bob.publicIdentity, carol.publicIdentity]
        _ = try await f.registry.push(request, publisher: alice)
        let reference = try ModelReference(parsing: "m:1")
        // Carol keeps the data key, then loses her access.
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(reference).id)
        let kept = try await f.registry.unwrapDataKey(stored, identity: carol)
        let oldBlob = stored.files[0].sealedSHA256
        await #expect(
            try f.registry.removeRecipient(reference, keyID: carol.publicIdentity.keyID, by: try f.registry.principal(for: alice.identity)) == 1
        )

        let result = try await f.registry.rekey(reference, registryIdentity: try f.registryKey, by: admin)
        await #expect(
            Set(result.recipients) == [try f.registry.identity.keyID, alice.publicIdentity.keyID, bob.publicIdentity.keyID] && result.dropped.isEmpty
        )
        #expect(!f.blobExists(oldBlob), "the blobs under the old key are gone")
        let (current, _) = try await f.registry.authenticate(try await f.registry.loadVersion(stored.id))
        #expect(current.files[0].sealedSHA256 != oldBlob && current.files[0].plaintextSHA256 == stored.files[0].plaintextSHA256)
        let source = try FileDescriptorStream(readingFrom: f.blobPath(current.files[0].sealedSHA256))
        let (header, length) = try SealedFileHeader.read(from: source)
        #expect(throws: CofferCryptoError.self) {
            _ = try SealedFile.openPayload(from: source, to: DiscardingSink(), header: header, headerLength: length, dataKey: kept.key)
        }
        for (who, out) in [(0, "a"), (1, "b")] {
            if who == 0 {
                _ = try await f.registry.pull(reference, identity: alice, into: f.path(out))
            } else {
                _ = try await f.registry.pull(reference, identity: bob, into: f.path(out))
            }
            #expect(try f.read("\(out)/weights.bin") == bytes(20_000))
        }
        await #expect(try f.registry.verify(reference).files == 1)
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.isEmpty && fsck.orphanBlobs.isEmpty, "\(fsck.problems) \(fsck.orphanBlobs)")

        // The re-encrypted files are bound to the registry's signed record.
        try await f.tamper("UPDATE rekeyed_files SET sealed_size = sealed_size + 1")
        await expectRefusal("the re-encrypted files table disagrees with the rekey attestation") { _ = try await f.registry.verify(reference) }
    }
}
