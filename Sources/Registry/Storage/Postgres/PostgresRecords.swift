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
            return try T(from: RowDecoder(row: PostgresRandomAccessRow(row)))
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
        let collector = ColumnCollector()
        do {
            try record.encode(to: RecordEncoder(collector: collector))
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

// MARK: - Decoding

private struct RowDecoder: Decoder {
    let row: PostgresRandomAccessRow
    var codingPath: [any CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(RowContainer<Key>(row: row))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw DecodingError.typeMismatch([Any].self, .init(codingPath: [], debugDescription: "a row is a record of named columns"))
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        throw DecodingError.typeMismatch(Any.self, .init(codingPath: [], debugDescription: "a row is a record of named columns"))
    }
}

private struct RowContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let row: PostgresRandomAccessRow
    var codingPath: [any CodingKey] { [] }
    var allKeys: [Key] { row.compactMap { Key(stringValue: $0.columnName) } }

    func contains(_ key: Key) -> Bool { row.contains(key.stringValue) }

    private func cell(_ key: Key) throws -> PostgresCell {
        guard row.contains(key.stringValue) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: [key], debugDescription: "no column \(key.stringValue)"))
        }
        return row[key.stringValue]
    }

    func decodeNil(forKey key: Key) throws -> Bool { try cell(key).bytes == nil }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try CellDecoder(cell: try cell(key), key: key).decode(type)
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try CellDecoder(cell: try cell(key), key: key).decode(type) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try CellDecoder(cell: try cell(key), key: key).decode(type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "a column holds one value, not a record"))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        throw DecodingError.typeMismatch([Any].self, .init(codingPath: [key], debugDescription: "a column holds one value, not a list"))
    }

    func superDecoder() throws -> any Decoder {
        throw DecodingError.typeMismatch(Any.self, .init(codingPath: [], debugDescription: "records have no superclass"))
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        throw DecodingError.typeMismatch(Any.self, .init(codingPath: [key], debugDescription: "records have no superclass"))
    }
}

/// One cell: the primitive types read directly, a `RawRepresentable` through its single value container.
private struct CellDecoder: Decoder, SingleValueDecodingContainer {
    let cell: PostgresCell
    let key: any CodingKey
    var codingPath: [any CodingKey] { [key] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Nested: CodingKey>(keyedBy type: Nested.Type) throws -> KeyedDecodingContainer<Nested> {
        throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "a column holds one value, not a record"))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw DecodingError.typeMismatch([Any].self, .init(codingPath: [key], debugDescription: "a column holds one value, not a list"))
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { cell.bytes == nil }

    private func read<T: PostgresDecodable>(_ type: T.Type) throws -> T {
        guard cell.bytes != nil else {
            throw DecodingError.valueNotFound(type, .init(codingPath: [key], debugDescription: "NULL"))
        }
        do {
            return try cell.decode(type)
        } catch {
            throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "\(cell.dataType)"))
        }
    }

    private func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        let value = try read(Int64.self)
        guard let exact = T(exactly: value) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [key], debugDescription: "\(value) does not fit in \(type)"))
        }
        return exact
    }

    func decode(_ type: Bool.Type) throws -> Bool { try read(Bool.self) }
    func decode(_ type: String.Type) throws -> String {
        // postgres-nio reads any type's bytes as a string (a BIGINT's eight bytes included): only text types here.
        guard cell.bytes == nil || [.text, .varchar, .bpchar, .name].contains(cell.dataType) else {
            throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "\(cell.dataType)"))
        }
        return try read(String.self)
    }
    func decode(_ type: Double.Type) throws -> Double { try read(Double.self) }
    func decode(_ type: Float.Type) throws -> Float { Float(try read(Double.self)) }
    func decode(_ type: Int.Type) throws -> Int { try integer(Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try read(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(UInt64.self) }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if type == [UInt8].self {
            guard cell.dataType == .bytea else {
                throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "\(cell.dataType)"))
            }
            let buffer = try read(ByteBuffer.self)
            return Array(buffer.readableBytesView) as! T
        }
        if type == Data.self {
            guard cell.dataType == .bytea else {
                throw DecodingError.typeMismatch(type, .init(codingPath: [key], debugDescription: "\(cell.dataType)"))
            }
            return try read(Data.self) as! T
        }
        if let primitive = try decodePrimitive(type) { return primitive }
        return try T(from: self)
    }

    private func decodePrimitive<T>(_ type: T.Type) throws -> T? {
        switch type {
        case is Bool.Type: try decode(Bool.self) as? T
        case is String.Type: try decode(String.self) as? T
        case is Double.Type: try decode(Double.self) as? T
        case is Float.Type: try decode(Float.self) as? T
        case is Int.Type: try decode(Int.self) as? T
        case is Int32.Type: try decode(Int32.self) as? T
        case is Int64.Type: try decode(Int64.self) as? T
        default: nil
        }
    }
}

// MARK: - Encoding

private final class ColumnCollector {
    var names: [String] = []
    var bindings = PostgresBindings()
}

private struct RecordEncoder: Encoder {
    let collector: ColumnCollector
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(ColumnContainer<Key>(collector: collector))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer { RefusingContainer(key: nil) }
    func singleValueContainer() -> any SingleValueEncodingContainer { RefusingContainer(key: nil) }
}

private struct ColumnContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let collector: ColumnCollector
    var codingPath: [any CodingKey] { [] }

    mutating func encodeNil(forKey key: Key) throws {
        collector.names.append(key.stringValue)
        collector.bindings.appendNull()
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        let single = CellEncoder(key: key)
        try single.encode(value)
        guard let bind = single.bind else {
            throw EncodingError.invalidValue(value, .init(codingPath: [key], debugDescription: "no value was written"))
        }
        collector.names.append(key.stringValue)
        try bind(&collector.bindings)
    }

    mutating func encode(_ value: Bool, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: String, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try encode(Column(value), forKey: key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try encode(Column(value), forKey: key) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(RefusingKeyedContainer<NestedKey>(key: key))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer { RefusingContainer(key: key) }
    mutating func superEncoder() -> any Encoder { RefusingEncoder(key: nil) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { RefusingEncoder(key: key) }
}

/// A primitive passed on to the generic path (a keyed container's typed overloads all funnel into one place).
private struct Column<Value: Encodable>: Encodable {
    let value: Value
    init(_ value: Value) { self.value = value }
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}

/// One column's value: primitives bound with their PostgreSQL type, a `RawRepresentable` through its single value.
private final class CellEncoder: Encoder, SingleValueEncodingContainer {
    let key: any CodingKey
    var bind: ((inout PostgresBindings) throws -> Void)?
    var codingPath: [any CodingKey] { [key] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(key: any CodingKey) { self.key = key }

    func container<Nested: CodingKey>(keyedBy type: Nested.Type) -> KeyedEncodingContainer<Nested> {
        KeyedEncodingContainer(RefusingKeyedContainer<Nested>(key: key))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer { RefusingContainer(key: key) }
    func singleValueContainer() -> any SingleValueEncodingContainer { self }

    private func set<V: PostgresDynamicTypeEncodable>(_ value: V) { bind = { $0.append(value) } }

    private func integer<T: FixedWidthInteger>(_ value: T) throws {
        guard let exact = Int64(exactly: value) else {
            throw EncodingError.invalidValue(value, .init(codingPath: [key], debugDescription: "\(value) does not fit in a BIGINT"))
        }
        set(exact)
    }

    func encodeNil() throws { bind = { $0.appendNull() } }
    func encode(_ value: Bool) throws { set(value) }
    func encode(_ value: String) throws { set(value) }
    func encode(_ value: Double) throws { set(value) }
    func encode(_ value: Float) throws { set(Double(value)) }
    func encode(_ value: Int) throws { set(Int64(value)) }
    func encode(_ value: Int8) throws { try integer(value) }
    func encode(_ value: Int16) throws { try integer(value) }
    func encode(_ value: Int32) throws { try integer(value) }
    func encode(_ value: Int64) throws { set(value) }
    func encode(_ value: UInt) throws { try integer(value) }
    func encode(_ value: UInt8) throws { try integer(value) }
    func encode(_ value: UInt16) throws { try integer(value) }
    func encode(_ value: UInt32) throws { try integer(value) }
    func encode(_ value: UInt64) throws { try integer(value) }

    func encode<T: Encodable>(_ value: T) throws {
        switch value {
        case let bytes as [UInt8]: set(ByteBuffer(bytes: bytes))
        case let data as Data: set(ByteBuffer(bytes: data))
        case let value as Bool: set(value)
        case let value as String: set(value)
        case let value as Double: set(value)
        case let value as Int: set(Int64(value))
        case let value as Int64: set(value)
        case let value as Int32: try integer(value)
        default: try value.encode(to: self)
        }
    }
}

/// What a record cannot hold (a nested record, a list, a superclass): every write throws, naming the column.
private struct RefusingContainer: UnkeyedEncodingContainer, SingleValueEncodingContainer {
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { [$0] } ?? [] }
    var count: Int { 0 }

    private func refuse(_ value: Any) -> EncodingError {
        EncodingError.invalidValue(value, .init(codingPath: codingPath, debugDescription: "a column holds one value, not a list or record"))
    }

    mutating func encodeNil() throws { throw refuse(()) }
    mutating func encode<T: Encodable>(_ value: T) throws { throw refuse(value) }
    mutating func encode(_ value: Bool) throws { throw refuse(value) }
    mutating func encode(_ value: String) throws { throw refuse(value) }
    mutating func encode(_ value: Double) throws { throw refuse(value) }
    mutating func encode(_ value: Float) throws { throw refuse(value) }
    mutating func encode(_ value: Int) throws { throw refuse(value) }
    mutating func encode(_ value: Int8) throws { throw refuse(value) }
    mutating func encode(_ value: Int16) throws { throw refuse(value) }
    mutating func encode(_ value: Int32) throws { throw refuse(value) }
    mutating func encode(_ value: Int64) throws { throw refuse(value) }
    mutating func encode(_ value: UInt) throws { throw refuse(value) }
    mutating func encode(_ value: UInt8) throws { throw refuse(value) }
    mutating func encode(_ value: UInt16) throws { throw refuse(value) }
    mutating func encode(_ value: UInt32) throws { throw refuse(value) }
    mutating func encode(_ value: UInt64) throws { throw refuse(value) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(RefusingKeyedContainer<NestedKey>(key: key))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { self }
    mutating func superEncoder() -> any Encoder { RefusingEncoder(key: key) }
}

private struct RefusingKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { [$0] } ?? [] }

    private func refuse(_ value: Any) -> EncodingError {
        EncodingError.invalidValue(value, .init(codingPath: codingPath, debugDescription: "a column holds one value, not a record"))
    }

    mutating func encodeNil(forKey key: Key) throws { throw refuse(()) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: String, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Float, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Int, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { throw refuse(value) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { throw refuse(value) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(RefusingKeyedContainer<NestedKey>(key: self.key))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer { RefusingContainer(key: self.key) }
    mutating func superEncoder() -> any Encoder { RefusingEncoder(key: key) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { RefusingEncoder(key: self.key) }
}

private struct RefusingEncoder: Encoder {
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { [$0] } ?? [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(RefusingKeyedContainer<Key>(key: key))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer { RefusingContainer(key: key) }
    func singleValueContainer() -> any SingleValueEncodingContainer { RefusingContainer(key: key) }
}
