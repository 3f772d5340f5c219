import Foundation
import GRDB
import PostgresNIO
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

    /// A commit is on disk when the call returns: the writer syncs the log on every commit, not at checkpoints. One
    /// connection (a command's) has no snapshot to offer `migrate --to`, and says so.
    @Test(arguments: [SQLiteConnections.pool, .one])
    func commitsAreSyncedToDisk(connections: SQLiteConnections) async throws {
        let f = try await RegistryFixture(.sqlite)
        let database = try SQLiteMetadataStore(path: "\(f.home)/registry.sqlite", connections: connections)
        #expect(try await database.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") } == 2)
        #expect(try await database.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        // A database made elsewhere, in SQLite's default rollback-journal mode, is put in WAL mode too.
        let elsewhere = "\(f.home)/elsewhere.sqlite"
        try await DatabaseQueue(path: elsewhere).write { db in try db.execute(sql: "CREATE TABLE t (x)") }
        let reopened = try SQLiteMetadataStore(path: elsewhere, connections: connections)
        #expect(try await reopened.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        if connections == .one {
            #expect(throws: CofferRegistryError.invalidInput("a snapshot needs the registry opened with a pool of connections")) {
                _ = try database.snapshot()
            }
        } else {
            _ = try database.snapshot()
        }
    }

    /// The log stays when a command closes the registry, but not past its bound: the next open empties a log grown
    /// beyond it (every command would otherwise read all of it), and leaves a smaller one for the commands after.
    @Test(arguments: [SQLiteConnections.pool, .one])
    func openingEmptiesALogGrownPastItsBound(connections: SQLiteConnections) async throws {
        let f = try await RegistryFixture(.sqlite)
        let path = "\(f.home)/registry.sqlite"
        func logSize() throws -> Int { try FileManager.default.attributesOfItem(atPath: "\(path)-wal")[.size] as? Int ?? 0 }
        func write(_ bytes: Int) async throws { _ = try await Self.storeWithFiller(bytes, at: path) }
        _ = try SQLiteMetadataStore(path: path, connections: connections)
        try await write(100_000)
        let small = try logSize()
        #expect(small > 100_000 && small < SQLiteMetadataStore.logBound)
        _ = try SQLiteMetadataStore(path: path, connections: connections)
        #expect(try logSize() == small, "a log under the bound stays as it was")
        try await write(SQLiteMetadataStore.logBound)
        #expect(try logSize() > SQLiteMetadataStore.logBound)
        let reopened = try SQLiteMetadataStore(path: path, connections: connections)
        #expect(try logSize() == 0)
        #expect(
            try await reopened.read { db in try String.fetchOne(db, sql: "SELECT value FROM registry_meta WHERE key = 'filler'") }?.count
                == SQLiteMetadataStore.logBound
        )
    }

    /// Opening a small database asks for all of it to be read into the page cache at once (its last page, which the
    /// open itself never reads, comes in too); a database past the limit is left to SQLite's reads.
    @Test func openingReadsASmallDatabaseAheadAndALargeOneNot() async throws {
        let f = try await RegistryFixture(.sqlite)
        let path = "\(f.home)/registry.sqlite"
        func fill(to size: Int) async throws { try await Self.storeWithFiller(size, at: path).checkpointAndTruncateLog() }
        /// Whether the file's last page is in the page cache after an open, having been evicted before it; nil where
        /// the page cache cannot drop it (a tmpfs holds its files there).
        func lastPageReadByOpening() throws -> Bool? {
            try Self.evictFromPageCache(path)
            guard try Self.residentPages(of: path).last == false else { return nil }
            _ = try SQLiteMetadataStore(path: path)
            // The read-ahead is asynchronous: give the disk a moment.
            for _ in 0..<100 where try Self.residentPages(of: path).last != true { usleep(5_000) }
            return try Self.residentPages(of: path).last == true
        }
        try await fill(to: SQLiteMetadataStore.readAheadLimit / 2)
        guard let small = try lastPageReadByOpening() else { return }
        #expect(small)
        try await fill(to: SQLiteMetadataStore.readAheadLimit + (1 << 20))
        #expect(try lastPageReadByOpening() == false)
    }

    /// A FIFO in the database's place is refused, not waited on (the read-ahead opens it without blocking).
    @Test func aFIFOInPlaceOfTheDatabaseIsRefusedAtOnce() async throws {
        let f = try await RegistryFixture(.sqlite)
        let path = f.path("fifo.sqlite")
        #expect(mkfifo(path, 0o600) == 0)
        #expect(throws: CofferRegistryError.self) { _ = try SQLiteMetadataStore(path: path) }
    }

    /// The database at `path`, opened, with a `filler` row of `bytes` bytes committed (to its log).
    static func storeWithFiller(_ bytes: Int, at path: String) async throws -> SQLiteMetadataStore {
        let store = try SQLiteMetadataStore(path: path)
        try await store.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO registry_meta (key, value) VALUES ('filler', ?)",
                arguments: [String(repeating: "x", count: bytes)]
            )
        }
        return store
    }

    /// Drops a file's clean pages from the page cache (POSIX_FADV_DONTNEED after a sync): no root needed.
    static func evictFromPageCache(_ path: String) throws {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { throw CocoaError(.fileReadNoSuchFile) }
        defer { close(descriptor) }
        fsync(descriptor)
        #expect(posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED) == 0)
    }

    /// For each page of the file, whether it is in the page cache (mincore over a shared read-only mapping).
    static func residentPages(of path: String) throws -> [Bool] {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { throw CocoaError(.fileReadNoSuchFile) }
        defer { close(descriptor) }
        var info = stat()
        fstat(descriptor, &info)
        let size = Int(info.st_size)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard size > 0, let mapping = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0), mapping != MAP_FAILED else { return [] }
        defer { munmap(mapping, size) }
        var vector = [UInt8](repeating: 0, count: (size + page - 1) / page)
        guard mincore(mapping, size, &vector) == 0 else { return [] }
        return vector.map { $0 & 1 == 1 }
    }
}

// MARK: - PostgreSQL

extension SchemaTests {
    static var postgresSchemaDirectory: URL { schemaDirectory.appendingPathComponent("postgres") }

    /// The PostgreSQL migrations are embedded too (tools/gen-schema), and paired with SQLite's by number and name.
    @Test func embeddedPostgresSchemaEqualsSchemaDirectory() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.postgresSchemaDirectory.path).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(files == EmbeddedSchema.postgresMigrations.map(\.name), "run tools/gen-schema")
        for migration in EmbeddedSchema.postgresMigrations {
            let onDisk = try String(contentsOf: Self.postgresSchemaDirectory.appendingPathComponent(migration.name), encoding: .utf8)
            let normalized = onDisk.split(separator: "\n", omittingEmptySubsequences: false).map { $0.replacing(/\s+$/, with: "") }
                .joined(separator: "\n").trimmingCharacters(in: .newlines)
            #expect(normalized == migration.sql, "\(migration.name) differs from its embedded copy: run tools/gen-schema")
        }
        #expect(
            EmbeddedSchema.postgresMigrations.map(\.name) == EmbeddedSchema.migrations.map(\.name),
            "each SQLite migration has its PostgreSQL pair"
        )
    }

    /// Every SQLite table and column exists on PostgreSQL with the same name and a matching type, so one set of record
    /// types reads both; PostgreSQL has only its own bookkeeping besides (coffer_migrations, epoch_state).
    @Test(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason)) func postgresSchemaHasSQLiteTablesAndColumns() async throws {
        let sqlite = try SQLiteMetadataStore(path: nil)
        let expected = try await sqlite.writer.read { db in
            var expected: [String: [String: String]] = [:]
            for table in try String.fetchAll(
                db,
                sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'grdb_migrations'"
            ) {
                for column in try Row.fetchAll(db, sql: "SELECT name, type FROM pragma_table_info(?)", arguments: [table]) {
                    expected[table, default: [:]][column["name"]] = column["type"]
                }
            }
            return expected
        }
        let test = try await PostgresTestSupport.database()
        let actual = try await test.withDatabase { database in
            var columns: [String: [String: String]] = [:]
            for row in try await database.query(
                "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public'"
            ) {
                let (table, column, type) = try row.decode((String, String, String).self)
                columns[table, default: [:]][column] = type
            }
            return columns
        }
        let typeFor = ["INTEGER": "bigint", "TEXT": "text", "REAL": "double precision", "BLOB": "bytea"]
        for (table, columns) in expected {
            for (column, sqliteType) in columns {
                #expect(
                    actual[table]?[column] == typeFor[sqliteType],
                    "\(table).\(column) (\(sqliteType)) on PostgreSQL: \(actual[table]?[column] ?? "missing")"
                )
            }
            #expect(Set(actual[table]?.keys.map { $0 } ?? []) == Set(columns.keys), "\(table) has other columns on PostgreSQL")
        }
        #expect(Set(actual.keys).subtracting(expected.keys) == ["coffer_migrations", "epoch_state"])
    }

    /// An empty database is migrated to the latest schema, recorded in coffer_migrations; a second run applies nothing;
    /// two runners starting at once (two replicas) apply each migration once.
    @Test(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason)) func postgresMigrationsApplyOnceEvenConcurrently()
        async throws
    {
        let test = try await PostgresTestSupport.emptyDatabase()
        let names = EmbeddedSchema.postgresMigrations.map(\.name)
        let outcomes = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<3 {
                group.addTask { try await test.withDatabase { database in try await PostgresMigrator.migrate(database) } }
            }
            var all: [[String]] = []
            for try await applied in group { all.append(applied) }
            return all
        }
        #expect(outcomes.flatMap { $0 }.sorted() == names, "each migration applied exactly once across the runners")
        try await test.withDatabase { database async throws in
            #expect(try await PostgresMigrator.appliedMigrations(database) == names)
            #expect(try await PostgresMigrator.migrate(database).isEmpty)
            #expect(try await database.scalar(Int64.self, "SELECT epoch FROM epoch_state") == 1)
        }
    }

    /// Every command checks the migrations: on a database that has them all, one read, without the migration lock (held
    /// here by another session, as a replica migrating would hold it). A lock wait would fail at lock_timeout.
    @Test(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason)) func postgresUpToDateDatabaseIsCheckedWithoutTheLock()
        async throws
    {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { holder in
            try await holder.withConnection { connection in
                try await connection.run("SELECT pg_advisory_lock(\(PostgresAdvisoryLock.migrations))")
                let applied = try await test.withDatabase { database in
                    try await database.query("SET lock_timeout = '3s'")
                    return try await PostgresMigrator.migrate(database)
                }
                #expect(applied.isEmpty)
                try await connection.run("SELECT pg_advisory_unlock(\(PostgresAdvisoryLock.migrations))")
            }
        }
        // One missing: the long way, under the lock, applies it.
        try await test.withDatabase { database in
            let last = try #require(EmbeddedSchema.postgresMigrations.last)
            try await database.query("DELETE FROM coffer_migrations WHERE name = \(last.name)")
            #expect(try await PostgresMigrator.recordedWithoutLock(database) == EmbeddedSchema.postgresMigrations.dropLast().map(\.name))
        }
        let empty = try await PostgresTestSupport.emptyDatabase()
        try await empty.withDatabase { database async throws in #expect(try await PostgresMigrator.recordedWithoutLock(database) == nil) }
    }

    /// A database recording a migration this Coffer does not know was migrated by a newer one: refused, in one line.
    @Test(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason)) func postgresDatabaseFromANewerCofferIsRefused() async throws
    {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            try await database.query("INSERT INTO coffer_migrations (name) VALUES ('9999_future.sql')")
            await #expect(
                throws: CofferRegistryError.database(
                    "the PostgreSQL database records migration 9999_future.sql, which this Coffer does not know: it was migrated by a newer Coffer"
                )
            ) {
                try await PostgresMigrator.migrate(database)
            }
        }
    }

    /// SQLite's immutability triggers hold on PostgreSQL, TRUNCATE included, with the same messages.
    @Test(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason)) func postgresImmutabilityRulesHold() async throws {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            try await database.query("INSERT INTO models (name, created_at) VALUES ('m', 'now')")
            try await database.query(
                "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at) VALUES (1, '1', 'd', 'k', 'now')"
            )
            try await database.query("INSERT INTO files VALUES (1, 'a', 1, 'p', 's', 2)")
            try await database.query("INSERT INTO attestations VALUES (1, 'dsse', '\\x00')")
            try await database.query("INSERT INTO version_privacy VALUES (1, '[]', NULL)")
            try await database.query("INSERT INTO budget_charges VALUES (1, 'd', 'now', NULL)")
            try await database.query("INSERT INTO ledger VALUES (1, 'k', 'o', '\\x00', 'h')")
            try await database.query("INSERT INTO audit_log VALUES (1, 'now', '-', 'init', 't', 'ok', '', '\\x00', '\\x00')")
            let refusals: [(PostgresQuery, String)] = [
                ("UPDATE versions SET epsilon = 0.1", "versions are immutable"),
                ("UPDATE files SET size = 2", "files of a version are immutable"),
                ("UPDATE attestations SET kind = 'x'", "attestations are immutable"),
                ("UPDATE version_privacy SET segments = 'x'", "privacy histories are immutable"),
                ("DELETE FROM budget_charges", "budget charges are permanent"),
                ("TRUNCATE budget_charges", "budget charges are permanent"),
                ("UPDATE ledger SET kind = 'x'", "the ledger is append-only"),
                ("DELETE FROM ledger", "the ledger is append-only"),
                ("TRUNCATE ledger", "the ledger is append-only"),
                ("UPDATE audit_log SET reason = 'x'", "the audit log is append-only"),
                ("DELETE FROM audit_log", "the audit log is append-only"),
                ("TRUNCATE audit_log", "the audit log is append-only"),
            ]
            for (statement, message) in refusals {
                let engine = test.endpoint.engine
                await #expect(throws: CofferRegistryError.unavailable(engine: engine, reason: "\(message) (SQLSTATE P0001)"), "\(statement.sql)") {
                    try await database.query(statement)
                }
            }
            // SQLite's CHECKs, and a grant without an alias cannot be given twice (NULLS NOT DISTINCT).
            await #expect(throws: CofferRegistryError.self) {
                try await database.query(
                    "INSERT INTO versions (model_id, version, digest, publisher_key_id, created_at, delta) VALUES (1, '2', 'd', 'k', 'now', 1.5)"
                )
            }
            try await database.query("INSERT INTO principals VALUES ('a', 'k', '\\x00', 'now', NULL)")
            try await database.query("INSERT INTO grants (principal, role, scope, granted_at) VALUES ('a', 'reader', '*', 'now')")
            await #expect(throws: CofferRegistryError.self) {
                try await database.query("INSERT INTO grants (principal, role, scope, granted_at) VALUES ('a', 'reader', '*', 'now')")
            }
            try await database.query("INSERT INTO grants (principal, role, scope, alias, granted_at) VALUES ('a', 'reader', '*', 'prod', 'now')")
            // Identities assign ids as SQLite's rowids did, and accept explicit ones (a copied registry).
            #expect(try await database.scalar(Int64.self, "INSERT INTO models (name, created_at) VALUES ('n', 'now') RETURNING id") == 2)
            try await database.query("INSERT INTO models (id, name, created_at) VALUES (10, 'copied', 'now')")
        }
    }
}
