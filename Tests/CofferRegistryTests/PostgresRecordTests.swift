import Foundation
import PostgresNIO
import Testing

@testable import CofferRegistry

/// Codable records to and from PostgreSQL rows, on records shaped like the real `versions` and `sessions` tables.
@Suite(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct PostgresRecordTests {
    /// The columns of `versions`, as the registry's record type will name them.
    struct VersionRecord: Codable, Equatable, Sendable {
        var id: Int64?
        var modelID: Int64
        var version: String
        var number: Int?
        var digest: String
        var publisherKeyID: String
        var message: String?
        var createdAt: String
        var parentVersionID: Int64?
        var datasetID: String?
        var mechanism: Mechanism?
        var epsilon: Double?
        var delta: Double?
        var steps: Int64?
        var datasetSize: Int?
        var pruningRatio: Double?

        enum Mechanism: String, Codable, Sendable {
            case dpSGD = "dp-sgd"
            case none
        }

        enum CodingKeys: String, CodingKey {
            case id, version, number, digest, message, epsilon, delta, steps, mechanism
            case modelID = "model_id"
            case publisherKeyID = "publisher_key_id"
            case createdAt = "created_at"
            case parentVersionID = "parent_version_id"
            case datasetID = "dataset_id"
            case datasetSize = "dataset_size"
            case pruningRatio = "pruning_ratio"
        }
    }

    /// The columns of `sessions`: BYTEA, NULLs, a default.
    struct SessionRecord: Codable, Equatable, Sendable {
        var id: String
        var tokenHash: [UInt8]
        var principal: String
        var versionID: Int64
        var reference: String
        var alias: String?
        var createdAt: String
        var expiresAt: String
        var maxUses: Int?
        var uses: Int
        var revokedAt: String?
        var wrappedKey: Data?

        enum CodingKeys: String, CodingKey {
            case id, principal, reference, alias, uses
            case tokenHash = "token_hash"
            case versionID = "version_id"
            case createdAt = "created_at"
            case expiresAt = "expires_at"
            case maxUses = "max_uses"
            case revokedAt = "revoked_at"
            case wrappedKey = "wrapped_key"
        }
    }

    struct ModelRecord: Codable, Sendable {
        var id: Int64?
        var name: String
        var createdAt: String
        enum CodingKeys: String, CodingKey {
            case id, name
            case createdAt = "created_at"
        }
    }

    @Test func insertsBuildBoundStatements() throws {
        let record = ModelRecord(id: nil, name: "team/fraud", createdAt: "2026-01-01T00:00:00.000Z")
        let query = try PostgresRecords.insert(record, into: "models", returning: ["id"])
        #expect(query.sql == #"INSERT INTO "models" ("name", "created_at") VALUES ($1, $2) RETURNING "id""#)
        #expect(query.binds.count == 2)
        #expect(throws: CofferRegistryError.database("'models; DROP TABLE x' is not a plain SQL identifier (a-z, 0-9, _)")) {
            _ = try PostgresRecords.insert(record, into: "models; DROP TABLE x")
        }
    }

    @Test func recordsRoundTripThroughRealTables() async throws {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            let model = try #require(try await database.insert(ModelRecord(id: nil, name: "m", createdAt: "t0"), into: "models", returning: ["id"]))
            let modelID = try model.decode(Int64.self)
            let full = VersionRecord(
                id: nil,
                modelID: modelID,
                version: "1",
                number: 1,
                digest: "abc",
                publisherKeyID: "k1",
                message: "it's; \"quoted\" -- not SQL",
                createdAt: "t1",
                parentVersionID: nil,
                datasetID: "ds",
                mechanism: .dpSGD,
                epsilon: 2.95,
                delta: 1e-5,
                steps: 790,
                datasetSize: 20190,
                pruningRatio: 0.5
            )
            let sparse = VersionRecord(
                id: nil,
                modelID: modelID,
                version: "2",
                number: nil,
                digest: "def",
                publisherKeyID: "k1",
                message: nil,
                createdAt: "t2",
                parentVersionID: 1,
                datasetID: nil,
                mechanism: nil,
                epsilon: nil,
                delta: nil,
                steps: nil,
                datasetSize: nil,
                pruningRatio: nil
            )
            for record in [full, sparse] { try await database.insert(record, into: "versions") }
            let read = try await database.fetchAll(VersionRecord.self, "SELECT * FROM versions ORDER BY id")
            var expected = [full, sparse]
            expected[0].id = 1
            expected[1].id = 2
            #expect(read == expected)

            let session = SessionRecord(
                id: "0123456789abcdef",
                tokenHash: [0, 1, 2, 255],
                principal: "alice",
                versionID: 1,
                reference: "m@prod",
                alias: "prod",
                createdAt: "t3",
                expiresAt: "t4",
                maxUses: nil,
                uses: 0,
                revokedAt: nil,
                wrappedKey: Data([9, 8, 7])
            )
            _ = try await database.transaction { connection in try await connection.insert(session, into: "sessions") }
            let loaded = try await database.fetchOne(SessionRecord.self, "SELECT * FROM sessions WHERE id = \(session.id)")
            #expect(loaded == session)
            #expect(try await database.fetchOne(SessionRecord.self, "SELECT * FROM sessions WHERE id = 'none'") == nil)
            // A value that looks like SQL is bound as data, never run.
            let evil = "x'); DROP TABLE versions; --"
            #expect(try await database.fetchAll(VersionRecord.self, "SELECT * FROM versions WHERE digest = \(evil)").isEmpty)
            #expect(try await database.scalar(Int64.self, "SELECT count(*) FROM versions") == 2)
        }
    }

    /// Decoding errors name the column: missing, NULL for a non-optional property, another type.
    @Test func decodingErrorsNameTheColumn() async throws {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            await #expect(throws: CofferRegistryError.database("cannot read a ModelRecord from a row: no column created_at")) {
                _ = try await database.fetchAll(ModelRecord.self, "SELECT 1::bigint AS id, 'm' AS name")
            }
            await #expect(throws: CofferRegistryError.database("cannot read a ModelRecord from a row: column name is NULL")) {
                _ = try await database.fetchAll(ModelRecord.self, "SELECT 1::bigint AS id, NULL::text AS name, 't' AS created_at")
            }
            await #expect(throws: CofferRegistryError.database("cannot read a ModelRecord from a row: column name is not a String")) {
                _ = try await database.fetchAll(ModelRecord.self, "SELECT 1::bigint AS id, 2::bigint AS name, 't' AS created_at")
            }
            await #expect(
                throws: CofferRegistryError.database(
                    "cannot read a VersionRecord from a row: column mechanism: Cannot initialize Mechanism from invalid String value laplace"
                )
            ) {
                _ = try await database.fetchAll(
                    VersionRecord.self,
                    "SELECT NULL::bigint AS id, 1::bigint AS model_id, '1' AS version, NULL::bigint AS number, 'd' AS digest, 'k' AS publisher_key_id, 't' AS created_at, 'laplace' AS mechanism"
                )
            }
        }
    }

    /// What a column cannot hold is refused before anything is sent, naming the column.
    @Test func nestedValuesAreRefused() {
        struct Nested: Codable {
            var tags: [String: String]
            var list: [Int]
        }
        #expect(throws: CofferRegistryError.self) { _ = try PostgresRecords.insert(Nested(tags: ["a": "b"], list: []), into: "tags") }
    }
}
