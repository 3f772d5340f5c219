import CofferTestSupport
import Testing

@testable import CofferTraining

@Suite(.ownThread)
struct CSVTableTests {
    @Test func parsesQuotedHeadersCRLFAndBlankTail() throws {
        let table = try CSVTable(text: "\"a\", b ,c\r\n1,2.5,-3e2\r\n 4 ,\"5\",6\n\n", source: "t.csv")
        #expect(table.columns == ["a", "b", "c"])
        #expect(table.rowCount == 2)
        #expect(table.values == [1, 2.5, -300, 4, 5, 6])
        #expect(try table.column("c") == 2)
    }

    @Test(arguments: [
        ("a,b\n1,2\n3\n", "t.csv row 3: 1 cells, the header has 2 columns"),
        ("a,b\n1,2,3\n", "t.csv row 2: 3 cells, the header has 2 columns"),
        ("a,b\n1,x\n", "t.csv row 2, column 'b': 'x' is not a number"),
        ("a,b\n1,\n", "t.csv row 2, column 'b': '' is not a number"),
        ("a,b\n1,nan\n", "t.csv row 2, column 'b': nan is not finite"),
        ("a,b\ninf,1\n", "t.csv row 2, column 'a': inf is not finite"),
        ("a,b\n", "t.csv: no data rows"),
        ("", "t.csv: empty file, expected a header row"),
    ])
    func badInputNamesRowAndColumn(text: String, message: String) {
        #expect(throws: CofferTrainingError.invalidData(message)) { _ = try CSVTable(text: text, source: "t.csv") }
    }

    /// Built from values, a column's name is only a name: commas and line breaks in it make no cells or rows.
    @Test func aTableOfValuesTakesNamesAsTheyAre() throws {
        let table = try CSVTable(columns: ["a,b", "c\n1,2"], rows: [[1, 2], [3, 4]], source: "rows")
        #expect(table.columns == ["a,b", "c\n1,2"] && table.rowCount == 2 && table.values == [1, 2, 3, 4])
        #expect(throws: CofferTrainingError.invalidData("rows row 2: 1 values, there are 2 columns")) {
            _ = try CSVTable(columns: ["a", "b"], rows: [[1, 2], [3]], source: "rows")
        }
        #expect(throws: CofferTrainingError.invalidData("rows row 1, column 'b': nan is not finite")) {
            _ = try CSVTable(columns: ["a", "b"], rows: [[1, .nan]], source: "rows")
        }
        #expect(throws: CofferTrainingError.invalidData("rows: no data rows")) { _ = try CSVTable(columns: ["a"], rows: [], source: "rows") }
    }

    @Test func missingColumnListsTheColumns() throws {
        let table = try CSVTable(text: "a,b\n1,2\n", source: "t.csv")
        #expect(throws: CofferTrainingError.invalidData("column 'z' is missing (columns: a, b)")) { _ = try table.column("z") }
    }
}
