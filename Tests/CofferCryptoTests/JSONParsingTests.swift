import Foundation
import Testing

@testable import CofferCrypto

/// `JSONValue(parsing:)` against Foundation's `JSONDecoder`: the same tree for every text the parser accepts, and
/// never a text accepted that the decoder refuses.
struct JSONParsingTests {
    /// The decoder's reading of `text`, or nil when it refuses it.
    static func decoded(_ text: [UInt8]) -> JSONValue? { try? JSONDecoder().decode(JSONValue.self, from: Data(text)) }

    static func parsed(_ text: [UInt8]) -> JSONValue? { try? JSONValue(parsing: text) }

    /// A random text: nested objects and arrays, strings with escapes of every kind and non-ASCII characters, numbers in
    /// every form the grammar allows, and whitespace of all four kinds between tokens.
    struct Writer {
        var random: SplitMix64

        mutating func pick<T>(_ choices: [T]) -> T { choices[Int.random(in: 0..<choices.count, using: &random)] }

        mutating func space() -> String {
            (0..<Int.random(in: 0...2, using: &random)).map { _ in pick([" ", "\t", "\n", "\r"]) }.joined()
        }

        mutating func string() -> String {
            let pieces = [
                "a", "Z", "0", " ", "é", "e\u{301}", "日本", "🙂", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0041",
                "\\u00e9", "\\u0000", "\\u001f", "\\ud83d\\ude42", "\\uD834\\uDD1E", "\u{7f}", "'", "{", "]", ":",
            ]
            return "\"" + (0..<Int.random(in: 0...6, using: &random)).map { _ in pick(pieces) }.joined() + "\""
        }

        mutating func number() -> String {
            pick([
                "0", "-0", "7", "-42", "3.25", "-0.5", "1e5", "1E5", "1e+5", "1e-5", "2.5E-3", "123456789012345678901234567890",
                "9007199254740993", "0.1", "5e-324", "2.5e-324", "0.0", "-0.00", "1.7976931348623157e308", "-1.5e300", "100", "0.000001",
            ])
        }

        mutating func value(depth: Int) -> String {
            let kind = depth > 4 ? Int.random(in: 0...3, using: &random) : Int.random(in: 0...5, using: &random)
            switch kind {
            case 0: return string()
            case 1: return number()
            case 2: return pick(["true", "false"])
            case 3: return "null"
            case 4:
                let elements = (0..<Int.random(in: 0...4, using: &random)).map { _ in space() + value(depth: depth + 1) + space() }
                return "[" + (elements.isEmpty ? space() : elements.joined(separator: ",")) + "]"
            default:
                var names = Set<String>()
                var members: [String] = []
                for _ in 0..<Int.random(in: 0...4, using: &random) {
                    let name = string()
                    // A repeated name is refused here by design (tested on its own below).
                    guard let decoded = Self.decodedName(name), names.insert(decoded).inserted else { continue }
                    members.append(space() + name + space() + ":" + space() + value(depth: depth + 1) + space())
                }
                return "{" + (members.isEmpty ? space() : members.joined(separator: ",")) + "}"
            }
        }

        static func decodedName(_ quoted: String) -> String? { try? JSONDecoder().decode(String.self, from: Data(quoted.utf8)) }
    }

    @Test func generatedTextsParseAsTheDecoderReadsThem() throws {
        var writer = Writer(random: SplitMix64(seed: 20_261_205))
        var compared = 0
        for _ in 0..<3_000 {
            let text = Array((writer.space() + writer.value(depth: 0) + writer.space()).utf8)
            let ours = try JSONValue(parsing: text)
            let theirs = try #require(Self.decoded(text), "the decoder refused \(String(decoding: text, as: UTF8.self))")
            #expect(ours == theirs, "\(String(decoding: text, as: UTF8.self))")
            compared += 1
        }
        #expect(compared == 3_000)
    }

    @Test func signedStatementsParseAsTheDecoderReadsThem() throws {
        let statement = InTotoStatement(
            subject: [.init(name: "weights.bin", digest: ["sha256": String(repeating: "ab", count: 32)])],
            predicateType: "https://coffer.dev/model/v1",
            predicate: .object([
                "model": .string("m/risk"), "privacy": .object(["epsilon": .number(1.25), "delta": .number(1e-5), "dp": .bool(true)]),
                "files": .array([.object(["size": .number(1_048_576), "path": .string("w/é.bin")])]), "parent": .null,
            ])
        )
        let bytes = statement.jsonBytes
        #expect(try JSONValue(parsing: bytes) == Self.decoded(bytes))
        #expect(try InTotoStatement(jsonBytes: bytes) == statement)
    }

    /// Texts the decoder refuses are refused here too; a few it accepts are refused here as well, by design.
    @Test(arguments: [
        ("", "the text ends where a value should be"), ("   ", "the text ends where a value should be"), ("{", "an object member must start"),
        ("[1,]", "a value cannot start with this byte"), ("{\"a\":1,}", "an object member must start"), ("[1 2]", "expected ',' or ']'"),
        ("01", "text after the JSON value"), ("1.", "a digit after its decimal point"), (".5", "a value cannot start"),
        ("+1", "a value cannot start"), ("-", "a digit after its sign"), ("1e", "a digit in its exponent"), ("NaN", "a value cannot start"),
        ("Infinity", "a value cannot start"), ("tru", "not a JSON literal"), ("nulll", "text after the JSON value"),
        ("'a'", "a value cannot start"), ("\"a", "the text ends inside a string"), ("\"\\x\"", "an unknown escape"),
        ("\"\\u12\"", "\\u escape"), ("\"\\u12G4\"", "four hex digits"), ("\"a\u{1}b\"", "a control character must be escaped"),
        ("\"\t\"", "a control character must be escaped"),
        ("// c\n1", "a value cannot start"), ("{\"a\" 1}", "must be followed by ':'"), ("{1:2}", "an object member must start"),
        ("1e400", "out of range"), ("-1e400", "out of range"), ("1e-400", "out of range"), ("0e5", "out of range"),
        ("\"\\ud800\"", "high surrogate escape without its low"),
        ("\"\\udc00\"", "low surrogate escape without its high"), ("\"\\ud800\\u0041\"", "high surrogate escape without its low"),
        ("{\"a\":1,\"a\":2}", "the member \"a\" appears twice"), ("{\"é\":1,\"e\\u0301\":2}", "appears twice"),
        ("\u{FEFF}{}", "a value cannot start"), ("[1]x", "text after the JSON value"),
    ])
    func malformedTextsAreRefused(text: String, reason: String) {
        #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: Array(text.utf8)) }
        do {
            _ = try JSONValue(parsing: Array(text.utf8))
        } catch {
            #expect(error.reason.contains(reason), "\(text): \(error)")
        }
    }

    @Test func bytesThatAreNotUTF8AreRefused() {
        for bytes: [UInt8] in [[0x22, 0xC3, 0x28, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xFF, 0x22]] {
            #expect(Self.parsed(bytes) == nil, "\(bytes)")
            #expect(Self.decoded(bytes) == nil, "the decoder refuses \(bytes) as well")
        }
        // Outside strings, only ASCII tokens are JSON.
        #expect(Self.parsed([0x5B, 0xC3, 0xA9, 0x5D]) == nil)
    }

    @Test func nestingIsBoundedAt512() throws {
        let deep = Array((String(repeating: "[", count: 512) + String(repeating: "]", count: 512)).utf8)
        #expect(try JSONValue(parsing: deep) == Self.decoded(deep))
        let deeper = Array((String(repeating: "[", count: 513) + String(repeating: "]", count: 513)).utf8)
        #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: deeper) }
        // A hundred thousand open brackets are refused, not a stack overflow.
        #expect(Self.parsed(Array(String(repeating: "[", count: 100_000).utf8)) == nil)
    }

    /// Whatever the parser accepts, the decoder accepts and reads alike: mutations of valid texts (bytes dropped,
    /// doubled, replaced) are the near-misses where two parsers drift apart.
    @Test func mutatedTextsNeverParseWhereTheDecoderDisagrees() throws {
        var writer = Writer(random: SplitMix64(seed: 7))
        var generator = SplitMix64(seed: 11)
        let alphabet = Array("{}[],:\"\\/-+.eE0123456789 \ttrufalsn\u{0}".utf8) + [0xC3, 0xA9, 0x80]
        var accepted = 0
        for _ in 0..<5_000 {
            var text = Array(writer.value(depth: 0).utf8)
            guard !text.isEmpty else { continue }
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let at = Int.random(in: 0..<text.count, using: &generator)
                switch Int.random(in: 0...2, using: &generator) {
                case 0: text.remove(at: at)
                case 1: text.insert(text[at], at: at)
                default: text[at] = alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]
                }
                if text.isEmpty { break }
            }
            guard let ours = Self.parsed(text) else { continue }
            accepted += 1
            #expect(Self.decoded(text) == ours, "\(String(decoding: text, as: UTF8.self))")
        }
        #expect(accepted > 100, "too few mutations parsed to compare: \(accepted)")
    }
}

/// Reproducible randomness for the generated texts (SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
