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
/// A scan, not a parser: it assumes the bytes are JSON that the decoder will then check, and never fails on bytes
/// that are not.
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
        return firstRepeatedName(in: bytes).map {
            "the member \(String(reflecting: $0)) appears twice in one JSON object (readers would disagree on its value)"
        }
    }

    /// The first member name repeated within one object of `json`, or nil.
    static func firstRepeatedName(in json: [UInt8]) -> String? {
        json.withUnsafeBufferPointer { firstRepeatedName(in: $0) }
    }

    private static func firstRepeatedName(in bytes: UnsafeBufferPointer<UInt8>) -> String? {
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
                let (text, end) = string(bytes, from: i + 1)
                if open[open.count - 1]?.insert(text).inserted == false { return text }
                expectingName = false
                i = end
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

    /// The string whose first byte after the opening quote is at `start`, unescaped, and the index of its closing quote.
    private static func string(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (String, Int) {
        var utf8: [UInt8] = []
        var i = start
        while i < bytes.count, bytes[i] != UInt8(ascii: "\"") {
            guard bytes[i] == UInt8(ascii: "\\"), i + 1 < bytes.count else {
                utf8.append(bytes[i])
                i += 1
                continue
            }
            let escaped = bytes[i + 1]
            i += 2
            switch escaped {
            case UInt8(ascii: "b"): utf8.append(0x08)
            case UInt8(ascii: "f"): utf8.append(0x0C)
            case UInt8(ascii: "n"): utf8.append(0x0A)
            case UInt8(ascii: "r"): utf8.append(0x0D)
            case UInt8(ascii: "t"): utf8.append(0x09)
            case UInt8(ascii: "u"):
                guard let unit = hex4(bytes, at: i) else { continue }
                i += 4
                var scalar = UInt32(unit)
                if (0xD800..<0xDC00).contains(unit), i + 6 <= bytes.count, bytes[i] == UInt8(ascii: "\\"),
                    bytes[i + 1] == UInt8(ascii: "u"), let low = hex4(bytes, at: i + 2), (0xDC00..<0xE000).contains(low)
                {
                    scalar = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
                    i += 6
                }
                utf8.append(contentsOf: String(Unicode.Scalar(scalar) ?? "\u{FFFD}").utf8)
            default: utf8.append(escaped)  // \" \\ \/
            }
        }
        return (String(decoding: utf8, as: UTF8.self), i)
    }

    private static func hex4(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> UInt16? {
        guard index + 4 <= bytes.count else { return nil }
        var value: UInt16 = 0
        for byte in bytes[index..<(index + 4)] {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            value = value << 4 | UInt16(digit)
        }
        return value
    }
}
