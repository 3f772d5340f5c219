import CofferTraining
import Foundation

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

/// The stages of one round of secure aggregation, in order, and the end of the federation.
public enum Stage: String, Codable, Sendable, CaseIterable, Comparable {
    /// Task: the global model and the roster; the site trains, then submits its two X25519 public keys, signed.
    case advertise
    /// Task: every site's signed keys; the site submits its shares, each encrypted to its recipient.
    case share
    /// Task: the shares addressed to the site; the site submits its masked input.
    case masked
    /// Task: the sites whose masked inputs arrived; the site signs that list.
    case consistency
    /// Task: the signed list; the site submits, sealed to the coordinator, the shares needed to unmask.
    case unmask
    /// Task: the federation is over (final model and report); nothing is submitted.
    case finished

    var order: Int { Stage.allCases.firstIndex(of: self)! }
    public static func < (a: Stage, b: Stage) -> Bool { a.order < b.order }
}

/// One site of a round: its index (its Shamir point, 1-based, in key-ID order) and its public identity file.
public struct RosterEntry: Codable, Sendable, Equatable {
    public var index: Int
    public var site: String
    /// The site's `NAME.pub` bytes (docs/FORMAT.md, "Identity files"), so that the key ID can be checked.
    public var identity: Base64Bytes
}

/// What a round computes, and how its vectors are encoded and protected.
public struct RoundParameters: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Round 0: per-feature counts, sums and sums of squares, for standardisation (exact fixed point).
        case statistics
        /// Rounds 1...: weighted model updates (quantized with stochastic rounding).
        case update
    }

    public var kind: Kind
    /// t: shares needed to reconstruct any secret of the round.
    public var threshold: Int
    /// k: neighbours per site (`roster size - 1` is the complete graph).
    public var neighbours: Int
    /// c: update coordinates are clipped to [-c, c] before quantization.
    public var clipRange: Double
    /// b: quantization bits.
    public var bits: Int
    /// `fedavg` or `dp-fedavg`.
    public var mechanism: String
    /// S: with `dp-fedavg`, each site clips its whole update to this L2 norm and sends weight 1.
    public var clipNorm: Double?
    /// The coordinator's X25519 public key for this round: unmasking shares are sealed to it.
    public var coordinatorKey: Base64Bytes

    enum CodingKeys: String, CodingKey {
        case kind, threshold, neighbours, bits, mechanism
        case clipRange = "clip_range"
        case clipNorm = "clip_norm"
        case coordinatorKey = "coordinator_key"
    }
}

/// A site's signed per-round public keys, forwarded by the coordinator to every site of the round.
public struct AdvertisedKeys: Codable, Sendable, Equatable {
    public var index: Int
    /// X25519 public key for the channel keys (c_u).
    public var encryptionKey: Base64Bytes
    /// X25519 public key for the pairwise masks (s_u).
    public var maskKey: Base64Bytes
    /// Ed25519 by the site's identity over ``SecAggSite/keysMessage``.
    public var signature: Base64Bytes

    enum CodingKeys: String, CodingKey {
        case index, signature
        case encryptionKey = "encryption_key"
        case maskKey = "mask_key"
    }
}

/// One encrypted box of shares from one site to another.
public struct ShareBox: Codable, Sendable, Equatable {
    public var from: Int
    public var to: Int
    public var box: Base64Bytes
}

/// One site's signature over the list of sites whose masked inputs arrived.
public struct IndexedSignature: Codable, Sendable, Equatable {
    public var index: Int
    public var signature: Base64Bytes
}

/// How the previous round ended, told to the sites with the next task.
public struct RoundOutcome: Codable, Sendable, Equatable {
    public var round: Int
    /// `ok`, `aborted` or `skipped`.
    public var outcome: String
    public var reason: String?
    public var sites: Int
}

/// Feature standardisation shared by every site: means and standard deviations of the federation's training rows.
public struct SharedStandardisation: Codable, Sendable, Equatable {
    public var means: [Double]
    public var standardDeviations: [Double]

    enum CodingKeys: String, CodingKey {
        case means
        case standardDeviations = "standard_deviations"
    }

    public init(means: [Double], standardDeviations: [Double]) {
        self.means = means
        self.standardDeviations = standardDeviations
    }
}

// MARK: - Site to coordinator

/// `POST /v1/fl/join`: a site asks to take part, naming the recipe and features it trains with.
public struct JoinRequest: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.join"
    public var site: String
    /// SHA-256 (hex) of the recipe's canonical JSON without `data` (``FederatedRecipe/digest``).
    public var recipeDigest: String
    public var features: [String]
    public var tasks: [String]

    enum CodingKeys: String, CodingKey {
        case type, site, features, tasks
        case recipeDigest = "recipe_digest"
    }
}

/// `POST /v1/fl/poll`: a site waits for its next task, the first with a sequence number above `after`.
public struct PollRequest: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.poll"
    public var session: String
    public var site: String
    public var after: Int
}

/// `POST /v1/fl/submit`: a site's answer to the task of one stage.
public struct Submission: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.submit"
    public var session: String
    public var site: String
    public var round: Int
    public var stage: Stage
    // advertise
    public var encryptionKey: Base64Bytes?
    public var maskKey: Base64Bytes?
    public var keySignature: Base64Bytes?
    // share
    public var boxes: [ShareBox]?
    /// BLAKE2b-256(key: b_u, ``SecAggSite/commitmentLabel`` ...): lets the coordinator check a reconstructed seed.
    public var seedCommitment: Base64Bytes?
    // masked
    /// u64 little-endian elements of Z_{2^64}: the masked, encoded vector.
    public var vector: Base64Bytes?
    // consistency
    public var signature: Base64Bytes?
    // unmask
    /// The shares the coordinator asked for, sealed to the round's coordinator key (``ShareCipher``).
    public var sealedShares: Base64Bytes?

    public init(session: String, site: String, round: Int, stage: Stage) {
        self.session = session
        self.site = site
        self.round = round
        self.stage = stage
    }

    enum CodingKeys: String, CodingKey {
        case type, session, site, round, stage, boxes, vector, signature
        case encryptionKey = "encryption_key"
        case maskKey = "mask_key"
        case keySignature = "key_signature"
        case seedCommitment = "seed_commitment"
        case sealedShares = "sealed_shares"
    }
}

// MARK: - Coordinator to site

/// The answer to a join: the session the site is now part of.
public struct Welcome: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.welcome"
    public var session: String
    public var site: String
    public var recipeDigest: String
    public var rounds: Int
    public var mechanism: String

    enum CodingKeys: String, CodingKey {
        case type, session, site, rounds, mechanism
        case recipeDigest = "recipe_digest"
    }
}

/// The coordinator's acknowledgement of a submission.
public struct Acknowledgement: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.ack"
    public var session: String
    public var site: String
    public var round: Int
    public var stage: Stage
}

/// What a site is to do next.
public struct SiteTask: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.task"
    public var session: String
    public var site: String
    /// Increases with every task the coordinator issues.
    public var seq: Int
    public var round: Int
    public var stage: Stage
    public var previous: RoundOutcome?
    // advertise
    public var roster: [RosterEntry]?
    public var parameters: RoundParameters?
    /// f32 little-endian parameters of the global model (update rounds and `finished`).
    public var model: Base64Bytes?
    public var standardisation: SharedStandardisation?
    // share
    public var keys: [AdvertisedKeys]?
    // masked
    /// U2: the sites whose shares were forwarded.
    public var survivors: [Int]?
    public var boxes: [ShareBox]?
    // consistency and unmask
    /// U3: the sites whose masked inputs arrived.
    public var masked: [Int]?
    public var signatures: [IndexedSignature]?
    // finished
    public var summary: String?

    public init(session: String, site: String, seq: Int, round: Int, stage: Stage) {
        self.session = session
        self.site = site
        self.seq = seq
        self.round = round
        self.stage = stage
    }

    enum CodingKeys: String, CodingKey {
        case type, session, site, seq, round, stage, previous, roster, parameters, model, standardisation, keys, survivors, boxes, masked
        case signatures, summary
    }
}

// MARK: - Encoding

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

extension [Float] {
    /// f32 little-endian bytes.
    var littleEndianBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: count * 4)
        out.withUnsafeMutableBytes { raw in
            for (i, value) in enumerated() { raw.storeBytes(of: value.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
        }
        return out
    }

    init?(littleEndianBytes bytes: [UInt8]) {
        guard bytes.count % 4 == 0 else { return nil }
        self = bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
        guard allSatisfy(\.isFinite) else { return nil }
    }
}

extension [UInt64] {
    /// u64 little-endian bytes.
    var littleEndianBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: count * 8)
        out.withUnsafeMutableBytes { raw in
            for (i, value) in enumerated() { raw.storeBytes(of: value.littleEndian, toByteOffset: i * 8, as: UInt64.self) }
        }
        return out
    }

    init?(littleEndianBytes bytes: [UInt8]) {
        guard bytes.count % 8 == 0 else { return nil }
        self = bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 8)).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) }
        }
    }
}
