import Foundation
import NIOCore
import PostgresNIO

/// The column names and bound values a record encodes to, in order.
final class PostgresColumnCollector {
    var names: [String] = []
    var bindings = PostgresBindings()
}

/// Writes a record's properties into a ``PostgresColumnCollector``, one column each.
struct PostgresRecordEncoder: Encoder {
    let collector: PostgresColumnCollector
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(ColumnContainer<Key>(collector: collector))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer { RefusingContainer(key: nil) }
    func singleValueContainer() -> any SingleValueEncodingContainer { RefusingContainer(key: nil) }
}

private struct ColumnContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let collector: PostgresColumnCollector
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
