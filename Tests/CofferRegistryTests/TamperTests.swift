import CofferCrypto
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// Every kind of stored artifact, edited behind the registry's back, is caught by verify and pull, and nothing is written.
struct TamperTests {
    enum Edit: String, CaseIterable {
        case blobByte, blobSwap, statementPayload, modelSigningBundle, modelSigningHint, fileRowDigest, fileRowPath, versionDigest, wrappedKey
        case lineageColumn
    }

    /// Runs SQL as an attacker with the database file would: immutability triggers dropped first.
    private func sql(_ f: RegistryFixture, _ statement: String, _ arguments: StatementArguments = []) async throws {
        try await f.sqlite().write { db in
            for trigger in ["versions_are_immutable", "files_are_immutable", "attestations_are_immutable"] {
                try db.execute(sql: "DROP TRIGGER IF EXISTS \(trigger)")
            }
            try db.execute(sql: statement, arguments: arguments)
        }
    }

    @Test(arguments: Edit.allCases)
    func editIsDetected(edit: Edit) async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(90_000), "b.bin": bytes(90_000, seed: 7)])
        var first = PushRequest(model: "m", paths: [dir])
        first.datasetID = "randhie"
        _ = try await f.registry.push(first, publisher: alice)
        try f.makeModel("model", ["a.bin": bytes(90_000, seed: 3)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        let v1 = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:1")).id)
        let v2 = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:2")).id)
        // Verified and shown once before the edit: the registry keeps what a signature check concluded for the exact
        // bytes it checked, and an edit must not be answered from that.
        let reference = try ModelReference(parsing: "m:1")
        _ = try await f.registry.verify(reference)
        #expect(try await f.registry.show(reference).verified)

        switch edit {
        case .blobByte:
            let path = f.blobPath(v1.files[0].sealedSHA256)
            var data = try Data(contentsOf: URL(fileURLWithPath: path))
            data[200] ^= 0x80
            try data.write(to: URL(fileURLWithPath: path))
        case .blobSwap:
            let target = f.blobPath(v1.files[0].sealedSHA256)
            try FileManager.default.removeItem(atPath: target)
            try FileManager.default.copyItem(atPath: f.blobPath(v2.files[0].sealedSHA256), toPath: target)
        case .statementPayload:
            var envelope = try DSSEEnvelope(jsonBytes: Array(v1.envelope!))
            let text = String(decoding: Data(base64Encoded: envelope.payload)!, as: UTF8.self).replacingOccurrences(of: "randhie", with: "other")
            envelope.payload = Data(text.utf8).base64EncodedString()
            try await sql(f, "UPDATE attestations SET document = ? WHERE version_id = ? AND kind = 'dsse'", [Data(envelope.jsonBytes), v1.id])
        case .modelSigningBundle:
            let text = String(decoding: v1.modelSignature!, as: UTF8.self).replacingOccurrences(of: "\"sig\":\"M", with: "\"sig\":\"N")
            try await sql(f, "UPDATE attestations SET document = ? WHERE version_id = ? AND kind = 'model-signing'", [Data(text.utf8), v1.id])
        case .modelSigningHint:
            // An unsigned field of the bundle (found by tools/campaign/tamper): caught because the bytes must be exact.
            var text = String(decoding: v1.modelSignature!, as: UTF8.self)
            let hint = text.range(of: "\"hint\":\"")!.upperBound
            text.replaceSubrange(hint..<text.index(after: hint), with: text[hint] == "0" ? "1" : "0")
            try await sql(f, "UPDATE attestations SET document = ? WHERE version_id = ? AND kind = 'model-signing'", [Data(text.utf8), v1.id])
        case .fileRowDigest:
            try await sql(
                f,
                "UPDATE files SET plaintext_sha256 = ? WHERE version_id = ? AND path = 'a.bin'",
                [String(repeating: "0", count: 64), v1.id]
            )
        case .fileRowPath:
            try await sql(f, "UPDATE files SET path = '../../escape' WHERE version_id = ? AND path = 'a.bin'", [v1.id])
        case .versionDigest:
            try await sql(f, "UPDATE versions SET digest = ? WHERE id = ?", [v2.digest, v1.id])
        case .wrappedKey:
            let stanza = try await f.sqlite().read { db in
                try Data.fetchOne(
                    db,
                    sql: "SELECT stanza FROM wrapped_keys WHERE version_id = ? AND recipient_key_id = ?",
                    arguments: [v1.id, alice.publicIdentity.keyID]
                )!
            }
            var edited = stanza
            edited[edited.count - 5] ^= 1
            try await sql(
                f,
                "UPDATE wrapped_keys SET stanza = ? WHERE version_id = ? AND recipient_key_id = ?",
                [edited, v1.id, alice.publicIdentity.keyID]
            )
        case .lineageColumn:
            try await sql(f, "UPDATE versions SET dataset_id = 'other' WHERE id = ?", [v1.id])
        }

        if ![.blobByte, .blobSwap, .wrappedKey].contains(edit) {
            // `show` reads no blob and no key.
            #expect(try await !f.registry.show(reference).verified, "show after \(edit)")
        }
        await #expect(throws: CofferRegistryError.self, "pull after \(edit)") {
            _ = try await f.registry.pull(reference, identity: alice, into: f.path("out"))
        }
        let written = (try? FileManager.default.contentsOfDirectory(atPath: f.path("out"))) ?? []
        #expect(written.isEmpty, "\(edit) left \(written)")
        if edit != .wrappedKey {
            // Key-free verification catches everything but a damaged wrapped key, which only a key holder can notice.
            await #expect(throws: CofferRegistryError.self, "verify after \(edit)") { _ = try await f.registry.verify(reference) }
            await #expect(try !f.registry.fsck().isClean)
        } else {
            await #expect(throws: CofferRegistryError.self) { _ = try await f.registry.verify(reference, readingDataWith: alice) }
        }
        _ = try await f.registry.verify(try ModelReference(parsing: "m:2"))  // the other version is untouched
    }

    /// Found by the dsse fuzz target: a file size of 1e300 in a statement trapped converting it to Int.
    @Test func statementNumbersOutOfRangeAreRefusedNotTrapped() throws {
        let input = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/fuzz/regressions/dsse/statement-file-size-beyond-int.json")
        let statement = try InTotoStatement(jsonBytes: Array(try Data(contentsOf: input)))
        #expect(throws: CofferRegistryError.self) { try ModelStatement(statement) }
        for number in [1e300, -1e300, 2.5, Double.infinity, Double.nan] {
            #expect(JSONValue.number(number).integerValue == nil)
        }
        #expect(JSONValue.number(21512).integerValue == 21512)
    }

    /// helper-38: a rekey attestation's numbers were converted with Int(_:) too. A server holding the registry key can
    /// sign one, and every client that pulled, verified or showed the version trapped; now it does not parse.
    @Test func rekeyNumbersOutOfRangeAreRefusedNotTrapped() throws {
        let file = ModelStatement.File(path: "w.bin", size: 10, plaintextSHA256: String(repeating: "a", count: 64), sealedSHA256: "b", sealedSize: 90)
        let honest = RekeyStatement(model: "m", version: "1", versionDigest: "d", rekeyedAt: "t", by: "admin", chunkSize: 65536, files: [file])
        #expect(RekeyStatement(honest.statement)?.files == [file])
        for (field, value) in [("sealed_size", 1e300), ("size", -1), ("sealed_size", 2.5), ("chunk_size", 1e300), ("chunk_size", 0)] {
            var statement = honest.statement
            guard case .object(var predicate) = statement.predicate, case .array(var files)? = predicate["files"], case .object(var entry) = files[0]
            else { throw CofferRegistryError.tampered("not the shape written") }
            if field == "chunk_size" {
                predicate[field] = .number(value)
            } else {
                entry[field] = .number(value)
                files[0] = .object(entry)
                predicate["files"] = .array(files)
            }
            statement.predicate = .object(predicate)
            #expect(RekeyStatement(statement) == nil, "\(field) \(value)")
        }
    }

    @Test func lockedDatabaseFailsAfterTheBusyTimeout() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let dir = try f.makeModel("model", ["a.bin": bytes(1000)])
        let impatient = try await Registry(at: f.home, busyTimeout: 0.2)
        // Another process holds the write lock: a transaction left open on a connection of its own.
        var holding = Configuration()
        holding.allowsUnsafeTransactions = true
        let holder = try DatabaseQueue(path: f.home + "/registry.sqlite", configuration: holding)
        try holder.inDatabase { db in try db.execute(sql: "BEGIN IMMEDIATE") }
        await #expect(throws: CofferRegistryError.databaseBusy) {
            _ = try await impatient.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        }
        try holder.inDatabase { db in try db.execute(sql: "ROLLBACK") }
        #expect(CofferRegistryError.databaseBusy.description.contains("locked by another process"))
        await #expect(try f.registry.list().isEmpty)
    }

    @Test func tagsAndLineage() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        let dir = try f.makeModel("model", ["a.bin": bytes(1000)])
        var base = PushRequest(model: "base", paths: [dir])
        base.datasetID = "randhie"
        _ = try await f.registry.push(base, publisher: alice)
        var tuned = PushRequest(model: "tuned", paths: [dir])
        tuned.parent = try ModelReference(parsing: "base:1")
        _ = try await f.registry.push(tuned, publisher: alice)
        let chain = try await f.registry.lineage(try ModelReference(parsing: "tuned"))
        #expect(chain.map { "\($0.model):\($0.version)" } == ["tuned:1", "base:1"])
        #expect(chain[0].parent == "base:1" && chain[1].datasetID == "randhie")
        try await f.registry.tag(try ModelReference(parsing: "tuned:1"), set: ["stage": "canary"])
        await #expect(try f.registry.show(try ModelReference(parsing: "tuned")).tags == ["stage": "canary"])
        try await f.registry.tag(try ModelReference(parsing: "tuned:1"), set: ["stage": nil])
        await #expect(try f.registry.show(try ModelReference(parsing: "tuned")).tags.isEmpty)
    }
}
