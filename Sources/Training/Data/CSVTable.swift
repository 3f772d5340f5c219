import Foundation

/// A numeric CSV table: a header row of column names, then rows of numbers.
///
/// Refuses, naming the row and column: ragged rows, cells that are not numbers, NaN and infinities, and an empty table.
public struct CSVTable: Sendable {
    public let columns: [String]
    /// Row-major values.
    public let values: [Double]
    public var rowCount: Int { columns.isEmpty ? 0 : values.count / columns.count }

    public init(text: String, source: String = "input") throws(CofferTrainingError) {
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let header = lines.first, !header.isEmpty else { throw .invalidData("\(source): empty file, expected a header row") }
        let columns = header.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        var values: [Double] = []
        values.reserveCapacity((lines.count - 1) * columns.count)
        for (index, line) in lines.dropFirst().enumerated() {
            let row = index + 2  // 1-based, counting the header
            let cells = line.split(separator: ",", omittingEmptySubsequences: false)
            guard cells.count == columns.count else {
                throw .invalidData("\(source) row \(row): \(cells.count) cells, the header has \(columns.count) columns")
            }
            for (c, cell) in cells.enumerated() {
                let text = cell.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                guard let value = Double(text) else { throw .invalidData("\(source) row \(row), column '\(columns[c])': '\(text)' is not a number") }
                guard value.isFinite else { throw .invalidData("\(source) row \(row), column '\(columns[c])': \(text) is not finite") }
                values.append(value)
            }
        }
        guard !values.isEmpty else { throw .invalidData("\(source): no data rows") }
        self.columns = columns
        self.values = values
    }

    public init(contentsOf path: String) throws(CofferTrainingError) {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw .invalidData("\(path): cannot read")
        }
        try self.init(text: text, source: path)
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
