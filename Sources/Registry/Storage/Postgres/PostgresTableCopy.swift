import Foundation
import GRDB
import PostgresNIO

/// Copies an embedded registry's rows from a SQLite snapshot into an empty PostgreSQL store (docs/FORMAT.md, "Moving an
/// embedded registry"). It goes by table and column names, which the two schemas share, so a migration that adds a
/// column needs nothing here; only the sealed columns and the skipped tables are named.
///
/// ```swift
/// let copy = try await PostgresTableCopy.plan(from: snapshot, into: store)   // refusals before anything is written
/// let rows = try await copy.run(audit: entry)                                // one transaction
/// ```
struct PostgresTableCopy: Sendable {
    /// Tables whose rows stay behind: unfinished remote pushes, whose temporary files do not move with them, and web
    /// sign-in sessions (people sign in again).
    static let skipped: Set<String> = ["uploads", "pending_blobs", "web_sessions"]
    /// Rows that stay behind in tables that are copied: SQLite's mark that its write-ahead log still owes a truncation
    /// (``SQLiteMetadataStore/truncationOwedKey``, left when a reader blocked it), which means nothing to PostgreSQL.
    static let rowsLeftBehind: [String: String] = ["registry_meta": "key <> '\(SQLiteMetadataStore.truncationOwedKey)'"]
    /// Rows per `INSERT`: well under PostgreSQL's 65,535 parameters for the widest table, few round trips for the rest.
    static let batchRows = 500

    enum ColumnType: String, Sendable {
        case bigint, double, text, bytea, boolean

        init?(postgres name: String) {
            switch name {
            case "bigint", "integer", "smallint": self = .bigint
            case "double precision", "real": self = .double
            case "text", "character varying": self = .text
            case "bytea": self = .bytea
            case "boolean": self = .boolean
            default: return nil
            }
        }
    }

    struct Column: Sendable {
        let name: String
        let type: ColumnType
        let isIdentity: Bool
    }

    struct Table: Sendable {
        let name: String
        let columns: [Column]
        /// The column whose values are sealed under the epoch key, if any.
        let sealed: SealedColumn?
    }

    /// A SQLite value as read, before it takes its PostgreSQL column's type.
    enum Value: Sendable {
        case null
        case integer(Int64)
        case real(Double)
        case text(String)
        case blob(Data)

        init(_ value: DatabaseValue) {
            switch value.storage {
            case .null: self = .null
            case .int64(let v): self = .integer(v)
            case .double(let v): self = .real(v)
            case .string(let v): self = .text(v)
            case .blob(let v): self = .blob(v)
            }
        }

        var kind: String {
            switch self {
            case .null: "NULL"
            case .integer: "an integer"
            case .real: "a real"
            case .text: "text"
            case .blob: "a blob"
            }
        }
    }

    let source: any DatabaseReader
    let target: PostgresMetadataStore
    /// In copy order: a referenced table before the tables referencing it.
    let tables: [Table]

    /// Matches the two schemas and refuses what cannot be copied faithfully: a source table or column the target
    /// lacks, a column type the copy does not know, a target that holds rows already.
    static func plan(from source: any DatabaseReader, into target: PostgresMetadataStore) async throws(CofferRegistryError) -> PostgresTableCopy {
        let sourceColumns: [String: [String]]
        do {
            sourceColumns = try await source.read { db in
                let names = try String.fetchAll(
                    db,
                    sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'grdb_migrations'"
                )
                var columns: [String: [String]] = [:]
                for name in names { columns[name] = try String.fetchAll(db, sql: "SELECT name FROM pragma_table_info(?)", arguments: [name]) }
                return columns
            }
        } catch {
            throw SQLiteMetadataStore.translate(error)
        }
        var targetColumns: [String: [(name: String, type: String, isIdentity: Bool)]] = [:]
        for row in try await target.database.query(
            "SELECT table_name::text, column_name::text, data_type::text, is_identity::text FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY ordinal_position"
        ) {
            let (table, column, type, identity) = try target.reading { try row.decode((String, String, String, String).self) }
            targetColumns[table, default: []].append((column, type, identity == "YES"))
        }
        var tables: [String: Table] = [:]
        for (name, columns) in sourceColumns where !skipped.contains(name) {
            guard let available = targetColumns[name] else {
                throw .refused("the SQLite table \(name) has no PostgreSQL counterpart: a newer Coffer made this registry")
            }
            var shared: [Column] = []
            for column in columns {
                guard let match = available.first(where: { $0.name == column }) else {
                    throw .refused("the SQLite column \(name).\(column) has no PostgreSQL counterpart: a newer Coffer made this registry")
                }
                guard let type = ColumnType(postgres: match.type) else {
                    throw .database("\(name).\(column) is \(match.type) in PostgreSQL, a type the copy does not know")
                }
                shared.append(Column(name: column, type: type, isIdentity: match.isIdentity))
            }
            tables[name] = Table(name: name, columns: shared, sealed: SealedColumn.all.first { $0.table == name })
        }
        for name in tables.keys.sorted() {
            let quoted = try PostgresRecords.identifier(name)
            if try await target.scalar(Bool.self, PostgresQuery(unsafeSQL: "SELECT EXISTS (SELECT 1 FROM \(quoted))")) == true {
                throw .registryExists("\(target.name) (its table \(name) holds rows already)")
            }
        }
        var references: [String: Set<String>] = [:]
        for row in try await target.database.query(
            """
            SELECT DISTINCT child.relname::text, parent.relname::text FROM pg_constraint c
            JOIN pg_class child ON child.oid = c.conrelid JOIN pg_class parent ON parent.oid = c.confrelid
            JOIN pg_namespace n ON n.oid = child.relnamespace
            WHERE c.contype = 'f' AND n.nspname = current_schema()
            """
        ) {
            let (child, parent) = try target.reading { try row.decode((String, String).self) }
            // A table referring to itself (a version's parent) is copied in rowid order, where the parent comes first.
            if child != parent { references[child, default: []].insert(parent) }
        }
        return PostgresTableCopy(source: source, target: target, tables: try order(tables, references: references))
    }

    /// Refuses a database whose ledger holds records before its store is opened: opening it would first ask for the
    /// epoch keys of the registry that wrote it, which live in another home directory.
    static func requireNoLedger(url: String) async throws(CofferRegistryError) {
        let endpoint = try PostgresEndpoint(url: url)
        let held = try await PostgresPool.withDatabase(endpoint, password: try endpoint.password(environment: nil)) { database in
            guard try await database.query("SELECT to_regclass('ledger') IS NOT NULL").first?.decode(Bool.self) == true else { return false }
            return try await database.query("SELECT EXISTS (SELECT 1 FROM ledger)").first?.decode(Bool.self) == true
        }
        if held { throw .registryExists("\(endpoint.engine) (its table ledger holds rows already)") }
    }

    /// The ids of the versions in `source`, in order.
    static func versionIDs(in source: any DatabaseReader) async throws(CofferRegistryError) -> [Int64] {
        do { return try await source.read { db in try Int64.fetchAll(db, sql: "SELECT id FROM versions ORDER BY id") } } catch {
            throw SQLiteMetadataStore.translate(error)
        }
    }

    /// Tables with every table they reference before them; ties by name, so the order is the same on every run.
    static func order(_ tables: [String: Table], references: [String: Set<String>]) throws(CofferRegistryError) -> [Table] {
        var ordered: [Table] = []
        var placed: Set<String> = []
        while placed.count < tables.count {
            let ready = tables.keys.sorted().filter { name in
                !placed.contains(name) && (references[name] ?? []).allSatisfy { placed.contains($0) || tables[$0] == nil }
            }
            guard let next = ready.first else { throw .database("the PostgreSQL tables' foreign keys form a cycle") }
            placed.insert(next)
            ordered.append(tables[next]!)
        }
        return ordered
    }

    /// Copies every row in one transaction, then moves each identity past the copied ids and chains `audit` after the
    /// copied audit log. Returns the rows copied, by table.
    func run(audit: AuditDraft) async throws(CofferRegistryError) -> [String: Int] {
        let copied = try await copyRows(audit: audit)
        // Statistics for what was just loaded: until autovacuum gets to it (a minute or more), the planner would know
        // nothing of the copied rows, and `list --where` on 100,000 versions sorted every match (100-350 ms) instead of
        // reading the (model, created) index until it had a page (under 1 ms).
        let names = try tables.map { table throws(CofferRegistryError) in try PostgresRecords.identifier(table.name) }
        if !names.isEmpty { try await target.database.query(PostgresQuery(unsafeSQL: "ANALYZE \(names.joined(separator: ", "))")) }
        return copied
    }

    private func copyRows(audit: AuditDraft) async throws(CofferRegistryError) -> [String: Int] {
        try await target.database.transaction { connection in
            // Sealing shares the epoch row, as every write that seals does: a rotation waits for the copy.
            _ = try await connection.run("SELECT epoch FROM epoch_state FOR SHARE")
            var copied: [String: Int] = [:]
            for table in tables {
                copied[table.name] = try await copy(table, on: connection)
            }
            for table in tables {
                for column in table.columns where column.isIdentity {
                    let name = try PostgresRecords.identifier(table.name)
                    let id = try PostgresRecords.identifier(column.name)
                    try await connection.rows(
                        PostgresQuery(
                            unsafeSQL: "SELECT setval(pg_get_serial_sequence($1, $2), (SELECT max(\(id)) FROM \(name)))",
                            binds: Self.bindings([.text(name), .text(column.name)], types: [.text, .text])
                        )
                    )
                }
            }
            try await PostgresMetadataStore.append([audit], on: connection)
            return copied
        }
    }

    private func copy(_ table: Table, on connection: PostgresConnection) async throws -> Int {
        let names = table.columns.map(\.name)
        let selected = try names.map { name throws(CofferRegistryError) in try PostgresRecords.identifier(name) }.joined(separator: ", ")
        let insert = "INSERT INTO \(try PostgresRecords.identifier(table.name)) (\(selected)) VALUES "
        var after: Int64 = .min
        var count = 0
        while true {
            let (page, last) = try await self.page(table, columns: selected, after: after)
            if page.isEmpty { return count }
            after = last
            var binds = PostgresBindings()
            var tuples: [String] = []
            var parameter = 0
            for (index, row) in page.enumerated() {
                var values = row
                if let sealed = table.sealed, let at = names.firstIndex(of: sealed.column), case .blob(let plain) = values[at] {
                    let rowKey = sealed.rowKey(try sealed.keyColumns.map { key in try Self.keyText(values[names.firstIndex(of: key)!], table, key) })
                    values[at] = .blob(Data(try await target.keys.seal(Array(plain), column: sealed, rowKey: rowKey, on: connection)))
                }
                do {
                    try Self.append(values, types: table.columns.map(\.type), to: &binds)
                } catch {
                    throw CofferRegistryError.database("\(table.name) row \(count + index + 1): \(error.description)")
                }
                tuples.append(
                    "("
                        + names.indices.map { _ in
                            parameter += 1
                            return "$\(parameter)"
                        }.joined(separator: ", ") + ")"
                )
            }
            try await connection.rows(PostgresQuery(unsafeSQL: insert + tuples.joined(separator: ", "), binds: binds))
            count += page.count
        }
    }

    /// Up to ``batchRows`` rows after `rowid` `after`, in rowid order, and the last rowid read.
    private func page(_ table: Table, columns: String, after: Int64) async throws(CofferRegistryError) -> ([[Value]], Int64) {
        let kept = Self.rowsLeftBehind[table.name].map { " AND \($0)" } ?? ""
        let sql =
            "SELECT rowid, \(columns) FROM \(try PostgresRecords.identifier(table.name)) WHERE rowid > ?\(kept) ORDER BY rowid LIMIT \(Self.batchRows)"
        do {
            return try await source.read { db in
                var rows: [[Value]] = []
                var last = after
                for row in try Row.fetchAll(db, sql: sql, arguments: [after]) {
                    last = row[0]
                    rows.append((1..<row.count).map { Value(row[$0] as DatabaseValue) })
                }
                return (rows, last)
            }
        } catch {
            throw SQLiteMetadataStore.translate(error)
        }
    }

    /// A key column's value as PostgreSQL's `::text` prints it (``SealedColumn/rowKey(_:)``).
    static func keyText(_ value: Value, _ table: Table, _ column: String) throws(CofferRegistryError) -> String {
        switch value {
        case .integer(let v): return String(v)
        case .text(let v): return v
        default: throw .database("\(table.name).\(column) holds \(value.kind), not a key")
        }
    }

    static func bindings(_ values: [Value], types: [ColumnType]) throws(CofferRegistryError) -> PostgresBindings {
        var binds = PostgresBindings()
        try append(values, types: types, to: &binds)
        return binds
    }

    /// Binds each value as its column's type; a pairing SQLite allows but the column's meaning does not is refused.
    static func append(_ values: [Value], types: [ColumnType], to binds: inout PostgresBindings) throws(CofferRegistryError) {
        for (value, type) in zip(values, types) {
            switch (value, type) {
            case (.null, _): binds.appendNull()
            case (.integer(let v), .bigint): binds.append(v)
            case (.integer(let v), .double): binds.append(Double(v))
            case (.real(let v), .double): binds.append(v)
            case (.integer(let v), .boolean) where v == 0 || v == 1: binds.append(v == 1)
            case (.text(let v), .text): binds.append(v)
            case (.blob(let v), .bytea):
                do { try binds.append(v) } catch { throw .database("cannot bind a blob: \(error)") }
            default: throw .database("SQLite holds \(value.kind) where PostgreSQL's column is \(type.rawValue)")
            }
        }
    }
}
