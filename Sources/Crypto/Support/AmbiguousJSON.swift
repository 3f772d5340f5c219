/// Finds what would let two JSON parsers read one signed document differently, which Coffer refuses.
///
/// - **A member name given twice in one object.** Foundation's `JSONDecoder` keeps the first value,
///   `JSONSerialization` and Python's `json` the last. A signed statement with `"epsilon": 1, ..., "epsilon": 100` would
///   then claim one thing to Coffer and another to a verifier in Python, under one valid signature. Names are compared
///   after unescaping and as Swift strings, that is up to Unicode canonical equivalence, as `JSONDecoder` matches them
///   to keys (`"é"` and `"e\u0301"` are one name to it, two to Python).
/// - **UTF-16 or UTF-32.** Both parsers accept them (with or without a byte-order mark) and the scan below reads bytes
///   as UTF-8, where a UTF-16 unit such as `22 01` (U+0122) would look like a quote. Every such document holds a zero
///   byte (its ASCII characters are padded with them) and UTF-8 JSON never does (a NUL inside a string is escaped).
///
/// - **A member name that is not a valid JSON string** (a lone surrogate escape, bytes that are not UTF-8): parsers
///   repair or refuse it differently. Names are read with ``JSONValue/init(parsing:)``'s strict string reader.
///
/// A scan, not a parser: apart from member names it assumes the bytes are JSON that the decoder will then check, and
/// never fails on bytes that are not.
public enum AmbiguousJSON {
    /// Why `json` must be refused, in one line, or nil.
    public static func reason(in json: [UInt8]) -> String? {
        json.withUnsafeBytes { reason(in: $0) }
    }

    /// The same for bytes the caller holds (a `Data`'s, without a copy).
    public static func reason(in json: UnsafeRawBufferPointer) -> String? {
        let bytes = json.bindMemory(to: UInt8.self)
        if bytes.contains(0) {
            return "JSON that is not UTF-8 (UTF-16 and UTF-32 are refused)"
        }
        do {
            return try firstRepeatedName(in: bytes).map(repeated)
        } catch {
            return "a member name that is not a valid JSON string (readers would disagree on it): \(error)"
        }
    }

    /// The refusal of a document whose objects give `name` twice.
    static func repeated(_ name: String) -> String {
        "the member \(String(reflecting: name)) appears twice in one JSON object (readers would disagree on its value)"
    }

    /// The first member name repeated within one object of `json`, or nil; a member name that is not a valid JSON
    /// string (whose reading parsers might disagree on) is refused.
    static func firstRepeatedName(in json: [UInt8]) throws(JSONSyntaxError) -> String? {
        try json.withUnsafeBufferPointer { bytes throws(JSONSyntaxError) in try firstRepeatedName(in: bytes) }
    }

    private static func firstRepeatedName(in bytes: UnsafeBufferPointer<UInt8>) throws(JSONSyntaxError) -> String? {
        // One entry per open container: the names seen so far in an object, nil for an array.
        var open: [Set<String>?] = []
        var expectingName = false
        var i = 0
        while i < bytes.count {
            switch bytes[i] {
            case UInt8(ascii: "{"):
                open.append([])
                expectingName = true
            case UInt8(ascii: "["):
                open.append(nil)
                expectingName = false
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = open.popLast()
                expectingName = false
            case UInt8(ascii: ","):
                expectingName = open.last.map { $0 != nil } ?? false
            case UInt8(ascii: ":"):
                expectingName = false
            case UInt8(ascii: "\""):
                guard expectingName, !open.isEmpty else {
                    i = endOfString(bytes, from: i + 1)
                    break
                }
                var parser = JSONParser(bytes: bytes)
                parser.index = i
                let name = try parser.string()
                if open[open.count - 1]?.insert(name).inserted == false { return name }
                expectingName = false
                i = parser.index - 1
            default:
                break
            }
            i += 1
        }
        return nil
    }

    /// The index of the closing quote of the string whose first byte after the opening quote is at `start`.
    private static func endOfString(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var i = start
        while i < bytes.count, bytes[i] != UInt8(ascii: "\"") { i += bytes[i] == UInt8(ascii: "\\") ? 2 : 1 }
        return i
    }
}
