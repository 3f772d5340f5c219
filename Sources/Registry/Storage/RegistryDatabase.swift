import Foundation
import GRDB

/// The registry's SQLite database: WAL mode, a busy timeout, writes in `BEGIN IMMEDIATE` transactions,
/// and the embedded migrations of `schema/` applied on open.
///
/// Queries that run on every request (token, grants, resolving a reference, loading a version, the audit append)
/// go through `db.cachedStatement(sql:)`: GRDB otherwise compiles each statement anew and runs its authorizer
/// on it, which was 13% of the server's CPU under a metadata load.
struct RegistryDatabase: Sendable {
    let writer: any DatabaseWriter

    /// Opens (creating if needed) the database at `path`; `nil` for an in-memory database (tests).
    init(path: String?, busyTimeout: Double = 5) throws(CofferRegistryError) {
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        // GRDB 7 opens write transactions with BEGIN IMMEDIATE by itself.
        configuration.foreignKeysEnabled = true
        // Deleted rows (wrapped keys after an erasure or a rotation) are overwritten, not left in free pages.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA secure_delete = ON") }
        do {
            if let path {
                let pool = try DatabasePool(path: path, configuration: configuration)
                // GRDB sets synchronous = NORMAL in WAL mode, where a commit reaches the disk only at the next
                // checkpoint: a push that printed "pushed" could vanish in a power cut. FULL syncs the log on
                // every commit (on the one writer connection; readers never write).
                try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
                writer = pool
            } else {
                writer = try DatabaseQueue(configuration: configuration)
            }
            try Self.migrator.migrate(writer)
        } catch {
            throw Self.translate(error)
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        for migration in EmbeddedSchema.migrations {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        return migrator
    }

    func read<T>(_ body: (Database) throws -> T) throws(CofferRegistryError) -> T {
        do { return try writer.read(body) } catch { throw Self.translate(error) }
    }

    func write<T>(_ body: (Database) throws -> T) throws(CofferRegistryError) -> T {
        do { return try writer.write(body) } catch { throw Self.translate(error) }
    }

    /// Copies the write-ahead log into the database and truncates it, so deleted content does not linger in the log.
    func checkpointAndTruncateLog() throws(CofferRegistryError) {
        do {
            if let pool = writer as? DatabasePool {
                try pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
            }
        } catch {
            throw Self.translate(error)
        }
    }

    /// Maps SQLite's errors to the registry's: a busy database, a registry error thrown inside a transaction, the rest.
    static func translate(_ error: any Error) -> CofferRegistryError {
        if let registryError = error as? CofferRegistryError { return registryError }
        if let sqlite = error as? DatabaseError {
            if sqlite.resultCode == .SQLITE_BUSY || sqlite.resultCode == .SQLITE_LOCKED { return .databaseBusy }
            if sqlite.resultCode == .SQLITE_FULL { return .io(path: "registry database", reason: "disk full") }
            return .database(sqlite.message ?? "\(sqlite.resultCode)")
        }
        return .database("\(error)")
    }
}
