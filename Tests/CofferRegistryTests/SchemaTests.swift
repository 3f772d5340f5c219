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

    @Test func migrationsApplyToAnEmptyDatabaseAndVersionsAreImmutable() throws {
        let database = try RegistryDatabase(path: nil)
        try database.write { db in
            try db.execute(sql: "INSERT INTO models (name, created_at) VALUES ('m', 'now')")
            try db.execute(sql: "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at) VALUES (1, '1', 'd', 'k', 'now')")
        }
        #expect(throws: CofferRegistryError.self) {
            try database.write { db in try db.execute(sql: "UPDATE versions SET epsilon = 0.1") }
        }
        #expect(throws: CofferRegistryError.self) {
            try database.write { db in
                try db.execute(
                    sql: "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at, delta) VALUES (1, '2', 'd', 'k', 'now', 1.5)"
                )
            }
        }
    }

    /// A commit is on disk when the call returns: the writer syncs the log on every commit, not at checkpoints.
    @Test func commitsAreSyncedToDisk() throws {
        let f = try RegistryFixture()
        let database = try RegistryDatabase(path: "\(f.home)/registry.sqlite")
        #expect(try database.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") } == 2)
        #expect(try database.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
    }
}
