import PostgresNIO

/// PostgreSQL advisory locks the registry takes, by purpose: one 64-bit key each, per database.
///
/// Transaction-scoped locks (``PostgresNIO/PostgresConnection/advisoryTransactionLock(_:)``) serialize one kind of
/// write across replicas and go at COMMIT or ROLLBACK; session-scoped ones (``PostgresSessionLock``) elect one
/// replica for a job and go when its connection ends.
enum PostgresAdvisoryLock {
    /// Held by the migration runner for the whole run.
    static let migrations: Int64 = 0x636F_6666_6572_0001
    /// Held by each audit append, from reading the last entry to COMMIT: the audit log stays one hash chain.
    static let auditAppend: Int64 = 0x636F_6666_6572_0002
    /// Held for as long as a replica signs the audit chain's heads (leader election).
    static let auditHeadSigner: Int64 = 0x636F_6666_6572_0003
    /// Held by each commit that appends to the ledger, from checking the ledger's end to COMMIT: one writer at a time
    /// decides record `n + 1`.
    static let ledgerAppend: Int64 = 0x636F_6666_6572_0004
    /// With the hash of a principal's name (PostgreSQL's two-key form, a key space apart from the one-key locks above):
    /// held by each commit checking a limit on what that principal holds (a session under a grant's prediction limit,
    /// a new upload), from reading its rows to COMMIT, so two at once cannot both take what is left; other principals'
    /// commits do not wait.
    static let principalLimits: Int32 = 0x636F_6605
}

extension PostgresConnection {
    /// Waits for the transaction-scoped advisory lock `key` and holds it until this transaction ends.
    ///
    /// Call it inside ``PostgresPool/transaction(_:attempts:_:)``: outside a transaction the lock would
    /// be released as soon as the statement ends.
    func advisoryTransactionLock(_ key: Int64) async throws {
        // Rows are always read to the end: a result left unread keeps the connection busy (postgres-nio).
        try await rows("SELECT pg_advisory_xact_lock(\(key))")
    }

    /// Waits for the transaction-scoped advisory lock of `name` in the class `key` (the two-key form, `hashtext` of
    /// the name as the second key) and holds it until this transaction ends.
    func advisoryTransactionLock(_ key: Int32, name: String) async throws {
        try await rows("SELECT pg_advisory_xact_lock(\(key)::int4, hashtext(\(name)))")
    }

    /// Takes the transaction-scoped advisory lock `key` if no other transaction holds it; `false` without waiting
    /// otherwise.
    func tryAdvisoryTransactionLock(_ key: Int64) async throws -> Bool {
        var taken = false
        for try await row in try await query("SELECT pg_try_advisory_xact_lock(\(key))", logger: PostgresPool.logger) {
            taken = try row.decode(Bool.self)
        }
        return taken
    }
}

/// A session-level advisory lock held on a connection of its own: leadership among replicas (one replica at a time
/// signs the audit chain's heads). The lock is held exactly as long as that connection lives, so when the holder
/// stops, crashes or loses the network, PostgreSQL ends its session and another replica's next
/// ``tryAcquire(_:on:)`` succeeds.
///
/// ```swift
/// if let leadership = try await PostgresSessionLock.tryAcquire(PostgresAdvisoryLock.auditHeadSigner, on: database) {
///     while try await leadership.confirm() { try await signHead(); try await Task.sleep(for: .seconds(5)) }
///     await leadership.release()
/// }
/// ```
final class PostgresSessionLock: Sendable {
    let key: Int64
    private let connection: PostgresConnection

    private init(key: Int64, connection: PostgresConnection) {
        self.key = key
        self.connection = connection
    }

    /// A lock dropped unreleased (its registry went away without `close()`) ends with its connection.
    deinit { if !connection.isClosed { PostgresPool.closeWithoutWaiting(connection) } }

    /// Opens a dedicated connection and takes lock `key` on it without waiting; `nil` (and the connection closed)
    /// when another session holds it.
    static func tryAcquire(_ key: Int64, on database: PostgresPool) async throws(CofferRegistryError) -> PostgresSessionLock? {
        let connection = try await database.openConnection()
        do {
            var taken = false
            for row in try await connection.rows("SELECT pg_try_advisory_lock(\(key))") {
                taken = try row.decode(Bool.self)
            }
            guard taken else {
                try? await connection.close()
                return nil
            }
            return PostgresSessionLock(key: key, connection: connection)
        } catch {
            try? await connection.close()
            throw PostgresFailure.translate(error, endpoint: database.endpoint)
        }
    }

    /// Whether the lock's connection is still open as far as this process knows (no round trip).
    var isHeld: Bool { !connection.isClosed }

    /// Checks with the server that the session, and so the lock, is still there: a holder calls it before each act of
    /// leadership, so that a connection that died unnoticed does not leave two leaders acting at once for long.
    func confirm() async -> Bool {
        guard !connection.isClosed else { return false }
        do {
            var held = false
            let query: PostgresQuery = """
                SELECT count(*) > 0 FROM pg_locks
                WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                  AND ((classid::bigint << 32) | objid::bigint) = \(key)
                """
            for row in try await connection.rows(query) {
                held = try row.decode(Bool.self)
            }
            return held
        } catch {
            return false
        }
    }

    /// Returns when the lock's connection has closed (the holder's leadership is over).
    func lost() async {
        try? await connection.closeFuture.get()
    }

    /// Releases the lock and closes its connection.
    func release() async {
        // Ending the session releases its locks; no unlock statement first, because a query sent on a connection the
        // server already ended never completes (postgres-nio 1.33).
        try? await connection.close()
    }
}
