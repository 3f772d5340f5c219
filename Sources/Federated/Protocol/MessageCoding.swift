import Foundation

/// The JSON form of every message: keys sorted, `/` not escaped.
public enum MessageCoding {
    public static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let large = LargeStrings()
        encoder.userInfo[LargeStrings.key] = large
        // Every message type is a struct of strings, numbers, arrays and base64 bytes: encoding cannot fail.
        return large.splice(into: Array(try! encoder.encode(value)))
    }

    /// Decodes a message as JSONDecoder would, for any input, and for types whose decoding reads each value once
    /// (synthesized `Codable`, as every message type here): a placeholder a decoder read and threw away (a `try?`
    /// reading a value as bytes and then as a string) would count as taken.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], what: String) throws(FederatedError) -> T {
        // Large base64 fields bypass Foundation's string parsing; anything else (a cut-out string that was not bytes, an
        // error to report) is decoded again from the bytes as they came, so the result is the same either way.
        let (json, large) = LargeStrings.extracting(from: bytes)
        if !large.values.isEmpty {
            let decoder = JSONDecoder()
            decoder.userInfo[LargeStrings.key] = large
            if let value = try? decoder.decode(T.self, from: Data(json)), large.allTaken { return value }
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let DecodingError.keyNotFound(key, _) {
            throw .malformedMessage("\(what): field '\(key.stringValue)' is missing")
        } catch let DecodingError.typeMismatch(_, context) {
            throw .malformedMessage("\(what): field '\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type")
        } catch let DecodingError.dataCorrupted(context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw .malformedMessage("\(what): \(field.isEmpty ? "not JSON" : "field '\(field)' is invalid")")
        } catch let DecodingError.valueNotFound(_, context) {
            throw .malformedMessage("\(what): field '\(context.codingPath.map(\.stringValue).joined(separator: "."))' is null")
        } catch {
            throw .malformedMessage("\(what): not a valid message")
        }
    }
}

/// Bytes carried in JSON as standard base64 with padding.
public struct Base64Bytes: Codable, Sendable, Equatable {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        if let large = decoder.userInfo[LargeStrings.key] as? LargeStrings, let bytes = large.value(named: text) {
            self.bytes = bytes
            return
        }
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        bytes = Array(data)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if bytes.count >= LargeStrings.threshold, let large = encoder.userInfo[LargeStrings.key] as? LargeStrings {
            return try container.encode(large.placeholder(for: bytes))
        }
        try container.encode(Data(bytes).base64EncodedString())
    }
}

/// A message's large byte fields (a model, a masked vector) kept out of Foundation's JSON string handling, which
/// checks every character for escaping and builds a `String`: that took 7% of a 10-site simulated federation's CPU to
/// write, and reading a masked vector (1.08 MB of base64) took 3.3 ms, against 0.8 ms to decode its base64 alone. Each
/// field is a placeholder in the JSON that Foundation sees, naming it with a random nonce no other string of the
/// message can hold: written, its base64 replaces the placeholder between the same quotes; read, the base64 is cut out
/// and decoded before the JSON is parsed.
final class LargeStrings: @unchecked Sendable {
    static let key = CodingUserInfoKey(rawValue: "coffer.largeStrings")!
    static let threshold = 4096
    private let nonce = (0..<16).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
    private(set) var values: [[UInt8]] = []

    func placeholder(for bytes: [UInt8]) -> String {
        values.append(bytes)
        return "cofferlarge-\(nonce)-\(values.count - 1)"
    }

    /// Which extracted values a decoder took (``value(named:)``).
    private var taken: [Bool] = []
    /// Whether a decoder took every extracted value: if not, a string that was not bytes (a free-text field) was cut
    /// out, and the JSON is decoded again as it came.
    var allTaken: Bool { taken.count == values.count && !taken.contains(false) }

    /// The bytes of the field a placeholder names, or nil for any other string.
    func value(named text: String) -> [UInt8]? {
        let prefix = "cofferlarge-\(nonce)-"
        guard text.hasPrefix(prefix), let index = Int(text.dropFirst(prefix.count)), values.indices.contains(index) else { return nil }
        if taken.count < values.count { taken += [Bool](repeating: false, count: values.count - taken.count) }
        taken[index] = true
        return values[index]
    }

    /// `json` with every string value of at least ``threshold`` characters that decodes as base64 (as
    /// `Data(base64Encoded:)` decodes it, which refuses any other character) replaced by a placeholder, and its bytes kept
    /// here. Strings are found as a JSON parser finds them (outside a string, `"` opens one; inside, `\` escapes the next
    /// byte and `"` closes it), so the JSON parses, or fails to, as before; object keys are left alone.
    static func extracting(from json: [UInt8]) -> (json: [UInt8], large: LargeStrings) {
        let large = LargeStrings()
        var out: [UInt8] = []
        var copied = 0
        json.withUnsafeBufferPointer { json in
            guard let base = json.baseAddress else { return }
            let n = json.count
            var i = 0
            while i < n {
                // The next quote opens a string; memchr finds it, and the string's end, at memory speed.
                guard let open = memchr(base + i, Int32(quote), n - i) else { return }
                let start = base.distance(to: open.assumingMemoryBound(to: UInt8.self)) + 1
                guard let close = memchr(base + start, Int32(quote), n - start) else { return }  // unterminated
                var end = base.distance(to: close.assumingMemoryBound(to: UInt8.self))
                let escaped = memchr(base + start, Int32(backslash), end - start) != nil
                if escaped {
                    // An escape may hide a quote: walk this string byte by byte. Base64 has no escapes.
                    end = start
                    while end < n, json[end] != quote { end += json[end] == backslash ? 2 : 1 }
                    guard end < n else { return }
                } else if end - start >= threshold, !isKey(closingAt: end, in: json),
                    let bytes = Data(base64Encoded: Data(UnsafeBufferPointer(rebasing: json[start..<end])))
                {
                    if out.isEmpty { out.reserveCapacity(n) }
                    out += UnsafeBufferPointer(rebasing: json[copied..<start])
                    out += large.placeholder(for: Array(bytes)).utf8
                    copied = end
                }
                i = end + 1
            }
        }
        guard copied > 0 else { return (json, large) }
        out += json[copied...]
        return (out, large)
    }

    private static let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")

    /// Whether the string whose closing quote is at `end` is an object's key (a `:` follows, after whitespace).
    private static func isKey(closingAt end: Int, in json: UnsafeBufferPointer<UInt8>) -> Bool {
        var j = end + 1
        while j < json.count, [0x20, 0x09, 0x0A, 0x0D].contains(json[j]) { j += 1 }
        return j < json.count && json[j] == UInt8(ascii: ":")
    }

    /// `json` with each placeholder replaced by its field's base64.
    func splice(into json: [UInt8]) -> [UInt8] {
        guard !values.isEmpty else { return json }
        var out: [UInt8] = []
        out.reserveCapacity(json.count + values.reduce(0) { $0 + ($1.count + 2) / 3 * 4 })
        var rest = json[...]
        for (i, value) in values.enumerated() {
            let marker = Array("\"cofferlarge-\(nonce)-\(i)\"".utf8)
            guard let range = rest.firstRange(of: marker) else { preconditionFailure("a large field's placeholder is missing") }
            out += rest[..<range.lowerBound]
            out.append(UInt8(ascii: "\""))
            out += Data(value).base64EncodedData()
            out.append(UInt8(ascii: "\""))
            rest = rest[range.upperBound...]
        }
        out += rest
        return out
    }
}
