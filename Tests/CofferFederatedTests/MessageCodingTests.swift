import Foundation
import Testing

@testable import CofferFederated

/// Large byte fields are written into a message's JSON after encoding (``LargeStrings``): the bytes must be exactly
/// what JSONEncoder writes, so that what is signed and what any JSON reader parses are unchanged.
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
}
