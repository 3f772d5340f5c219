import PostgresNIO

/// Applies `schema/postgres/*.sql` (embedded as `EmbeddedSchema.postgresMigrations`) to a registry's database.
///
/// Each migration runs in its own transaction together with its row in `coffer_migrations(name, applied_at)`, so a
/// migration is either wholly applied and recorded or not at all. The whole run holds a session-level advisory lock
/// (``PostgresAdvisoryLock/migrations``): two replicas starting at once apply each migration once, the second
/// waiting for the first and then finding nothing left to do.
///
/// ```swift
/// let applied = try await PostgresMigrator.migrate(database)   // ["0001_initial.sql", ...] on a new database
/// ```
enum PostgresMigrator {
    /// Applies the migrations `database` lacks, in order; returns the names applied.
    ///
    /// - Throws: ``CofferRegistryError/database(_:)`` when the database records a migration this Coffer does not
    ///   know (a newer Coffer migrated it) or records them out of order; the engine's error when a statement fails
    ///   (that migration is rolled back, the earlier ones stay).
    @discardableResult
    static func migrate(_ database: PostgresPool) async throws(CofferRegistryError) -> [String] {
        try await migrate(database, migrations: EmbeddedSchema.postgresMigrations)
    }

    static func migrate(
        _ database: PostgresPool,
        migrations: [(name: String, sql: String)]
    ) async throws(CofferRegistryError) -> [String] {
        // Every command and server start comes here, and almost always finds every migration applied: one read says so,
        // without the lock (a migration commits with its row, so a run in progress elsewhere shows as one missing, and
        // then this waits for the lock as before). Anything else, an unknown or misordered name included, goes the long way.
        if try await recordedWithoutLock(database) == migrations.map(\.name) { return [] }
        return try await database.withConnection { connection in
            try await connection.run("SELECT pg_advisory_lock(\(PostgresAdvisoryLock.migrations))")
            do {
                let applied = try await apply(migrations, on: connection, endpoint: database.endpoint)
                try await connection.run("SELECT pg_advisory_unlock(\(PostgresAdvisoryLock.migrations))")
                return applied
            } catch {
                // The lock is the session's: give it back before the connection returns to the pool.
                _ = try? await connection.run("SELECT pg_advisory_unlock(\(PostgresAdvisoryLock.migrations))")
                throw error
            }
        }
    }

    /// The names recorded in `coffer_migrations`, in the order applied; empty for a database never migrated.
    static func appliedMigrations(_ database: PostgresPool) async throws(CofferRegistryError) -> [String] {
        try await database.withConnection { connection in try await recorded(on: connection) }
    }

    /// The names recorded, in one statement and without the lock; `nil` when `coffer_migrations` does not exist.
    static func recordedWithoutLock(_ database: PostgresPool) async throws(CofferRegistryError) -> [String]? {
        try await database.withConnection { connection in
            do {
                var names: [String] = []
                for row in try await connection.rows("SELECT name FROM coffer_migrations ORDER BY name") {
                    names.append(try row.decode(String.self))
                }
                return names
            } catch  where PostgresFailure.sqlState(error) == PostgresFailure.SQLState.undefinedTable {
                return nil
            }
        }
    }

    private static func recorded(on connection: PostgresConnection) async throws -> [String] {
        let exists = try await connection.run("SELECT to_regclass('coffer_migrations') IS NOT NULL")
        var present = false
        for row in exists { present = try row.decode(Bool.self) }
        guard present else { return [] }
        var names: [String] = []
        for row in try await connection.rows("SELECT name FROM coffer_migrations ORDER BY name") {
            names.append(try row.decode(String.self))
        }
        return names
    }

    private static func apply(
        _ migrations: [(name: String, sql: String)],
        on connection: PostgresConnection,
        endpoint: PostgresEndpoint
    ) async throws -> [String] {
        try await connection.run(
            """
            CREATE TABLE IF NOT EXISTS coffer_migrations (
                name       TEXT PRIMARY KEY NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )
            """
        )
        let done = try await recorded(on: connection)
        let known = migrations.map(\.name)
        if let unknown = done.first(where: { !known.contains($0) }) {
            throw CofferRegistryError.database(
                "the PostgreSQL database records migration \(unknown), which this Coffer does not know: it was migrated by a newer Coffer"
            )
        }
        guard done == Array(known.prefix(done.count)) else {
            throw CofferRegistryError.database(
                "the PostgreSQL database records migrations \(done.joined(separator: ", ")), not a prefix of \(known.joined(separator: ", "))"
            )
        }
        var applied: [String] = []
        for migration in migrations.dropFirst(done.count) {
            do {
                try await PostgresPool.runTransaction(on: connection, isolation: .readCommitted) { connection in
                    for statement in SQLScript.statements(migration.sql) {
                        try await connection.run(PostgresQuery(unsafeSQL: statement))
                    }
                    try await connection.run("INSERT INTO coffer_migrations (name) VALUES (\(migration.name))")
                }
            } catch let error as PSQLError where error.code == .server {
                throw CofferRegistryError.unavailable(
                    engine: endpoint.engine,
                    reason: "migration \(migration.name) failed: \(PostgresFailure.reason(error, sslMode: endpoint.sslMode))"
                )
            }
            applied.append(migration.name)
        }
        return applied
    }
}
