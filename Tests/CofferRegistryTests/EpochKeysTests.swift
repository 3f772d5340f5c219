import CofferCrypto
import CofferRegistry
import Foundation
import PostgresNIO
import Testing

@testable import CofferRegistry

/// Epoch keys: the sealing format, key files, rotation and its recovery after a crash at each step.
@Suite(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct EpochKeysTests {
    // MARK: - The sealing format

    @Test func sealedValuesFollowTheFormatAndAreBoundToTheirRow() throws {
        let key = SecretKey.random()
        let other = SecretKey.random()
        let value = bytes(80, seed: 7)
        let column = SealedColumn.wrappedKeyStanza
        let sealed = EpochSeal.seal(value, epoch: 0x0102_0304, key: key, column: column, rowKey: "1\nabc")
        #expect(sealed.count == value.count + EpochSeal.overhead)
        #expect(Array(sealed[0..<4]) == Array("cfe1".utf8))
        #expect(Array(sealed[4..<8]) == [1, 2, 3, 4], "u32be(epoch)")
        #expect(EpochSeal.epoch(of: sealed) == 0x0102_0304)
        #expect(EpochSeal.open(sealed, key: key, column: column, rowKey: "1\nabc") == value)
        #expect(EpochSeal.open(sealed, key: other, column: column, rowKey: "1\nabc") == nil, "another key")
        #expect(EpochSeal.open(sealed, key: key, column: column, rowKey: "2\nabc") == nil, "another row")
        #expect(EpochSeal.open(sealed, key: key, column: .sessionWrappedKey, rowKey: "1\nabc") == nil, "another column")
        var altered = sealed
        altered[40] ^= 1
        #expect(EpochSeal.open(altered, key: key, column: column, rowKey: "1\nabc") == nil, "altered bytes")
        var relabelled = sealed
        relabelled[7] ^= 1
        #expect(EpochSeal.open(relabelled, key: key, column: column, rowKey: "1\nabc") == nil, "the epoch is authenticated")
        #expect(EpochSeal.epoch(of: Array("not sealed".utf8)) == nil)
        // Two seals of one value differ (random nonces): equal values cannot be told apart on disk.
        #expect(
            EpochSeal.seal(value, epoch: 1, key: key, column: column, rowKey: "k")
                != EpochSeal.seal(value, epoch: 1, key: key, column: column, rowKey: "k")
        )
    }

    // MARK: - Key files and rotation

    @Test func theFirstKeyFileIsPrivateAndDurable() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            #expect(try keys.keyFileEpochs() == [1])
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(fixture.home)/epochs/1.key")
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            #expect((attributes[.size] as? Int) == 32)
            let directory = try FileManager.default.attributesOfItem(atPath: "\(fixture.home)/epochs")
            #expect((directory[.posixPermissions] as? Int) == 0o700)
            // Opening again changes nothing.
            _ = try await EpochKeys.open(home: fixture.home, database: database)
            #expect(try keys.keyFileEpochs() == [1])
        }
    }

    /// A rotation re-seals every value of every sealed column (in batches), records the new epoch and destroys the old
    /// key file; values read before it do not open after it.
    @Test func rotationResealsEveryValueAndDestroysTheOldKey() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database, columns: SealedColumn.all, batchSize: 3)
            let stanzas = try await fixture.insertWrappedKeys(11, keys: keys, database: database)
            let sessions = try await fixture.insertSessions(4, keys: keys, database: database)
            let before = try await fixture.sealedValues(database)

            #expect(try await keys.rotate(database) == 2)
            #expect(try keys.keyFileEpochs() == [2])
            #expect(try await database.scalar(Int64.self, "SELECT epoch FROM epoch_state") == 2)
            let after = try await fixture.sealedValues(database)
            #expect(after.count == stanzas.count + sessions.count)
            for (row, sealed) in after {
                #expect(EpochSeal.epoch(of: sealed) == 2, "\(row.column) \(row.key)")
                #expect(try keys.open(sealed, column: row.column, rowKey: row.key) == (stanzas[row.key] ?? sessions[row.key]))
            }
            for (row, sealed) in before {
                #expect(throws: CofferRegistryError.self, "a value sealed under the destroyed epoch no longer opens") {
                    _ = try keys.open(sealed, column: row.column, rowKey: row.key)
                }
            }
            // A session whose key copy is gone (NULL) stays NULL.
            #expect(try await database.scalar(Int64.self, "SELECT count(*) FROM sessions WHERE wrapped_key IS NULL") == 1)
        }
    }

    /// Writers sealing values while a rotation runs: each writer's transaction reads the epoch FOR SHARE, so nothing
    /// is sealed under an epoch whose key is then destroyed; afterwards every value opens.
    @Test func writersDuringARotationNeverUseADestroyedKey() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        var options = PostgresTestSupport.testOptions
        options.maximumConnections = 6
        try await test.withDatabase(options: options) { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            let versionID = try await fixture.makeVersion(database)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<3 {
                    group.addTask {
                        for i in 0..<20 {
                            let recipient = "w\(writer)-\(i)"
                            let rowKey = "\(versionID)\n\(recipient)"
                            try await database.transaction { connection in
                                let sealed = try await keys.seal(
                                    Array(recipient.utf8),
                                    column: .wrappedKeyStanza,
                                    rowKey: rowKey,
                                    on: connection
                                )
                                try await connection.rows(
                                    "INSERT INTO wrapped_keys VALUES (\(versionID), \(recipient), \(ByteBuffer(bytes: sealed)))"
                                )
                            }
                        }
                    }
                }
                group.addTask {
                    for _ in 0..<3 {
                        try await keys.rotate(database)
                        try await Task.sleep(for: .milliseconds(10))
                    }
                }
                try await group.waitForAll()
            }
            #expect(try keys.keyFileEpochs() == [4])
            let values = try await fixture.sealedValues(database)
            #expect(values.count == 60)
            for (row, sealed) in values {
                #expect(EpochSeal.epoch(of: sealed) == 4)
                #expect(try keys.open(sealed, column: row.column, rowKey: row.key) == Array(row.key.split(separator: "\n")[1].utf8))
            }
        }
    }

    // MARK: - Recovery

    /// An erasure committed (rotation_due set) but the process died before rotating: the next open rotates.
    @Test func openFinishesARotationAnErasureLeftDue() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            let stanzas = try await fixture.insertWrappedKeys(3, keys: keys, database: database)
            let victim = try #require(stanzas.keys.sorted().first)
            let recipient = String(victim.split(separator: "\n")[1])
            try await database.transaction { connection in
                try await connection.rows("DELETE FROM wrapped_keys WHERE recipient_key_id = \(recipient)")
                try await EpochKeys.markRotationDue(on: connection)
            }
            // ... crash here ...
            let reopened = try await EpochKeys.open(home: fixture.home, database: database)
            #expect(try reopened.keyFileEpochs() == [2])
            #expect(try await database.scalar(Bool.self, "SELECT rotation_due FROM epoch_state") == false)
            for (row, sealed) in try await fixture.sealedValues(database) {
                #expect(EpochSeal.epoch(of: sealed) == 2)
                #expect(try reopened.open(sealed, column: row.column, rowKey: row.key) == stanzas[row.key])
            }
        }
    }

    /// A rotation that wrote its new key file but crashed before committing: the file is destroyed at the next open
    /// (no value uses it) and the epoch stays; an old key file a crash left after the commit is destroyed too.
    @Test func openDestroysKeyFilesNoValueNeeds() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            let stanzas = try await fixture.insertWrappedKeys(2, keys: keys, database: database)
            #expect(try keys.keyFileEpochs() == [1])
            // A newer file a crashed rotation left, and an older one a crash after a commit left.
            try Data(bytes(32, seed: 3)).write(to: URL(fileURLWithPath: "\(fixture.home)/epochs/2.key"))
            try Data(bytes(32, seed: 4)).write(to: URL(fileURLWithPath: "\(fixture.home)/epochs/0.key"))
            let reopened = try await EpochKeys.open(home: fixture.home, database: database)
            #expect(try reopened.keyFileEpochs() == [1])
            for (row, sealed) in try await fixture.sealedValues(database) {
                #expect(try reopened.open(sealed, column: row.column, rowKey: row.key) == stanzas[row.key])
            }
        }
    }

    /// Opening settled keys (nothing due, every value under the current epoch, its key file the only one) is one read:
    /// no lock on epoch_state, so a rotation holding it elsewhere does not hold up every command (a recovery would wait,
    /// and fail here at lock_timeout), and no transaction to commit.
    @Test func openingSettledKeysTakesNoLock() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let first = try await EpochKeys.open(home: fixture.home, database: database)
            let stanzas = try await fixture.insertWrappedKeys(2, keys: first, database: database)
            try await test.withDatabase { holder in
                try await holder.transaction { connection in
                    try await connection.rows("SELECT epoch FROM epoch_state FOR UPDATE")
                    try await database.query("SET lock_timeout = '3s'")
                    #expect(try await EpochKeys(home: fixture.home, columns: SealedColumn.all).isSettled(database))
                    let keys = try await EpochKeys.open(home: fixture.home, database: database)
                    #expect(try keys.keyFileEpochs() == [1])
                    for (row, sealed) in try await fixture.sealedValues(database) {
                        #expect(try keys.open(sealed, column: row.column, rowKey: row.key) == stanzas[row.key])
                    }
                }
            }
        }
    }

    /// What the one read must not miss: a value under another epoch than the current one (a row restored from a backup
    /// taken before a rotation) with only the current key file there. Opening goes on to the recovery, which finds that
    /// value's key destroyed and says so.
    @Test func aValueUnderAnotherEpochIsNotSettled() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            _ = try await fixture.insertWrappedKeys(1, keys: keys, database: database)
            let (row, old) = try #require(try await fixture.sealedValues(database).first)
            #expect(try await keys.rotate(database) == 2)
            #expect(try await keys.isSettled(database))
            let parts = row.key.split(separator: "\n").map(String.init)
            try await database.query(
                "UPDATE wrapped_keys SET stanza = \(ByteBuffer(bytes: old)) WHERE version_id = \(Int64(parts[0])!) AND recipient_key_id = \(parts[1])"
            )
            #expect(try keys.keyFileEpochs() == [2])
            #expect(try await !keys.isSettled(database))
            await #expect(
                throws: CofferRegistryError.tampered(
                    "wrapped_keys.stanza of row \(parts[0])/\(parts[1]) is sealed under epoch 1, whose key is destroyed"
                )
            ) {
                _ = try await EpochKeys.open(home: fixture.home, database: database)
            }
            // A due rotation and a stray key file are not settled either (their recovery is tested above).
            try await database.query("DELETE FROM wrapped_keys")
            try await database.query("UPDATE epoch_state SET rotation_due = TRUE")
            #expect(try await !keys.isSettled(database))
            try await database.query("UPDATE epoch_state SET rotation_due = FALSE")
            #expect(try await keys.isSettled(database))
            try Data(bytes(32, seed: 5)).write(to: URL(fileURLWithPath: "\(fixture.home)/epochs/3.key"))
            #expect(try await !keys.isSettled(database))
        }
    }

    /// The current epoch's key file is gone while values need it: refused, in one line naming the file; with no value
    /// sealed under it, a new key is made.
    @Test func aMissingKeyFileThatValuesNeedIsReported() async throws {
        let fixture = try EpochFixture()
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            _ = try await fixture.insertWrappedKeys(2, keys: keys, database: database)
            try FileManager.default.removeItem(atPath: "\(fixture.home)/epochs/1.key")
            await #expect(
                throws: CofferRegistryError.tampered(
                    "2 values of wrapped_keys.stanza are sealed under epoch 1, whose key file \(fixture.home)/epochs/1.key is missing"
                )
            ) {
                _ = try await EpochKeys.open(home: fixture.home, database: database)
            }
            try await database.query("DELETE FROM wrapped_keys")
            let reopened = try await EpochKeys.open(home: fixture.home, database: database)
            #expect(try reopened.keyFileEpochs() == [1])
        }
    }
}

/// A home directory for epoch keys and helpers that fill the sealed columns.
final class EpochFixture: Sendable {
    let home: String

    init() throws {
        home = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-epochs-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: home) }

    struct Row: Hashable {
        let column: SealedColumn
        let key: String
    }

    /// A model and a version to hang rows on; the version's id.
    func makeVersion(_ database: PostgresPool) async throws -> Int64 {
        let model = UUID().uuidString
        let id = try await database.scalar(Int64.self, "INSERT INTO models (name, created_at) VALUES (\(model), 'now') RETURNING id")
        return try #require(
            try await database.scalar(
                Int64.self,
                "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at) VALUES (\(id), '1', 'd', 'k', 'now') RETURNING id"
            )
        )
    }

    /// `count` wrapped keys of one new version, each an 80-byte random stanza sealed under the current epoch; by row key.
    func insertWrappedKeys(_ count: Int, keys: EpochKeys, database: PostgresPool) async throws -> [String: [UInt8]] {
        let versionID = try await makeVersion(database)
        var stanzas: [String: [UInt8]] = [:]
        for _ in 0..<count {
            let recipient = UUID().uuidString.lowercased()
            let rowKey = SealedColumn.wrappedKeyStanza.rowKey([String(versionID), recipient])
            let stanza = (0..<80).map { _ in UInt8.random(in: 0...255) }
            try await database.transaction { connection in
                let sealed = try await keys.seal(stanza, column: .wrappedKeyStanza, rowKey: rowKey, on: connection)
                try await connection.rows("INSERT INTO wrapped_keys VALUES (\(versionID), \(recipient), \(ByteBuffer(bytes: sealed)))")
            }
            stanzas[rowKey] = stanza
        }
        return stanzas
    }

    /// `count` sessions with a sealed key copy, and one without (revoked); by session id.
    func insertSessions(_ count: Int, keys: EpochKeys, database: PostgresPool) async throws -> [String: [UInt8]] {
        let versionID = try await makeVersion(database)
        var copies: [String: [UInt8]] = [:]
        for i in 0...count {
            let id = String(format: "%016x", UInt64.random(in: 0...UInt64.max))
            let copy = (0..<70).map { _ in UInt8.random(in: 0...255) }
            try await database.transaction { connection in
                let sealed: ByteBuffer? =
                    i < count ? ByteBuffer(bytes: try await keys.seal(copy, column: .sessionWrappedKey, rowKey: id, on: connection)) : nil
                try await connection.rows(
                    """
                    INSERT INTO sessions (id, token_hash, principal, version_id, reference, created_at, expires_at, wrapped_key)
                    VALUES (\(id), \(ByteBuffer(bytes: Array(id.utf8))), 'alice', \(versionID), 'm', 'now', 'later', \(sealed))
                    """
                )
            }
            if i < count { copies[id] = copy }
        }
        return copies
    }

    /// Every sealed value in the database, by column and row key.
    func sealedValues(_ database: PostgresPool) async throws -> [Row: [UInt8]] {
        var values: [Row: [UInt8]] = [:]
        for row in try await database.query("SELECT version_id::text || E'\\n' || recipient_key_id, stanza FROM wrapped_keys") {
            let (key, sealed) = try row.decode((String, ByteBuffer).self)
            values[Row(column: .wrappedKeyStanza, key: key)] = Array(sealed.readableBytesView)
        }
        for row in try await database.query("SELECT id, wrapped_key FROM sessions WHERE wrapped_key IS NOT NULL") {
            let (key, sealed) = try row.decode((String, ByteBuffer).self)
            values[Row(column: .sessionWrappedKey, key: key)] = Array(sealed.readableBytesView)
        }
        return values
    }
}
