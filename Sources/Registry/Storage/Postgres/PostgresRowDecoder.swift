import Foundation
import PostgresNIO

/// Reads a record from a row: each property from the column named by its coding key.
struct PostgresRowDecoder: Decoder {
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
