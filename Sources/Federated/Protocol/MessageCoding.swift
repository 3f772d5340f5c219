import CofferCrypto
import Foundation

/// The two forms of a message body (docs/FORMAT.md, "Binary bodies"): one JSON object, or a JSON head followed by the
/// raw bytes of its large byte fields. Either form decodes to the same value; a reader goes by the body's first bytes.
public enum MessageCoding {
    public enum Form: Sendable, Equatable {
        case json
        /// `"CFLM" || u8(1) || 00 00 00 || u32le(h) || head || data`.
        case binary
    }

    static let binaryMagic = Array("CFLM".utf8)
    static let binaryHeaderCount = 12
    public static let binaryMediaType = "application/vnd.coffer.fl.v1+binary"

    /// The form of a body, by its first bytes.
    public static func form(of body: [UInt8]) -> Form { body.starts(with: binaryMagic) ? .binary : .json }

    /// The `Content-Type` a body is sent with.
    public static func mediaType(of body: [UInt8]) -> String { form(of: body) == .binary ? binaryMediaType : "application/json" }

    /// Encodes a message, keys sorted and `/` not escaped; in the binary form, each byte field of at least
    /// ``LargeStrings/threshold`` bytes is a reference to the data section, in the order the head names them.
    public static func encode(_ value: some Encodable, as form: Form) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let large = LargeStrings()
        encoder.userInfo[LargeStrings.key] = large
        // Every message type is a struct of strings, numbers, arrays and bytes: encoding cannot fail.
        let json = Array(try! encoder.encode(value))
        switch form {
        case .json:
            return large.splice(into: json) { bytes in Array("\"\(Data(bytes).base64EncodedString())\"".utf8) }
        case .binary:
            // The fields go straight into the body after the head, not through a data section of their own: a copy of
            // each masked vector and model less.
            var dataCount = 0
            var data: [[UInt8]] = []
            let head = large.splice(into: json) { bytes in
                defer {
                    dataCount += bytes.count
                    data.append(bytes)
                }
                return Array("{\"length\":\(bytes.count),\"offset\":\(dataCount)}".utf8)
            }
            var body: [UInt8] = []
            body.reserveCapacity(binaryHeaderCount + head.count + dataCount)
            body += binaryMagic + [1, 0, 0, 0]
            withUnsafeBytes(of: UInt32(head.count).littleEndian) { body += $0 }
            body += head
            for bytes in data { body += bytes }
            return body
        }
    }

    /// Decodes a message in either form, as JSONDecoder would decode its JSON (or its head), for types whose decoding
    /// reads each value once (synthesized `Codable`, as every message type here): a placeholder or reference a decoder
    /// read and threw away (a `try?` reading a value as bytes and then as a string) would count as taken.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], what: String) throws(FederatedError) -> T {
        if form(of: bytes) == .binary { return try decodeBinary(type, from: bytes, what: what) }
        // Large base64 fields bypass Foundation's string parsing; anything else (a cut-out string that was not bytes, an
        // error to report) is decoded again from the bytes as they came, so the result is the same either way.
        let (json, large) = LargeStrings.extracting(from: bytes)
        if !large.values.isEmpty {
            if let reason = AmbiguousJSON.reason(in: json) { throw .malformedMessage("\(what): \(reason)") }
            let decoder = JSONDecoder()
            decoder.userInfo[LargeStrings.key] = large
            if let value = try? decoder.decode(T.self, from: Data(json)), large.allTaken { return value }
        }
        return try decodeJSON(type, from: Data(bytes), decoder: JSONDecoder(), what: what)
    }

    private static func decodeBinary<T: Decodable>(_ type: T.Type, from bytes: [UInt8], what: String) throws(FederatedError) -> T {
        guard bytes.count >= binaryHeaderCount else { throw .malformedMessage("\(what): a binary body shorter than its 12-byte header") }
        guard bytes[4] == 1 else { throw .malformedMessage("\(what): binary version \(bytes[4]); this reader knows 1") }
        guard bytes[5] == 0, bytes[6] == 0, bytes[7] == 0 else { throw .malformedMessage("\(what): the binary header's reserved bytes are not zero") }
        let headCount = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        guard headCount <= bytes.count - binaryHeaderCount else { throw .malformedMessage("\(what): the head runs past the end of the body") }
        let dataStart = binaryHeaderCount + headCount
        let section = DataSection(bytes[dataStart...])
        let decoder = JSONDecoder()
        decoder.userInfo[DataSection.key] = section
        let value = try decodeJSON(type, from: Data(bytes[binaryHeaderCount..<dataStart]), decoder: decoder, what: what)
        guard section.isTiled else {
            throw .malformedMessage("\(what): the references do not tile the data section (a gap, an overlap or bytes left over)")
        }
        return value
    }

    private static func decodeJSON<T: Decodable>(_ type: T.Type, from data: Data, decoder: JSONDecoder, what: String) throws(FederatedError) -> T {
        if let reason = data.withUnsafeBytes({ AmbiguousJSON.reason(in: $0) }) { throw .malformedMessage("\(what): \(reason)") }
        do {
            return try decoder.decode(T.self, from: data)
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
        if let section = decoder.userInfo[DataSection.key] as? DataSection, let reference = try? decoder.container(keyedBy: DataSection.Key.self) {
            bytes = try section.take(reference)
            return
        }
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
    /// Made when first needed: most messages have no large field, and making it for each took 0.8% of a simulated
    /// federation's CPU.
    private lazy var nonce = String(UInt64.random(in: .min ... .max), radix: 16) + "x" + String(UInt64.random(in: .min ... .max), radix: 16)
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

    /// `json` with each placeholder, quotes included, replaced by what `replacement` makes of its field (base64 in
    /// quotes, or a reference to the data section), called in the order the placeholders appear in `json`: sorted keys
    /// put fields in another order than the one they were encoded in (a task's `boxes` before its `model`).
    func splice(into json: [UInt8], _ replacement: ([UInt8]) -> [UInt8]) -> [UInt8] {
        guard !values.isEmpty else { return json }
        let found = values.indices.map { i in
            let marker = Array("\"cofferlarge-\(nonce)-\(i)\"".utf8)
            guard let range = json.firstRange(of: marker) else { preconditionFailure("a large field's placeholder is missing") }
            return (range: range, value: i)
        }
        var out: [UInt8] = []
        out.reserveCapacity(json.count + values.reduce(0) { $0 + ($1.count + 2) / 3 * 4 })
        var copied = 0
        for (range, i) in found.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) {
            out += json[copied..<range.lowerBound]
            out += replacement(values[i])
            copied = range.upperBound
        }
        out += json[copied...]
        return out
    }
}

/// The data section of a binary body while its head is decoded: hands each reference's bytes to ``Base64Bytes`` and
/// keeps the ranges taken, which must tile the section.
final class DataSection: @unchecked Sendable {
    static let key = CodingUserInfoKey(rawValue: "coffer.dataSection")!
    /// Any key, so that a reference with a key besides `offset` and `length` can be refused.
    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
        static let offset = Key(stringValue: "offset"), length = Key(stringValue: "length")
    }

    private let bytes: ArraySlice<UInt8>
    private var taken: [Range<Int>] = []
    /// Bytes handed out so far: refused past the section's size, so that references to the same bytes over and over
    /// cannot make a reader copy more than the body holds (a megabyte body referencing its data 10,000 times would
    /// otherwise be gigabytes before the tiling check).
    private var handedOut = 0

    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

    func take(_ reference: KeyedDecodingContainer<Key>) throws -> [UInt8] {
        guard Set(reference.allKeys.map(\.stringValue)) == ["offset", "length"], reference.allKeys.count == 2 else {
            throw DecodingError.dataCorrupted(.init(codingPath: reference.codingPath, debugDescription: "a reference has other keys"))
        }
        let offset = try reference.decode(Int.self, forKey: .offset)
        let length = try reference.decode(Int.self, forKey: .length)
        guard offset >= 0, length >= 1, offset <= bytes.count - length else {
            throw DecodingError.dataCorrupted(.init(codingPath: reference.codingPath, debugDescription: "a reference outside the data section"))
        }
        guard length <= bytes.count - handedOut else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: reference.codingPath, debugDescription: "references to more bytes than the data holds")
            )
        }
        handedOut += length
        taken.append(offset..<(offset + length))
        return Array(bytes[(bytes.startIndex + offset)..<(bytes.startIndex + offset + length)])
    }

    /// Whether the ranges taken, by offset, cover the section from its start to its end without gaps or overlaps.
    var isTiled: Bool {
        var end = 0
        for range in taken.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            guard range.lowerBound == end else { return false }
            end = range.upperBound
        }
        return end == bytes.count
    }
}
