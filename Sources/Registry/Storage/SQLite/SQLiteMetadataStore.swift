import CSQLiteShim
import CofferCrypto
import Foundation
import GRDB
import GRDBSQLite
import Synchronization

/// The embedded metadata store: `registry.sqlite` in the home directory (WAL, a busy timeout, one writer at a time,
/// the migrations of `schema/` applied on open). Every call runs on GRDB's own queues, never on the cooperative pool.
///
/// Queries that run on every request (token, grants, resolving a reference, loading a version, the audit append)
/// go through `db.cachedStatement(sql:)`: GRDB otherwise compiles each statement anew and runs its authorizer
/// on it, which was 13% of the server's CPU under a metadata load.
final class SQLiteMetadataStore: MetadataStore {
    let writer: any DatabaseWriter
    /// Whether the database is a file (with a write-ahead log to truncate), not in memory.
    let isFile: Bool
    let name: String
    let busyTimeout: Double
    /// When this process last failed to carry out an owed truncation (`truncateLogIfOwed`); `nil` since one succeeded.
    let lastFailedTruncation = Mutex<ContinuousClock.Instant?>(nil)

    /// Opens (creating if needed) the database at `path`; `nil` for an in-memory database (tests).
    init(path: String?, busyTimeout: Double = 5, connections: SQLiteConnections = .pool) throws(CofferRegistryError) {
        name = "SQLite database \(path ?? ":memory:")"
        isFile = path != nil
        self.busyTimeout = busyTimeout
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        // GRDB 7 opens write transactions with BEGIN IMMEDIATE by itself.
        configuration.foreignKeysEnabled = true
        // Deleted rows (wrapped keys after an erasure or a rotation) are overwritten, not left in free pages.
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA secure_delete = ON")
            // The log stays when a command's connections close; SQLite's automatic checkpoint (1,000 pages) still copies
            // it into the database, and deletions are checkpointed at once (`commit`). A 1 MiB push went from 9 syncs
            // to 5: the checkpoint at close (2) and the new log the next command made (2) were per command.
            // An SQLite without the setting checkpoints at close, as before: the same data, only slower.
            _ = coffer_sqlite_keep_log_on_close(db.sqliteConnection)
        }
        // The log too: the first connection reads all of it, a frame at a time, to rebuild its index (`logBound`).
        if let path { for file in [path, "\(path)-wal"] { Self.readAhead(file) } }
        do {
            if let path {
                switch connections {
                case .pool: writer = try DatabasePool(path: path, configuration: configuration)
                case .one:
                    // Not GRDB's `journalMode = .wal`: that asks Foundation for the log's size on every open (3% of a
                    // 1 MiB push's CPU) to keep a log a pool's readers need. WAL mode is a property of the file, so
                    // this is a no-op but for a database made elsewhere.
                    writer = try DatabaseQueue(path: path, configuration: configuration)
                    try writer.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA journal_mode = WAL") }
                }
                // GRDB sets synchronous = NORMAL in WAL mode, where a commit reaches the disk only at the next
                // checkpoint: a push that printed "pushed" could vanish in a power cut. FULL syncs the log on
                // every commit (on the one writer connection; readers never write).
                try writer.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            } else {
                writer = try DatabaseQueue(configuration: configuration)
            }
            try Self.migrator.migrate(writer)
        } catch {
            throw Self.translate(error)
        }
        // A truncation a reader blocked (`truncateLogIfOwed`), tried again without waiting for readers, so that a
        // command run beside a busy server is not slowed.
        if let path {
            do { try writer.writeWithoutTransaction { db in try Self.truncateLogIfOwed(db, waitingFor: 0) } } catch {
                lastFailedTruncation.withLock { $0 = .now }
            }
            // Not waiting for readers either: a log a reader blocks is bounded by the next command's open.
            if Self.fileSize("\(path)-wal") > Self.logBound {
                try? writer.writeWithoutTransaction { db in try Self.truncateLog(db, waitingFor: 0) }
            }
        }
    }

    /// The size of the write-ahead log above which opening the registry copies it into the database and empties it.
    ///
    /// The log stays when a command's connections close (see `prepareDatabase`), and the next command's first
    /// connection rebuilds its index from every frame in it; that rebuild forgets which frames were already copied, so
    /// SQLite never starts the log over, and only emptying it bounds it. Without this it grew by every page a command
    /// wrote (about 80 KB, 20 frames, a 1 MiB push) for as long as the registry lived, and every command read it all:
    /// 1,320 reads of 4 KiB per push after some 260 pushes, and a copy of the whole log into the database. With a log
    /// of 7-9 MB, a 1 MiB push took 36.3 ms where the bound gives 31.3, and `list` 38.3 where it gives 34.9 (medians
    /// of 21, same run). 1 MiB is about a dozen pushes between emptyings, each a checkpoint's syncs.
    static let logBound = 1 << 20

    /// Asks the kernel to read a small database into the page cache in one request before SQLite opens it: SQLite
    /// reads a page at a time, each a request of its own to a cold disk (its header, the schema, then each table and
    /// index a command touches). A larger database is left to SQLite, as most of it is not needed. With the page cache
    /// emptied, a 1 MiB pull took 43.5 ms without this and 36.6 with it, a push 42.7 and 41.8 (medians of 21, alternated).
    static let readAheadLimit = 4 << 20

    private static func readAhead(_ path: String) {
        // Not waiting on a FIFO planted in the database's place (SQLite then refuses it), nor following a link.
        let descriptor = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        defer { _ = Glibc.close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= readAheadLimit else { return }
        _ = posix_fadvise(descriptor, 0, info.st_size, POSIX_FADV_WILLNEED)
    }

    private static func fileSize(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        for migration in EmbeddedSchema.migrations {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        return migrator
    }

    func close() async {}

    func leadsAuditHeads() async -> Bool { true }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(CofferRegistryError) -> T {
        do { return try await writer.read(body) } catch { throw Self.translate(error) }
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(CofferRegistryError) -> T {
        do { return try await writer.write(body) } catch { throw Self.translate(error) }
    }

    /// A read-only view of the database as it is now, which later commits do not change: `coffer migrate --to` copies
    /// every table from one, so the copy is one state of the registry even while it is in use. Only a pool has
    /// snapshots; an in-memory database has no other writer, and a registry opened with one connection is refused.
    func snapshot() throws(CofferRegistryError) -> any DatabaseReader {
        guard let pool = writer as? DatabasePool else {
            guard !isFile else { throw .invalidInput("a snapshot needs the registry opened with a pool of connections") }
            return writer
        }
        do { return try pool.makeSnapshot() } catch { throw Self.translate(error) }
    }

    /// Copies the write-ahead log into the database and truncates it, so deleted content does not linger in the log.
    func checkpointAndTruncateLog() async throws(CofferRegistryError) {
        guard isFile else { return }
        do { try await writer.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) } } catch { throw Self.translate(error) }
    }

    /// The `registry_meta` key a commit that deleted keys sets, in its own transaction, to a fresh random value; a
    /// truncation of the log removes it: while it is there, frames of the log may still carry the deleted keys.
    static let truncationOwedKey = "log_truncation_owed"

    /// How long a process waits after a failed retry before its commits try again: an attempt that readers block
    /// still copies the log into the database and syncs both before it gives up.
    static let truncationRetryInterval: Duration = .seconds(10)

    /// Truncates the log if a commit that deleted keys marked it so. A reader that holds an older snapshot (a server's,
    /// another command's) blocks the truncation: the deletion stands, and the mark makes the next open, and commits
    /// (at most every `truncationRetryInterval`), try again. Only the commit that deleted keys waits for readers (the
    /// busy timeout), as its own write did.
    func truncateLogIfOwed(waiting: Bool) async throws(CofferRegistryError) {
        guard isFile else { return }
        let busyTimeout = busyTimeout
        do {
            try await writer.writeWithoutTransaction { db in try Self.truncateLogIfOwed(db, waitingFor: waiting ? busyTimeout : 0) }
            lastFailedTruncation.withLock { $0 = nil }
        } catch {
            lastFailedTruncation.withLock { $0 = .now }
            throw Self.translate(error)
        }
    }

    /// Whether a commit that found the mark should try the truncation now.
    var truncationRetryIsDue: Bool {
        lastFailedTruncation.withLock { last in last.map { $0.duration(to: .now) >= Self.truncationRetryInterval } ?? true }
    }

    /// The truncation on `db`, the writer connection outside a transaction. A mark another process set meanwhile stays:
    /// its value is new.
    static func truncateLogIfOwed(_ db: Database, waitingFor timeout: Double) throws {
        let sql = "SELECT value FROM registry_meta WHERE key = ?"
        guard let mark = try String.fetchOne(db.cachedStatement(sql: sql), arguments: [truncationOwedKey]) else { return }
        try truncateLog(db, waitingFor: timeout)
        try db.execute(sql: "DELETE FROM registry_meta WHERE key = ? AND value = ?", arguments: [truncationOwedKey, mark])
    }

    /// Copies the log into the database and empties it, on `db`, the writer connection outside a transaction, waiting
    /// at most `timeout` seconds for readers whose snapshots need its frames.
    static func truncateLog(_ db: Database, waitingFor timeout: Double) throws {
        let configured = db.configuration.busyMode
        sqlite3_busy_timeout(db.sqliteConnection, Int32(timeout * 1000))
        let checkpointed = Result { try db.checkpoint(.truncate) }
        if case .timeout(let seconds) = configured { sqlite3_busy_timeout(db.sqliteConnection, Int32(seconds * 1000)) }
        _ = try checkpointed.get()
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

/// How many connections the embedded SQLite store opens.
public enum SQLiteConnections: Sendable {
    /// A writer and readers beside it, so that reads do not wait for a write: a server, `coffer migrate --to`.
    case pool
    /// One connection for reads and writes, for a command that does one thing at a time: it opens faster (medians of
    /// 30 to 50, alternated, same run: a 1 MiB push 36.5 -> 34.5 ms, pull 39.6 -> 37.1, `show` 23.6 -> 21.4, `list` (the
    /// newest 100 versions) 43.0 -> 41.1). It has no snapshots.
    case one
}
