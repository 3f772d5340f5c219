public import Foundation

/// The filter language of `coffer list --where`: comparisons joined by `and`.
///
/// `epsilon<=3 and pruning_ratio>=0.5`, `mechanism='dp-sgd'`, `name='icu/*'`, `tag.stage='prod'`,
/// `created>=7d`. Numeric fields take `< <= > >= = !=` and a number; text fields take `=` or `!=` and a
/// single-quoted string; `name` also matches a prefix (`'icu/*'`); `tag.KEY` compares a tag's value (`!=`: every version
/// without that value, untagged ones included); `created` takes any comparison and an RFC 3339 time or date in quotes
/// (`'2026-11-01'`), or a time before now unquoted (`7d`, `12h`, `90m`). Compiled to SQL with bound arguments, never by
/// pasting the user's text into the query.
public struct WhereExpression: Sendable, Equatable {
    public struct Comparison: Sendable, Equatable {
        public enum Value: Sendable, Equatable {
            case number(Double)
            case text(String)
        }

        /// What is compared; a column is one of the known fields of `versions`, never the user's text as typed.
        public enum Subject: Sendable, Equatable {
            case column(String)
            case modelName
            /// A name ending in `*`: the names starting with what comes before it.
            case modelNamePrefix
            case tag(key: String)
        }

        public var subject: Subject
        /// `<`, `<=`, `>`, `>=`, `=` or `!=`.
        public var op: String
        public var value: Value
    }

    static let textColumns: Set<String> = [
        "mechanism", "accountant", "privacy_unit", "pruning_method", "dataset_id", "standardisation", "batch_sampling",
    ]
    static let operators = ["<=", ">=", "!=", "<", ">", "="]
    static let otherFields = ["name", "tag.KEY", "created"]

    public var comparisons: [Comparison]

    public init(parsing text: String, now: Date = Date()) throws(CofferRegistryError) {
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
            let written = String(clause[..<start]).trimmingWhitespace()
            let field = written.lowercased()
            let raw = String(clause[end...]).trimmingWhitespace()
            func quoted() throws(CofferRegistryError) -> String {
                guard op == "=" || op == "!=", let text = Self.unquoted(raw) else { throw Self.error("\(field) takes = or != and a 'quoted' value") }
                return text
            }
            if PrivacyMetadata.numericColumns.contains(field) {
                guard let number = Double(raw), number.isFinite else { throw Self.error("\(field) needs a number, got '\(raw)'") }
                comparisons.append(Comparison(subject: .column(field), op: op, value: .number(number)))
            } else if Self.textColumns.contains(field) {
                comparisons.append(Comparison(subject: .column(field), op: op, value: .text(try quoted())))
            } else if field == "name" {
                let name = try quoted()
                let prefix = name.hasSuffix("*")
                comparisons.append(
                    Comparison(subject: prefix ? .modelNamePrefix : .modelName, op: op, value: .text(prefix ? String(name.dropLast()) : name))
                )
            } else if field.hasPrefix("tag."), written.count > 4 {
                // Tag keys keep their case: `tag.Stage` and `tag.stage` are different tags.
                comparisons.append(Comparison(subject: .tag(key: String(written.dropFirst(4))), op: op, value: .text(try quoted())))
            } else if field == "created" {
                comparisons.append(Comparison(subject: .column("created_at"), op: op, value: .text(try Self.timestamp(raw, now: now))))
            } else {
                let known = (PrivacyMetadata.numericColumns.union(Self.textColumns)).sorted() + Self.otherFields
                throw Self.error("unknown field '\(written)' (fields: \(known.joined(separator: ", ")))")
            }
        }
        self.comparisons = comparisons
    }

    /// The SQL condition for each comparison over `versions v JOIN models m`, the same text for SQLite and PostgreSQL;
    /// `bind` appends a value to the statement's arguments and returns its placeholder.
    public func conditions(bind: (Comparison.Value) -> String) -> [String] {
        comparisons.map { comparison in
            let op = comparison.op == "!=" ? "<>" : comparison.op
            switch comparison.subject {
            case .column(let column):
                return "v.\(column) \(op) \(bind(comparison.value))"
            case .modelName:
                return "m.name \(op) \(bind(comparison.value))"
            case .modelNamePrefix:
                // substr, not LIKE: SQLite's LIKE ignores ASCII case and both engines would need `%` and `_` escaped.
                return "substr(m.name, 1, length(\(bind(comparison.value)))) \(op) \(bind(comparison.value))"
            case .tag(let key):
                let exists =
                    "EXISTS (SELECT 1 FROM tags t WHERE t.version_id = v.id AND t.key = \(bind(.text(key))) AND t.value = \(bind(comparison.value)))"
                switch comparison.op {
                case "=": return exists
                case "!=": return "NOT \(exists)"
                default:
                    return
                        "EXISTS (SELECT 1 FROM tags t WHERE t.version_id = v.id AND t.key = \(bind(.text(key))) AND t.value \(op) \(bind(comparison.value)))"
                }
            }
        }
    }

    /// A quoted time or date, or an unquoted age, as the text `created_at` holds (UTC, milliseconds), so that the
    /// comparison of the text orders as the times do.
    static func timestamp(_ raw: String, now: Date) throws(CofferRegistryError) -> String {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let unit = raw.last.flatMap({ units[$0] }), let value = Double(raw.dropLast()), value > 0, value.isFinite {
            return Registry.timestamp(now.addingTimeInterval(-value * unit))
        }
        guard let text = unquoted(raw) else {
            throw error("created takes a 'quoted' RFC 3339 time or date, or an age such as 7d, 12h, 90m; got '\(raw.prefix(64))'")
        }
        let day = /\d{4}-\d{2}-\d{2}/
        if let date = (try? day.wholeMatch(in: text)) != nil ? Registry.date("\(text)T00:00:00Z") : Registry.date(text) {
            return Registry.timestamp(date)
        }
        throw error("created: '\(text.prefix(64))' is not an RFC 3339 time or a date such as 2026-11-01")
    }

    private static func unquoted(_ raw: String) -> String? {
        raw.count >= 2 && raw.hasPrefix("'") && raw.hasSuffix("'") ? String(raw.dropFirst().dropLast()) : nil
    }

    private static func error(_ why: String) -> CofferRegistryError { .invalidFilter(why) }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
