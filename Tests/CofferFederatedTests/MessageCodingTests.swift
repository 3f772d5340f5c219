import Foundation
import Testing

@testable import CofferFederated

/// Large byte fields are written into a message's JSON after encoding and cut out of it before decoding
/// (``LargeStrings``): the bytes must be exactly what JSONEncoder writes, so that what is signed and what any JSON reader
/// parses are unchanged, and what is read must be what JSONDecoder reads, for any input.
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
        let encoded = MessageCoding.encode(sample)
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
}

extension MessageCodingTests.Sample {
    /// Every field, for comparing two decodings.
    var fingerprint: String { "\(name) \(small.bytes) \(large.map(\.bytes)) \(nested.vector.bytes)" }
}
