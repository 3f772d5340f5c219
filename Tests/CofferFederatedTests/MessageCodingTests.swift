import CofferTestSupport
import Foundation
import Testing

@testable import CofferFederated

/// Large byte fields are written into a message's JSON after encoding and cut out of it before decoding
/// (``LargeStrings``): the bytes must be exactly what JSONEncoder writes, so that what is signed and what any JSON reader
/// parses are unchanged, and what is read must be what JSONDecoder reads, for any input. A binary body carries them
/// after its head (docs/FORMAT.md, "Binary bodies"), and its references must tile that data exactly.
@Suite(.ownThread)
struct MessageCodingTests {
    struct Sample: Codable {
        var name: String
        var small: Base64Bytes
        var large: [Base64Bytes]
        var nested: Nested
        struct Nested: Codable { var vector: Base64Bytes }
    }

    @Test func largeFieldsAreSplicedIntoTheSameBytesJSONEncoderWrites() throws {
        let bytes = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        // A name that looks like a placeholder, without the nonce, stays a name.
        let sample = Sample(
            name: "cofferlarge-0-0 \"/ slash",
            small: Base64Bytes([1, 2, 3]),
            large: [Base64Bytes(bytes), Base64Bytes(Array(bytes.prefix(LargeStrings.threshold))), Base64Bytes(Array(bytes.suffix(9000)))],
            nested: .init(vector: Base64Bytes(Array(bytes.reversed())))
        )
        let plain = JSONEncoder()
        plain.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let encoded = MessageCoding.encode(sample, as: .json)
        #expect(encoded == Array(try plain.encode(sample)))
        let decoded = try MessageCoding.decode(Sample.self, from: encoded, what: "sample")
        #expect(decoded.large.map(\.bytes) == sample.large.map(\.bytes) && decoded.nested.vector.bytes == Array(bytes.reversed()))
    }

    /// What JSONDecoder alone makes of `json`: the value, or the error's description.
    private func plainDecode(_ json: [UInt8]) -> String {
        do { return String(describing: try JSONDecoder().decode(Sample.self, from: Data(json)).fingerprint) } catch { return "error" }
    }

    private func fastDecode(_ json: [UInt8]) -> String {
        do { return String(describing: try MessageCoding.decode(Sample.self, from: json, what: "sample").fingerprint) } catch { return "error" }
    }

    @Test func decodingCutsOutLargeBase64AndReadsWhatJSONDecoderReads() throws {
        let bytes = (0..<9_000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        let b64 = Data(bytes).base64EncodedString()
        let long = String(repeating: "A", count: 6000)
        func json(name: String, large: String, vector: String = b64, extra: String = "") -> [UInt8] {
            Array(#"{"name":"\#(name)","small":"AQID","large":["\#(large)"],"nested":{"vector":"\#(vector)"}\#(extra)}"#.utf8)
        }
        let cases: [(String, [UInt8])] = [
            ("two large fields", json(name: "n", large: b64)),
            // A free-text field of 6,000 base64 characters is cut out, not taken by a byte field: decoded again as it came.
            ("a long name", json(name: long, large: b64)),
            // Escapes before a large field: the quote inside the name does not end it.
            ("escaped quotes", json(name: #"a\"b\\"#, large: b64)),
            // A key of 6,000 base64 characters is a key.
            ("a long key", json(name: "n", large: b64, extra: ",\"\(long)\":1")),
            // Base64 characters that do not decode (a length not a multiple of 4): the error, as before.
            ("bad base64", json(name: "n", large: b64 + "A")),
            ("bad padding", json(name: "n", large: "=" + b64.dropFirst())),
            ("unterminated", Array(json(name: "n", large: b64).dropLast(3))),
            ("not JSON", Array("[\"\(b64)\"".utf8)),
        ]
        for (label, input) in cases {
            #expect(fastDecode(input) == plainDecode(input), "\(label)")
        }
        #expect(fastDecode(cases[0].1) != "error" && fastDecode(cases[1].1).contains(long) && fastDecode(cases[4].1) == "error")
        // The large fields were cut out and decoded apart: JSONDecoder saw placeholders.
        let (cut, large) = LargeStrings.extracting(from: cases[0].1)
        #expect(large.values == [bytes, bytes] && cut.count < 200)
        // A placeholder without its nonce is an ordinary string: not base64.
        #expect(fastDecode(json(name: "n", large: "cofferlarge-0-0")) == "error")
    }

    @Test func aBinaryBodyCarriesLargeFieldsAfterItsHeadInTheOrderTheHeadNamesThem() throws {
        let bytes = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        let sample = Sample(
            name: "n",
            small: Base64Bytes([1, 2, 3]),
            large: [Base64Bytes(bytes), Base64Bytes(Array(bytes.prefix(LargeStrings.threshold - 1)))],
            nested: .init(vector: Base64Bytes(Array(bytes.suffix(9000))))
        )
        let body = MessageCoding.encode(sample, as: .binary)
        #expect(MessageCoding.form(of: body) == .binary && MessageCoding.mediaType(of: body) == "application/vnd.coffer.fl.v1+binary")
        #expect(Array(body.prefix(8)) == Array("CFLM".utf8) + [1, 0, 0, 0])
        let headCount = Int(body[8]) | Int(body[9]) << 8 | Int(body[10]) << 16 | Int(body[11]) << 24
        let head = String(decoding: body[12..<(12 + headCount)], as: UTF8.self)
        // Keys sorted; a field under the threshold stays base64; the others are references, in the head's order.
        let small = Data(bytes.prefix(LargeStrings.threshold - 1)).base64EncodedString()
        #expect(
            head
                == #"{"large":[{"length":50000,"offset":0},"\#(small)"],"name":"n","nested":{"vector":{"length":9000,"offset":50000}},"small":"AQID"}"#
        )
        #expect(Array(body[(12 + headCount)...]) == bytes + bytes.suffix(9000))
        let decoded = try MessageCoding.decode(Sample.self, from: body, what: "sample")
        #expect(decoded.fingerprint == sample.fingerprint)
        // A JSON body of the same message decodes to the same value.
        #expect(
            try MessageCoding.decode(Sample.self, from: MessageCoding.encode(sample, as: .json), what: "sample").fingerprint == sample.fingerprint
        )
    }

    /// Placeholders are made in the order fields are encoded (declaration order) and met in the order of the sorted keys:
    /// two large fields declared against that order must still be spliced, each in its place.
    struct Unsorted: Codable, Equatable {
        var zeta: Base64Bytes
        var alpha: [Base64Bytes]
    }

    @Test func largeFieldsDeclaredOutOfKeyOrderAreWrittenWhereTheirKeysPutThem() throws {
        let value = Unsorted(zeta: Base64Bytes(Array(repeating: 7, count: 5000)), alpha: [Base64Bytes(Array(repeating: 9, count: 6000))])
        let plain = JSONEncoder()
        plain.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(MessageCoding.encode(value, as: .json) == Array(try plain.encode(value)))
        let body = MessageCoding.encode(value, as: .binary)
        #expect(try MessageCoding.decode(Unsorted.self, from: body, what: "value") == value)
        // `alpha` comes first in the head, so its bytes come first in the data.
        #expect(Array(body.suffix(11_000)) == [UInt8](repeating: 9, count: 6000) + [UInt8](repeating: 7, count: 5000))
    }

    @Test func aBinaryBodyWhoseHeaderOrReferencesAreWrongIsRefusedNamingTheProblem() throws {
        func body(_ head: String, data: [UInt8], version: UInt8 = 1, reserved: UInt8 = 0, headCount: Int? = nil) -> [UInt8] {
            let count = UInt32(headCount ?? head.utf8.count)
            return Array("CFLM".utf8) + [version, reserved, 0, 0] + withUnsafeBytes(of: count.littleEndian, Array.init) + Array(head.utf8) + data
        }
        func head(_ a: String, _ b: String) -> String { #"{"name":"n","small":"AQID","large":[\#(a)],"nested":{"vector":\#(b)}}"# }
        func reason(_ input: [UInt8]) -> String {
            do {
                _ = try MessageCoding.decode(Sample.self, from: input, what: "sample")
                return "accepted"
            } catch { return error.description }
        }
        let data = (0..<10).map { UInt8($0) }
        // References in any order of offset, one of them base64 beside them, are read.
        let good = body(head(#"{"offset":4,"length":6}"#, #"{"length":4,"offset":0}"#), data: data)
        let decoded = try MessageCoding.decode(Sample.self, from: good, what: "sample")
        #expect(decoded.large[0].bytes == [4, 5, 6, 7, 8, 9] && decoded.nested.vector.bytes == [0, 1, 2, 3])
        let tiling = "sample: the references do not tile the data section (a gap, an overlap or bytes left over)"
        let cases: [(String, [UInt8], String)] = [
            ("version 2", body(head(#""AA==""#, #""AA==""#), data: [], version: 2), "sample: binary version 2; this reader knows 1"),
            ("reserved", body(head(#""AA==""#, #""AA==""#), data: [], reserved: 1), "sample: the binary header's reserved bytes are not zero"),
            ("short", Array("CFLM".utf8) + [1, 0], "sample: a binary body shorter than its 12-byte header"),
            ("head past the end", body(head(#""AA==""#, #""AA==""#), data: [], headCount: 500), "sample: the head runs past the end of the body"),
            ("a gap", body(head(#"{"offset":5,"length":5}"#, #"{"offset":0,"length":4}"#), data: data), tiling),
            // References to more bytes than the data holds are refused at the reference that goes past it.
            (
                "an overlap", body(head(#"{"offset":3,"length":7}"#, #"{"offset":0,"length":4}"#), data: data),
                "sample: field 'nested.vector' is invalid"
            ),
            ("an overlap within the size", body(head(#"{"offset":3,"length":5}"#, #"{"offset":0,"length":4}"#), data: data), tiling),
            ("bytes left over", body(head(#"{"offset":4,"length":5}"#, #"{"offset":0,"length":4}"#), data: data), tiling),
            (
                "the same range twice", body(head(#"{"offset":0,"length":10}"#, #"{"offset":0,"length":10}"#), data: data),
                "sample: field 'nested.vector' is invalid"
            ),
            // A reference where no byte field is read leaves its bytes unread.
            (
                "an unknown key's reference",
                body(#"{"name":"n","small":"AQID","large":[],"nested":{"vector":"AA=="},"x":{"offset":0,"length":10}}"#, data: data), tiling
            ),
            (
                "past the end", body(head(#"{"offset":4,"length":7}"#, #"{"offset":0,"length":4}"#), data: data),
                "sample: field 'large.Index 0' is invalid"
            ),
            ("empty", body(head(#"{"offset":0,"length":0}"#, #"{"offset":0,"length":10}"#), data: data), "sample: field 'large.Index 0' is invalid"),
            (
                "negative", body(head(#"{"offset":-1,"length":1}"#, #"{"offset":0,"length":10}"#), data: data),
                "sample: field 'large.Index 0' is invalid"
            ),
            (
                "another key", body(head(#"{"offset":4,"length":6,"x":1}"#, #"{"offset":0,"length":4}"#), data: data),
                "sample: field 'large.Index 0' is invalid"
            ),
            (
                "a reference for a string",
                body(#"{"name":{"offset":0,"length":10},"small":"AQID","large":[],"nested":{"vector":"AA=="}}"#, data: data),
                "sample: field 'name' has the wrong type"
            ),
            ("a head that is not JSON", body("{", data: []), "sample: not JSON"),
            ("an empty head", body("", data: []), "sample: not JSON"),
            ("an empty head before data", body("", data: data), "sample: not JSON"),
            // The same bytes referenced over and over are refused at the first reference past the data's size, before
            // a reader has copied more than the body holds.
            (
                "a thousand references to the same bytes",
                body(
                    #"{"name":"n","small":"AQID","large":[\#(Array(repeating: #"{"offset":0,"length":10}"#, count: 1000).joined(separator: ","))],"nested":{"vector":"AA=="}}"#,
                    data: data
                ),
                "sample: field 'large.Index 1' is invalid"
            ),
            // In a JSON body, a reference is not bytes.
            ("a reference in JSON", Array(head(#""AA==""#, #"{"offset":0,"length":1}"#).utf8), "sample: field 'nested.vector' has the wrong type"),
        ]
        for (label, input, expected) in cases {
            #expect(reason(input) == "malformed message: " + expected, "\(label)")
        }
    }
}

extension MessageCodingTests.Sample {
    /// Every field, for comparing two decodings.
    var fingerprint: String { "\(name) \(small.bytes) \(large.map(\.bytes)) \(nested.vector.bytes)" }
}
