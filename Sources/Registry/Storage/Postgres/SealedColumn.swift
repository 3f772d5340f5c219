/// A column whose values a PostgreSQL store keeps sealed under the current epoch key (docs/FORMAT.md, "Metadata
/// stores", erasure): what a rotation re-seals and what the sealing's associated data names.
///
/// The row key binds a sealed value to its row: the values of `keyColumns` as PostgreSQL prints them (`::text`;
/// integers in decimal), joined by `"\n"`. Key values never contain a newline (ids, key IDs, hex).
struct SealedColumn: Sendable, Hashable, CustomStringConvertible {
    let table: String
    let column: String
    /// The table's primary-key columns, in order.
    let keyColumns: [String]

    init(table: String, column: String, keyColumns: [String]) {
        self.table = table
        self.column = column
        self.keyColumns = keyColumns
    }

    /// A version's data key wrapped for one recipient.
    static let wrappedKeyStanza = SealedColumn(table: "wrapped_keys", column: "stanza", keyColumns: ["version_id", "recipient_key_id"])
    /// A session's copy of its version's data key (NULL once revoked, expired or used up).
    static let sessionWrappedKey = SealedColumn(table: "sessions", column: "wrapped_key", keyColumns: ["id"])
    /// Every sealed column of the schema: what a rotation re-seals.
    static let all: [SealedColumn] = [wrappedKeyStanza, sessionWrappedKey]

    var description: String { "\(table).\(column)" }

    /// The row key of a row whose key columns hold `values` (each as PostgreSQL's `::text` prints it).
    func rowKey(_ values: [String]) -> String { values.joined(separator: "\n") }

    /// SQL computing a row's row key from its columns (`concat_ws(E'\n', a::text, b::text)`), for `alias` (the table
    /// itself when `nil`).
    func rowKeyExpression(alias: String? = nil) throws(CofferRegistryError) -> String {
        let prefix = alias.map { "\($0)." } ?? ""
        var parts: [String] = []
        for name in keyColumns { parts.append("\(prefix)\(try PostgresRecords.identifier(name))::text") }
        return "concat_ws(E'\\n', \(parts.joined(separator: ", ")))"
    }
}
