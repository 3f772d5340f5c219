import Foundation
import NIOCore
import PostgresNIO

/// Typed rows for PostgreSQL: `Codable` record structs (the same ones GRDB reads and writes, columns named by their
/// `CodingKeys`) decoded from postgres-nio rows and encoded into `INSERT` statements with bound values.
///
/// Column types: `Int64`, `Int`, `Int32` (BIGINT, INTEGER), `Double` (DOUBLE PRECISION), `String` (TEXT), `Bool`,
/// `[UInt8]` and `Data` (BYTEA), optionals for NULL, and `RawRepresentable` enums over those. Everything else (a
/// nested struct, an array other than bytes) is refused with the column's name.
///
/// ```swift
/// struct Model: Codable { var id: Int64?; var name: String; var createdAt: String
///     enum CodingKeys: String, CodingKey { case id, name, createdAt = "created_at" } }
/// let insert = try PostgresRecords.insert(Model(id: nil, name: "m", createdAt: now), into: "models", returning: ["id"])
/// let models = try await database.fetchAll(Model.self, "SELECT * FROM models WHERE name = \(name)")
/// ```
enum PostgresRecords {
    /// Decodes `row` into a `T`, each property read from the column named by its coding key.
    ///
    /// - Throws: ``CofferRegistryError/database(_:)`` naming the column that is missing, NULL for a non-optional
    ///   property, or of another type.
    static func decode<T: Decodable>(_ type: T.Type, from row: PostgresRow) throws(CofferRegistryError) -> T {
        do {
            return try T(from: PostgresRowDecoder(row: PostgresRandomAccessRow(row)))
        } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .database("cannot read a \(T.self) from a row: \(describe(error))")
        }
    }

    /// The column names and bound values of `record`, in its encoding order.
    ///
    /// A `nil` optional is left out (synthesized `Encodable` skips it), so the column takes its default: NULL for
    /// every nullable column of the schema, the next identity for an omitted `id`.
    static func columns<T: Encodable>(of record: T) throws(CofferRegistryError) -> (names: [String], bindings: PostgresBindings) {
        let collector = PostgresColumnCollector()
        do {
            try record.encode(to: PostgresRecordEncoder(collector: collector))
        } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .database("cannot write a \(T.self) as a row: \(describe(error))")
        }
        return (collector.names, collector.bindings)
    }

    /// `INSERT INTO table (columns...) VALUES ($1, ...) [RETURNING ...]` for `record`, every value bound.
    ///
    /// - Parameters:
    ///   - record: the row; its coding keys name the columns.
    ///   - table: a table name from code (letters, digits, `_`), never from user input.
    ///   - returning: columns to return (e.g. an identity `id` the database assigned).
    static func insert<T: Encodable>(_ record: T, into table: String, returning: [String] = []) throws(CofferRegistryError) -> PostgresQuery {
        let (names, bindings) = try columns(of: record)
        var sql = "INSERT INTO \(try identifier(table))"
        if names.isEmpty {
            sql += " DEFAULT VALUES"
        } else {
            sql += " (\(try names.map(identifier).joined(separator: ", "))) VALUES ("
            sql += (1...names.count).map { "$\($0)" }.joined(separator: ", ") + ")"
        }
        if !returning.isEmpty { sql += " RETURNING \(try returning.map(identifier).joined(separator: ", "))" }
        return PostgresQuery(unsafeSQL: sql, binds: bindings)
    }

    /// `name` double-quoted, after checking it is a plain lower-case SQL identifier (as every Coffer table and
    /// column is): identifiers cannot be bound, so only names from code are accepted.
    static func identifier(_ name: String) throws(CofferRegistryError) -> String {
        guard let first = name.unicodeScalars.first, first == "_" || ("a"..."z").contains(first),
            name.unicodeScalars.allSatisfy({ $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) }),
            name.unicodeScalars.count <= 63
        else {
            throw .database("'\(name)' is not a plain SQL identifier (a-z, 0-9, _)")
        }
        return "\"\(name)\""
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "no column \(key.stringValue)"
        case DecodingError.valueNotFound(_, let context): "column \(column(context)) is NULL"
        case DecodingError.typeMismatch(let type, let context): "column \(column(context)) is not a \(type)"
        case DecodingError.dataCorrupted(let context): "column \(column(context)): \(context.debugDescription)"
        case EncodingError.invalidValue(_, let context): "column \(column(context)): \(context.debugDescription)"
        default: "\(error)"
        }
    }

    private static func column(_ context: DecodingError.Context) -> String { context.codingPath.first?.stringValue ?? "?" }
    private static func column(_ context: EncodingError.Context) -> String { context.codingPath.first?.stringValue ?? "?" }
}

extension PostgresRow {
    /// This row as a record (``PostgresRecords/decode(_:from:)``).
    func record<T: Decodable>(_ type: T.Type) throws(CofferRegistryError) -> T {
        try PostgresRecords.decode(type, from: self)
    }
}

extension PostgresConnection {
    /// Runs `query` and collects its result. Every statement Coffer sends goes through here.
    ///
    /// The statement is handed to the connection on its event loop, after checking there that the connection is open.
    /// postgres-nio writes a statement to its channel without waiting for the write: written after the channel had
    /// closed (and dropped its handlers), it is never answered, and its caller waits forever. A push hung so for a
    /// minute across a PostgreSQL restart: the pool had leased it a connection the server had just closed. On the event
    /// loop the check and the write cannot be split by the close; once written, a failing connection fails the statement.
    @discardableResult
    func run(_ query: PostgresQuery) async throws -> PostgresQueryResult {
        try await eventLoop.flatSubmit { () -> EventLoopFuture<PostgresQueryResult> in
            guard !self.isClosed else { return self.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
            return self.query(query, logger: PostgresPool.logger)
        }.get()
    }

    /// Runs `query` and collects its rows (inside a transaction, where errors are translated by the transaction).
    @discardableResult
    func rows(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await run(query).rows
    }

    /// The rows of `query` as records.
    func fetchAll<T: Decodable>(_ type: T.Type, _ query: PostgresQuery) async throws -> [T] {
        var records: [T] = []
        for row in try await rows(query) { records.append(try row.record(type)) }
        return records
    }

    /// The first row of `query` as a record, `nil` when there is none.
    func fetchOne<T: Decodable>(_ type: T.Type, _ query: PostgresQuery) async throws -> T? {
        try await fetchAll(type, query).first
    }

    /// Inserts `record` into `table`; with `returning`, the returned row.
    @discardableResult
    func insert<T: Encodable>(_ record: T, into table: String, returning: [String] = []) async throws -> PostgresRow? {
        try await rows(PostgresRecords.insert(record, into: table, returning: returning)).first
    }
}

extension PostgresPool {
    /// The rows of `query` as records.
    func fetchAll<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> [T] {
        var records: [T] = []
        for row in try await self.query(query) { records.append(try row.record(type)) }
        return records
    }

    /// The first row of `query` as a record, `nil` when there is none.
    func fetchOne<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws(CofferRegistryError) -> T? {
        try await fetchAll(type, query).first
    }

    /// Inserts `record` into `table` outside any transaction; with `returning`, the returned row.
    @discardableResult
    func insert<T: Encodable>(_ record: T, into table: String, returning: [String] = []) async throws(CofferRegistryError) -> PostgresRow? {
        try await query(PostgresRecords.insert(record, into: table, returning: returning)).first
    }
}
