import CofferCrypto
import Foundation
import NIOCore
import PostgresNIO
import Synchronization

/// The scale-out metadata store: the tables of `schema/postgres/` in a PostgreSQL database that several processes and
/// replicas share (docs/FORMAT.md, "Metadata stores"). The same semantics as ``SQLiteMetadataStore``, rebuilt where
/// SQLite gave them by having one writer:
///
/// - a ``UnitOfWork`` is one transaction; its ledger end is checked under the advisory lock
///   ``PostgresAdvisoryLock/ledgerAppend`` (and `ledger.seq`'s key catches any writer that skipped the check), so two
///   writers never both append record `n + 1`: the second gets ``CofferRegistryError/ledgerMoved``;
/// - audit entries are chained under ``PostgresAdvisoryLock/auditAppend``, so the hash chain stays one line across
///   replicas;
/// - a session's use and a rate token are taken by statements on the shared row, never by reading then writing;
/// - wrapped keys and session key copies are sealed under the current epoch key (``EpochKeys``); whatever deletes
///   or clears one marks a rotation due in the same transaction and rotates after it commits, so PostgreSQL's copies
///   of the erased value (dead tuples, WAL, backups) are sealed under a key that no longer exists.
///
/// ```swift
/// let store = try await PostgresMetadataStore.open(url: "postgres://coffer@db:5432/coffer", home: home)
/// try await store.commit(work)
/// await store.close()
/// ```
final class PostgresMetadataStore: MetadataStore {
    let database: PostgresPool
    let keys: EpochKeys
    let name: String
    /// The pool's background work, from ``open(url:home:environment:options:)`` until ``close()`` or deinit.
    private let running: Task<Void, Never>
    /// The audit-head signer's session lock, while this process holds it.
    private let leadership = Mutex<PostgresSessionLock?>(nil)

    private init(database: PostgresPool, keys: EpochKeys, running: Task<Void, Never>) {
        self.database = database
        self.keys = keys
        self.running = running
        name = database.endpoint.engine
    }

    deinit { running.cancel() }

    /// Connects to the database at `url` (password from `PGPASSWORD` or `PGPASSFILE`, never the URL), applies the
    /// migrations it lacks and opens the epoch keys in `HOME/epochs`, finishing a rotation a crash interrupted.
    ///
    /// - Parameters:
    ///   - url: `postgres://USER@HOST:PORT/DB?sslmode=...`.
    ///   - home: the registry's home directory (its `epochs/`).
    ///   - environment: where the password is looked up (the process's environment when nil).
    ///   - creatingDatabase: create the database when the server has none of that name (`init` and `migrate` only).
    /// - Throws: ``CofferRegistryError/unavailable(engine:reason:)`` when the server cannot be reached or logged into;
    ///   ``CofferRegistryError/io(path:reason:)`` for the epoch key files.
    static func open(
        url: String,
        home: String,
        environment: [String: String]? = nil,
        options: PostgresPool.Options = PostgresPool.Options(),
        creatingDatabase: Bool = false
    ) async throws(CofferRegistryError) -> PostgresMetadataStore {
        let endpoint = try PostgresEndpoint(url: url)
        let password = try endpoint.password(environment: environment)
        if creatingDatabase { _ = try await PostgresPool.createDatabaseIfMissing(endpoint, password: password) }
        let database = try PostgresPool(endpoint: endpoint, password: password, options: options)
        let running = Task { await database.run() }
        do {
            // The connection that checks the server is the one the command's queries then use (no second login).
            database.adopt(try await database.openConnection())
            try await PostgresMigrator.migrate(database)
            let keys = try await EpochKeys.open(home: home, database: database)
            return PostgresMetadataStore(database: database, keys: keys, running: running)
        } catch {
            await database.closePrimary()
            running.cancel()
            await running.value
            throw error
        }
    }

    func close() async {
        if let held = leadership.withLock({ held in
            defer { held = nil }
            return held
        }) {
            await held.release()
        }
        await database.closePrimary()
        running.cancel()
        await running.value
    }

    func leadsAuditHeads() async -> Bool {
        if leadership.withLock({ $0?.isHeld ?? false }) { return true }
        // Free when its holder's connection ended (the replica stopped or died): the next to ask takes it.
        guard let taken = try? await PostgresSessionLock.tryAcquire(PostgresAdvisoryLock.auditHeadSigner, on: database) else { return false }
        let previous = leadership.withLock { held in
            defer { held = taken }
            return held
        }
        if let previous { await previous.release() }
        return true
    }

    static let logger = PostgresPool.logger

    // MARK: - Maintenance

    /// What PostgreSQL's own checks cannot say about a Coffer database: the migrations recorded are exactly the ones
    /// this build embeds, every immutability trigger of `schema/postgres/` is there and enabled, the epoch row
    /// exists, its key file is present and no sealed value is under another epoch.
    func integrityProblems() async throws(CofferRegistryError) -> [String] {
        var problems: [String] = []
        let applied = try await PostgresMigrator.appliedMigrations(database)
        let embedded = EmbeddedSchema.postgresMigrations.map(\.name)
        if applied != embedded {
            problems.append(
                "PostgreSQL migrations recorded \(applied.joined(separator: ", ")), this Coffer's are \(embedded.joined(separator: ", "))"
            )
        }
        var present: [String: String] = [:]
        for row in try await database.query(
            "SELECT tgname::text, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'pg_%'"
        ) {
            let (name, enabled) = try reading { try row.decode((String, String).self) }
            present[name] = enabled
        }
        for trigger in Self.expectedTriggers {
            switch present[trigger] {
            case nil: problems.append("PostgreSQL trigger \(trigger) is missing (its immutability rule is not enforced)")
            case "D": problems.append("PostgreSQL trigger \(trigger) is disabled (its immutability rule is not enforced)")
            default: break
            }
        }
        let epoch = try await scalar(Int64.self, "SELECT epoch FROM epoch_state")
        if let epoch {
            if !keys.keyFileExists(UInt32(truncatingIfNeeded: epoch)) {
                problems.append("the key file of the current epoch \(epoch) is missing from \(keys.directory)")
            }
            for column in keys.columns {
                let stale = try await scalar(
                    Int64.self,
                    PostgresQuery(
                        unsafeSQL: """
                            SELECT count(*) FROM \(try PostgresRecords.identifier(column.table))
                            WHERE \(try PostgresRecords.identifier(column.column)) IS NOT NULL
                              AND (substring(\(column.column) FROM 1 FOR 4) <> 'cfe1'::bytea
                                   OR get_byte(\(column.column), 4)::bigint * 16777216 + get_byte(\(column.column), 5) * 65536
                                      + get_byte(\(column.column), 6) * 256 + get_byte(\(column.column), 7) <> \(epoch))
                            """
                    )
                )
                if let stale, stale > 0 { problems.append("\(stale) values of \(column) are not sealed under the current epoch \(epoch)") }
            }
        } else {
            problems.append("the epoch_state row is missing")
        }
        return problems
    }

    /// The triggers `schema/postgres/` creates, by name.
    static let expectedTriggers: [String] = EmbeddedSchema.postgresMigrations.flatMap { migration in
        migration.sql.split(separator: "\n").compactMap { line -> String? in
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count > 2, words[0] == "CREATE", words[1] == "TRIGGER" else { return nil }
            return String(words[2])
        }
    }

    func materializedTables() async throws(CofferRegistryError) -> MaterializedTables {
        var tables = MaterializedTables()
        tables.principals = try await fetchAll(PrincipalRecord.self, "SELECT * FROM principals")
        tables.grants = try await fetchAll(GrantRecord.self, "SELECT principal, role, scope, alias, granted_at, granted_by FROM grants")
        tables.trusted = try await fetchAll(TrustedSignerRecord.self, "SELECT * FROM trusted_signers")
        for row in try await database.query(
            "SELECT m.name, a.alias, v.version FROM aliases a JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id"
        ) {
            let (model, alias, version) = try reading { try row.decode((String, String, String).self) }
            tables.aliases.append(.init(model: model, alias: alias, version: version))
        }
        tables.policies = try await fetchAll(PolicyRecord.self, "SELECT * FROM policies")
        tables.budgets = try await fetchAll(BudgetRecord.self, "SELECT * FROM budgets")
        for row in try await database.query(
            "SELECT c.dataset_id, m.name, v.version FROM budget_charges c JOIN versions v ON v.id = c.version_id JOIN models m ON m.id = v.model_id"
        ) {
            let (dataset, model, version) = try reading { try row.decode((String, String, String).self) }
            tables.charges.append(.init(dataset: dataset, model: model, version: version))
        }
        tables.erasures = try await heads("\(unescaped: Self.headSelect) WHERE v.id IN (SELECT version_id FROM erasures)")
        tables.keys = try await fetchAll(RegistryKeyRecord.self, "SELECT * FROM registry_keys")
        tables.tokens = try await fetchAll(APITokenRecord.self, "SELECT * FROM api_tokens")
        tables.versions = try await heads("\(unescaped: Self.headSelect)")
        return tables
    }
}
