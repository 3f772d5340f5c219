/// The filter language of `coffer list --where`: comparisons joined by `and`.
///
/// `epsilon<=3 and pruning_ratio>=0.5`, `mechanism='dp-sgd'`. Numeric fields take `< <= > >= = !=`
/// and a number; text fields take `=` or `!=` and a single-quoted string. Compiled to SQL with bound
/// arguments, never by pasting the user's text into the query.
public struct WhereExpression: Sendable, Equatable {
    public struct Comparison: Sendable, Equatable {
        public enum Value: Sendable, Equatable {
            case number(Double)
            case text(String)
        }

        /// A column of `versions`, one of the known fields (never the user's text as typed).
        public var field: String
        /// `<`, `<=`, `>`, `>=`, `=` or `!=`.
        public var op: String
        public var value: Value
    }

    static let textColumns: Set<String> = ["mechanism", "accountant", "privacy_unit", "pruning_method", "dataset_id"]
    static let operators = ["<=", ">=", "!=", "<", ">", "="]

    public var comparisons: [Comparison]

    public init(parsing text: String) throws(CofferRegistryError) {
        var comparisons: [Comparison] = []
        let clauses = text.split(separator: " and ", omittingEmptySubsequences: false).map { $0.trimmingWhitespace() }
        guard !text.trimmingWhitespace().isEmpty else { throw Self.error("empty expression") }
        for clause in clauses {
            // The operator is the first of < > = ! in the clause, with a following '=' when there is one.
            guard let start = clause.firstIndex(where: { "<>=!".contains($0) }) else {
                throw Self.error("'\(clause)' has no comparison (use < <= > >= = !=)")
            }
            let next = clause.index(after: start)
            let end = next < clause.endIndex && clause[next] == "=" && clause[start] != "=" ? clause.index(after: next) : next
            let op = String(clause[start..<end])
            guard Self.operators.contains(op) else { throw Self.error("'\(op)' is not a comparison (use < <= > >= = !=)") }
            let field = String(clause[..<start]).trimmingWhitespace().lowercased()
            let raw = String(clause[end...]).trimmingWhitespace()
            if PrivacyMetadata.numericColumns.contains(field) {
                guard let number = Double(raw), number.isFinite else { throw Self.error("\(field) needs a number, got '\(raw)'") }
                comparisons.append(Comparison(field: field, op: op, value: .number(number)))
            } else if Self.textColumns.contains(field) {
                guard op == "=" || op == "!=", raw.count >= 2, raw.hasPrefix("'"), raw.hasSuffix("'") else {
                    throw Self.error("\(field) takes = or != and a 'quoted' value")
                }
                comparisons.append(Comparison(field: field, op: op, value: .text(String(raw.dropFirst().dropLast()))))
            } else {
                let known = (PrivacyMetadata.numericColumns.union(Self.textColumns)).sorted().joined(separator: ", ")
                throw Self.error("unknown field '\(field)' (fields: \(known))")
            }
        }
        self.comparisons = comparisons
    }

    private static func error(_ why: String) -> CofferRegistryError { .invalidFilter(why) }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
