/// Appends little-endian fields to a byte array: the encoding of every binary header in docs/FORMAT.md.
struct ByteWriter {
    private(set) var bytes: [UInt8] = []

    mutating func append(_ value: UInt8) { bytes.append(value) }
    mutating func append(_ value: UInt16) { appendLittleEndian(UInt64(value), width: 2) }
    mutating func append(_ value: UInt64) { appendLittleEndian(value, width: 8) }
    mutating func append(_ other: some Sequence<UInt8>) { bytes.append(contentsOf: other) }

    private mutating func appendLittleEndian(_ value: UInt64, width: Int) {
        for i in 0..<width { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }
}

/// Reads little-endian fields from a byte buffer, failing with a caller-chosen error when it runs out.
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var offset = 0
    private let shortInput: CofferCryptoError

    init(_ bytes: [UInt8], shortInput: CofferCryptoError) {
        self.bytes = bytes
        self.shortInput = shortInput
    }

    var remaining: Int { bytes.count - offset }

    mutating func read(_ count: Int) throws(CofferCryptoError) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw shortInput }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func readUInt8() throws(CofferCryptoError) -> UInt8 { try read(1)[0] }
    mutating func readUInt16() throws(CofferCryptoError) -> UInt16 { UInt16(try readLittleEndian(width: 2)) }
    mutating func readUInt64() throws(CofferCryptoError) -> UInt64 { try readLittleEndian(width: 8) }

    private mutating func readLittleEndian(width: Int) throws(CofferCryptoError) -> UInt64 {
        try read(width).enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }
}

// MARK: - Typed-throwing buffer access

// The standard library's `withUnsafeBytes` rethrows untyped errors; these keep `CofferCryptoError` typed.
extension Array where Element == UInt8 {
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(CofferCryptoError) -> R) throws(CofferCryptoError) -> R {
        try withUnsafeBytes { buffer in Result { () throws(CofferCryptoError) in try body(buffer) } }.get()
    }

    mutating func withMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> R) throws(CofferCryptoError) -> R {
        try withUnsafeMutableBytes { buffer in Result { () throws(CofferCryptoError) in try body(buffer) } }.get()
    }
}
