import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A numeric CSV table: a header row of column names, then rows of numbers.
///
/// Refuses, naming the row and column: ragged rows, cells that are not numbers, NaN and infinities, and an empty table.
public struct CSVTable: Sendable {
    public let columns: [String]
    /// Row-major values.
    public let values: [Double]
    public var rowCount: Int { columns.isEmpty ? 0 : values.count / columns.count }

    public init(text: String, source: String = "input") throws(CofferTrainingError) {
        try self.init(bytes: Array(text.utf8), source: source)
    }

    /// Parses UTF-8 bytes directly (no `String` per cell): cells are split on commas, lines on LF or CRLF,
    /// spaces and double quotes around a cell are ignored, and numbers are read with `strtod`.
    init(bytes: [UInt8], source: String) throws(CofferTrainingError) {
        var lines: [ArraySlice<UInt8>] = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            line.last == 0x0D ? line.dropLast() : line
        }
        while let last = lines.last, Self.trim(last).isEmpty { lines.removeLast() }
        guard let header = lines.first, !Self.trim(header).isEmpty else { throw .invalidData("\(source): empty file, expected a header row") }
        let columns = header.split(separator: 0x2C, omittingEmptySubsequences: false).map { String(decoding: Self.trim($0), as: UTF8.self) }
        var values: [Double] = []
        values.reserveCapacity((lines.count - 1) * columns.count)
        var scratch = [CChar](repeating: 0, count: 64)
        for (index, line) in lines.dropFirst().enumerated() {
            let row = index + 2  // 1-based, counting the header
            let cells = line.split(separator: 0x2C, omittingEmptySubsequences: false)
            guard cells.count == columns.count else {
                throw .invalidData("\(source) row \(row): \(cells.count) cells, the header has \(columns.count) columns")
            }
            for (c, cell) in cells.enumerated() {
                let text = Self.trim(cell)
                if scratch.count <= text.count { scratch = [CChar](repeating: 0, count: text.count + 1) }
                var value = Double.nan
                var parsed = false
                scratch.withUnsafeMutableBufferPointer { buffer in
                    for (k, byte) in text.enumerated() { buffer[k] = CChar(bitPattern: byte) }
                    buffer[text.count] = 0
                    var end: UnsafeMutablePointer<CChar>? = nil
                    value = strtod(buffer.baseAddress!, &end)
                    parsed = !text.isEmpty && end == buffer.baseAddress! + text.count
                }
                guard parsed else {
                    throw .invalidData("\(source) row \(row), column '\(columns[c])': '\(String(decoding: text, as: UTF8.self))' is not a number")
                }
                guard value.isFinite else {
                    throw .invalidData("\(source) row \(row), column '\(columns[c])': \(String(decoding: text, as: UTF8.self)) is not finite")
                }
                values.append(value)
            }
        }
        guard !values.isEmpty else { throw .invalidData("\(source): no data rows") }
        self.columns = columns
        self.values = values
    }

    /// A table of `rows`, each holding one value per column in `columns`' order; what a parsed table would refuse
    /// (a ragged or non-finite row, no rows) is refused the same way. No text is made, so a column name is never read
    /// as a separator or a line: a server builds the table of a predict request this way.
    public init(columns: [String], rows: [[Double]], source: String) throws(CofferTrainingError) {
        var values: [Double] = []
        values.reserveCapacity(rows.count * columns.count)
        for (index, row) in rows.enumerated() {
            guard row.count == columns.count else {
                throw .invalidData("\(source) row \(index + 1): \(row.count) values, there are \(columns.count) columns")
            }
            if let c = row.firstIndex(where: { !$0.isFinite }) {
                throw .invalidData("\(source) row \(index + 1), column '\(columns[c])': \(row[c]) is not finite")
            }
            values += row
        }
        guard !values.isEmpty else { throw .invalidData("\(source): no data rows") }
        self.columns = columns
        self.values = values
    }

    /// A cell without surrounding spaces, tabs and double quotes.
    private static func trim(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        func junk(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x22 || byte == 0x0D }
        var slice = bytes
        while let first = slice.first, junk(first) { slice = slice.dropFirst() }
        while let last = slice.last, junk(last) { slice = slice.dropLast() }
        return slice
    }

    public init(contentsOf path: String) throws(CofferTrainingError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw .invalidData("\(path): cannot read") }
        try self.init(bytes: Array(data), source: path)
    }

    /// The index of `name`, or an error naming the missing column.
    public func column(_ name: String) throws(CofferTrainingError) -> Int {
        guard let index = columns.firstIndex(of: name) else {
            throw .invalidData("column '\(name)' is missing (columns: \(columns.joined(separator: ", ")))")
        }
        return index
    }

    public func value(row: Int, column: Int) -> Double { values[row * columns.count + column] }
}
