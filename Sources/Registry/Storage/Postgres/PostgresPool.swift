import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// A registry's PostgreSQL database: a postgres-nio connection pool, its lifecycle, transactions that retry, and
/// errors said in one line (`PostgreSQL at HOST:PORT/DB: REASON`).
///
/// The pool does its work inside ``run()``, which must be running while the database is used (postgres-nio's
/// `PostgresClient` is built on structured concurrency). A short command wraps its work in
/// ``withDatabase(_:password:options:_:)``, which starts and stops it; a server adds ``run()`` to its service group
/// (cancelling it, or a graceful shutdown, closes every connection).
///
/// The connection that checks the server at the start (``withDatabase(_:password:options:_:)``, ``adopt(_:)``) is kept and
/// lent first: a command that makes one query at a time never has the pool open a second connection (each costs a
/// TCP handshake, a SCRAM exchange whose PBKDF2 runs here, and a server process). The pool serves whatever asks while
/// that connection is lent, and everything once it is closed (a restarted server ends it).
///
/// ```swift
/// let endpoint = try PostgresEndpoint(url: "postgres://coffer@127.0.0.1:5432/coffer")
/// try await PostgresPool.withDatabase(endpoint, password: try endpoint.password()) { database in
///     try await PostgresMigrator.migrate(database)
///     let rows = try await database.query("SELECT name FROM models WHERE id = \(id)")
/// }
/// ```
final class PostgresPool: Sendable {
    /// Pool settings.
    struct Options: Sendable {
        /// Connections open at most (each is a server process: keep the sum over replicas under `max_connections`).
        var maximumConnections = 10
        /// Connections kept open while idle (a server keeps a few; a command none).
        var minimumConnections = 0
        /// How long to wait for TCP, TLS and authentication.
        var connectTimeout: Duration = .seconds(10)
        /// How long the connection kept from the start may sit unused before it is retired. The pool pings its idle
        /// connections and this one is not pinged: a server that keeps running hands its work to the pool rather than
        /// lend a connection that a firewall may have dropped in silence. A command never waits that long between two
        /// queries.
        var primaryIdleLimit: Duration = .seconds(30)

        init() {}
    }

    /// Transaction isolation levels (PostgreSQL's; `READ COMMITTED` is its default).
    enum Isolation: String, Sendable {
        case readCommitted = "READ COMMITTED"
        case repeatableRead = "REPEATABLE READ"
        case serializable = "SERIALIZABLE"
    }

    let endpoint: PostgresEndpoint
    /// The pool. Use it directly only for what this type does not wrap; its errors are postgres-nio's.
    let client: PostgresClient
    private let connectionConfiguration: PostgresConnection.Configuration
    /// The first connection, lent before the pool's (see the type's documentation).
    private let primary = Mutex<Primary>(Primary())
    private let primaryIdleLimit: Duration

    private struct Primary {
        var connection: PostgresConnection?
        var lent = false
        var lastUsed = ContinuousClock.now
    }
    /// What `pg_stat_activity.application_name` shows for Coffer's connections.
    static let applicationName = "coffer"
    /// postgres-nio's logs are not the registry's: every call gets this silent logger.
    static let logger = Logger(label: "coffer.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Builds the pool for `endpoint`; nothing is connected until ``run()`` runs and a query needs a connection.
    ///
    /// - Parameters:
    ///   - endpoint: where the database is.
    ///   - password: from ``PostgresEndpoint/password(environment:)``; `nil` for trust or peer authentication.
    ///   - options: pool settings.
    /// - Throws: ``CofferRegistryError/unavailable(engine:reason:)`` when `sslrootcert` cannot be read.
    init(endpoint: PostgresEndpoint, password: String?, options: Options = Options()) throws(CofferRegistryError) {
        self.endpoint = endpoint
        primaryIdleLimit = options.primaryIdleLimit
        let tls: PostgresClient.Configuration.TLS
        let connectionTLS: PostgresConnection.Configuration.TLS
        do {
            switch endpoint.sslMode {
            case .disable:
                tls = .disable
                connectionTLS = .disable
            case .require:
                var configuration = TLSConfiguration.makeClientConfiguration()
                configuration.certificateVerification = .none
                tls = .require(configuration)
                connectionTLS = .require(try NIOSSLContext(configuration: configuration))
            case .verifyFull:
                var configuration = TLSConfiguration.makeClientConfiguration()
                configuration.certificateVerification = .fullVerification
                if let path = endpoint.sslRootCertificate {
                    let certificates: [NIOSSLCertificate]
                    do {
                        certificates = try NIOSSLCertificate.fromPEMFile(path)
                    } catch {
                        throw CofferRegistryError.unavailable(
                            engine: endpoint.engine,
                            reason: "sslrootcert \(path) holds no readable PEM certificate"
                        )
                    }
                    guard !certificates.isEmpty else {
                        throw CofferRegistryError.unavailable(engine: endpoint.engine, reason: "sslrootcert \(path) holds no certificate")
                    }
                    configuration.trustRoots = .certificates(certificates)
                }
                tls = .require(configuration)
                connectionTLS = .require(try NIOSSLContext(configuration: configuration))
            }
        } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .unavailable(engine: endpoint.engine, reason: "cannot set up TLS: \(error)")
        }
        var configuration = PostgresClient.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.user,
            password: password,
            database: endpoint.database,
            tls: tls
        )
        configuration.options.connectTimeout = options.connectTimeout
        configuration.options.maximumConnections = options.maximumConnections
        configuration.options.minimumConnections = options.minimumConnections
        // pg_stat_activity names Coffer's sessions (operators, and the tests that check none is left open).
        configuration.options.additionalStartupParameters = [("application_name", Self.applicationName)]
        client = PostgresClient(configuration: configuration, backgroundLogger: Self.logger)

        var single = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.user,
            password: password,
            database: endpoint.database,
            tls: connectionTLS
        )
        single.options.connectTimeout = TimeAmount.nanoseconds(
            options.connectTimeout.components.seconds * 1_000_000_000 + options.connectTimeout.components.attoseconds / 1_000_000_000
        )
        single.options.additionalStartupParameters = [("application_name", Self.applicationName)]
        connectionConfiguration = single
    }

    /// Builds the pool and checks that the server can be reached and logged into with these settings, so a wrong
    /// password or a closed port fails at once with the server's reason (the pool itself would retry for a minute
    /// and then report only that it gave up).
    static func connect(
        _ endpoint: PostgresEndpoint,
        password: String?,
        options: Options = Options()
    ) async throws(CofferRegistryError) -> PostgresPool {
        let database = try PostgresPool(endpoint: endpoint, password: password, options: options)
        try await database.checkReachable()
        return database
    }

    /// Connects to `endpoint`, runs the pool while `body` runs, then shuts it down: every connection is closed and
    /// no task is left behind when this returns, whether `body` returned or threw. What a command does.
    ///
    /// - Throws: the translated error of the connection check, or whatever `body` throws (postgres-nio errors as
    ///   ``CofferRegistryError/unavailable(engine:reason:)``).
    static func withDatabase<Result: Sendable>(
        _ endpoint: PostgresEndpoint,
        password: String?,
        options: Options = Options(),
        _ body: (PostgresPool) async throws -> Result
    ) async throws(CofferRegistryError) -> Result {
        let database = try PostgresPool(endpoint: endpoint, password: password, options: options)
        // The connection that checks the server is the first one lent (closed as the pool stops).
        database.adopt(try await database.openConnection())
        return try await database.whileRunning(body)
    }

    /// Runs the pool while `body` runs, then shuts it down (``withDatabase(_:password:options:_:)`` for a database
    /// already made). Call it at most once: a pool runs once.
    func whileRunning<Result: Sendable>(_ body: (PostgresPool) async throws -> Result) async throws(CofferRegistryError) -> Result {
        do {
            return try await withThrowingTaskGroup(of: Void.self, returning: Result.self) { group in
                group.addTask { await self.run() }
                // Cancelling run() is how a PostgresClient is closed; the group then waits for it to finish.
                defer { group.cancelAll() }
                do {
                    let result = try await body(self)
                    await closePrimary()
                    return result
                } catch {
                    await closePrimary()
                    throw error
                }
            }
        } catch {
            throw await explain(error)
        }
    }

    /// The pool's background work: opening, keeping alive and closing connections. Runs until cancelled or, inside a
    /// ServiceLifecycle service group, until graceful shutdown; queries made while it does not run wait.
    func run() async {
        await client.run()
    }

    /// Opens one connection with the pool's settings and closes it: a wrong password, a closed port, a server
    /// without TLS when TLS is required, each as one line naming the engine.
    func checkReachable() async throws(CofferRegistryError) {
        let connection = try await openConnection()
        try? await connection.close()
    }

    /// Keeps `connection` (opened by ``openConnection()``) to lend before the pool's; the pool closes it in
    /// ``closePrimary()`` or when it is released.
    func adopt(_ connection: PostgresConnection) {
        let previous = primary.withLock { primary in
            defer {
                primary.connection = connection
                // Idle from now, not from when the pool was made: a slow login must not retire it before its first use.
                primary.lastUsed = ContinuousClock.now
            }
            return primary.connection
        }
        if let previous { Self.closeWithoutWaiting(previous) }
    }

    /// Sends a connection's close and does not wait for it (where nothing can be awaited).
    static func closeWithoutWaiting(_ connection: PostgresConnection) {
        let closing: EventLoopFuture<Void> = connection.close()
        // Held until closed: postgres-nio checks, as it is released, that a connection was closed.
        closing.whenComplete { _ in withExtendedLifetime(connection) {} }
    }

    /// Closes the kept connection (the pool's own close with ``run()``'s end).
    func closePrimary() async {
        let connection = primary.withLock { primary in
            defer { primary.connection = nil }
            return primary.connection
        }
        try? await connection?.close()
    }

    deinit {
        // Nothing can be awaited here: the close is sent and not waited for.
        if let connection = primary.withLock({ $0.connection }) { Self.closeWithoutWaiting(connection) }
    }

    /// Lends the kept connection when it is open, free and recently used, else leases one from the pool, for `body`.
    private func lease<Result>(_ body: (PostgresConnection) async throws -> Result) async throws -> Result {
        let (taken, retired): (PostgresConnection?, PostgresConnection?) = primary.withLock { primary in
            guard let connection = primary.connection, !primary.lent, !connection.isClosed else { return (nil, nil) }
            guard ContinuousClock.now - primary.lastUsed < primaryIdleLimit else {
                primary.connection = nil
                return (nil, connection)
            }
            primary.lent = true
            return (connection, nil)
        }
        if let retired { Self.closeWithoutWaiting(retired) }
        guard let taken else { return try await client.withConnection { connection in try await body(connection) } }
        defer {
            primary.withLock { primary in
                primary.lent = false
                primary.lastUsed = ContinuousClock.now
            }
        }
        return try await body(taken)
    }

    /// A connection of its own, outside the pool, for what must outlive a lease: a session-level advisory lock
    /// (``PostgresSessionLock``). The caller closes it.
    func openConnection() async throws(CofferRegistryError) -> PostgresConnection {
        do {
            return try await untranslatedConnection()
        } catch {
            throw PostgresFailure.translate(error, endpoint: endpoint)
        }
    }

    /// ``openConnection()`` with postgres-nio's own error, for a caller that acts on its SQLSTATE.
    func untranslatedConnection() async throws -> PostgresConnection {
        try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.any(),
            configuration: connectionConfiguration,
            id: Int.random(in: 1...Int.max),
            logger: Self.logger
        )
    }

    // MARK: - Queries

    /// Runs `query` and collects its rows.
    ///
    /// Values are bound, never pasted into the SQL: write them as interpolations (`"... WHERE id = \(id)"`); table
    /// and column names that come from code, not from users, go in as `\(unescaped: name)`.
    @discardableResult
    func query(_ query: PostgresQuery) async throws(CofferRegistryError) -> [PostgresRow] {
        do {
            return try await lease { connection in try await connection.rows(query) }
        } catch {
            throw await explain(error)
        }
    }

    /// Leases a connection for `body` (which must not keep it).
    func withConnection<Result: Sendable>(_ body: (PostgresConnection) async throws -> Result) async throws(CofferRegistryError) -> Result {
        do {
            return try await lease { connection in try await body(connection) }
        } catch {
            throw await explain(error)
        }
    }

    /// Runs `body` in one transaction on one connection, committing when it returns and rolling back when it throws;
    /// a transaction that fails on a serialization failure or a deadlock (at any statement or at `COMMIT`) is run again
    /// from the start, up to `attempts` times in all, after a short random pause.
    ///
    /// - Parameters:
    ///   - isolation: the isolation level.
    ///   - attempts: runs at most, the first included.
    ///   - body: the transaction's work. It may run several times: keep side effects outside the database out of it.
    /// - Throws: what `body` throws, translated (registry errors unchanged), or the last serialization failure.
    func transaction<Result: Sendable>(
        _ isolation: Isolation = .readCommitted,
        attempts: Int = 8,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws(CofferRegistryError) -> Result {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await lease { connection in
                    try await Self.runTransaction(on: connection, isolation: isolation, body)
                }
            } catch  where PostgresFailure.isRetryable(error) && attempt < attempts {
                // Two writers that collided would collide again if they retried in step.
                try? await Task.sleep(for: .milliseconds(Int.random(in: 1...(5 * attempt))))
            } catch {
                throw await explain(error)
            }
        }
    }

    /// Like ``transaction(_:attempts:_:)``, but a unique-key violation on `constraint` rolls the transaction back and
    /// returns `nil` instead of throwing: another writer got there first (the ledger's `ledger_pkey`: record `n + 1`
    /// exists), and the caller starts again from what is now committed.
    func transaction<Result: Sendable>(
        _ isolation: Isolation = .readCommitted,
        attempts: Int = 8,
        conflictOn constraint: String,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws(CofferRegistryError) -> Result? {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await lease { connection in
                    try await Self.runTransaction(on: connection, isolation: isolation, body)
                }
            } catch  where PostgresFailure.uniqueViolation(error) == constraint {
                return nil
            } catch  where PostgresFailure.isRetryable(error) && attempt < attempts {
                try? await Task.sleep(for: .milliseconds(Int.random(in: 1...(5 * attempt))))
            } catch {
                throw await explain(error)
            }
        }
    }

    /// BEGIN, body, COMMIT on `connection`, or ROLLBACK when anything throws. A COMMIT that the server answers with
    /// ROLLBACK (the transaction had failed and `body` swallowed the error) is an error, not a silent loss.
    nonisolated(nonsending) static func runTransaction<Result>(
        on connection: PostgresConnection,
        isolation: Isolation,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        try await connection.run(PostgresQuery(unsafeSQL: "BEGIN ISOLATION LEVEL \(isolation.rawValue)"))
        let result: Result
        do {
            result = try await body(connection)
        } catch {
            // A broken connection cannot roll back, and the server rolls back what a lost connection left open.
            _ = try? await connection.run("ROLLBACK")
            throw error
        }
        let committed = try await connection.run("COMMIT")
        guard committed.metadata.command == "COMMIT" else {
            throw CofferRegistryError.database("a statement of the transaction failed and its error was not passed on; nothing was committed")
        }
        return result
    }

    /// The one-line registry error for `error`. When the pool gave up connecting (it reports only that), one direct
    /// connection attempt finds the reason: refused, a wrong password, a server without TLS.
    func explain(_ error: any Error) async -> CofferRegistryError {
        // ConnectionPoolError lives in postgres-nio's underscored _ConnectionPoolModule: known by name, not imported.
        guard String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") else {
            return PostgresFailure.translate(error, endpoint: endpoint)
        }
        do {
            try await checkReachable()
        } catch {
            return error
        }
        return PostgresFailure.translate(error, endpoint: endpoint)
    }
}
