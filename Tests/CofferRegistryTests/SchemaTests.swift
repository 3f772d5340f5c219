import Foundation
import GRDB
import Testing

@testable import CofferRegistry

struct SchemaTests {
    static let schemaDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("schema")

    /// The binary carries the migrations (tools/gen-schema); they must be exactly what schema/ holds.
    @Test func embeddedSchemaEqualsSchemaDirectory() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.schemaDirectory.path).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(files == EmbeddedSchema.migrations.map(\.name), "run tools/gen-schema")
        for migration in EmbeddedSchema.migrations {
            let onDisk = try String(contentsOf: Self.schemaDirectory.appendingPathComponent(migration.name), encoding: .utf8)
            let normalized = onDisk.split(separator: "\n", omittingEmptySubsequences: false).map { $0.replacing(/\s+$/, with: "") }
                .joined(separator: "\n").trimmingCharacters(in: .newlines)
            #expect(normalized == migration.sql, "\(migration.name) differs from its embedded copy: run tools/gen-schema")
        }
    }

    @Test func migrationsApplyToAnEmptyDatabaseAndVersionsAreImmutable() async throws {
        let database = try SQLiteMetadataStore(path: nil)
        try await database.write { db in
            try db.execute(sql: "INSERT INTO models (name, created_at) VALUES ('m', 'now')")
            try db.execute(sql: "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at) VALUES (1, '1', 'd', 'k', 'now')")
        }
        await #expect(throws: CofferRegistryError.self) {
            try await database.write { db in try db.execute(sql: "UPDATE versions SET epsilon = 0.1") }
        }
        await #expect(throws: CofferRegistryError.self) {
            try await database.write { db in
                try db.execute(
                    sql: "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at, delta) VALUES (1, '2', 'd', 'k', 'now', 1.5)"
                )
            }
        }
    }

    /// A commit is on disk when the call returns: the writer syncs the log on every commit, not at checkpoints.
    @Test func commitsAreSyncedToDisk() async throws {
        let f = try await RegistryFixture()
        let database = try SQLiteMetadataStore(path: "\(f.home)/registry.sqlite")
        #expect(try await database.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") } == 2)
        #expect(try await database.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
    }
}
