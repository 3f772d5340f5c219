import CofferCrypto
import Foundation

/// A record as stored and served: its envelope, and what its verified payload says.
public struct LedgerRecord: Sendable, Equatable {
    public static let payloadType = "application/vnd.coffer.record.v1+json"
    public static let type = "coffer/record/v1"

    public var registry: String
    public var seq: Int64
    /// Hex SHA-256 of the previous record's payload (64 zeros before the first).
    public var prev: String
    public var at: String
    public var by: String
    public var change: LedgerChange
    /// The DSSE envelope's bytes, as stored.
    public var envelope: [UInt8]
    /// The payload's bytes and their SHA-256 (hex): the record hash.
    public var payload: [UInt8]
    public var hash: String
    /// The key ID of the one signature (checked by ``LedgerState/apply(_:)``, not here).
    public var signerKeyID: String

    static let zeroHash = String(repeating: "0", count: 64)

    init(
        registry: String,
        seq: Int64,
        prev: String,
        at: String,
        by: String,
        change: LedgerChange,
        envelope: [UInt8],
        payload: [UInt8],
        hash: String,
        signerKeyID: String
    ) {
        self.registry = registry
        self.seq = seq
        self.prev = prev
        self.at = at
        self.by = by
        self.change = change
        self.envelope = envelope
        self.payload = payload
        self.hash = hash
        self.signerKeyID = signerKeyID
    }

    /// Builds and signs a record with `signer`.
    static func sign(
        registry: String,
        seq: Int64,
        prev: String,
        at: String,
        by: String,
        change: LedgerChange,
        signer: borrowing Identity
    ) -> LedgerRecord {
        var object = change.fields
        for (key, value) in [
            "type": JSONValue.string(type), "registry": .string(registry), "seq": .number(Double(seq)), "prev": .string(prev), "at": .string(at),
            "kind": .string(change.kind), "by": .string(by),
        ] {
            object[key] = value
        }
        let payload = JSONValue.object(object).canonicalBytes
        let envelope = DSSEEnvelope.sign(payload: payload, payloadType: payloadType, identity: signer)
        return LedgerRecord(
            registry: registry,
            seq: seq,
            prev: prev,
            at: at,
            by: by,
            change: change,
            envelope: envelope.jsonBytes,
            payload: payload,
            hash: hash(payload: payload),
            signerKeyID: signer.publicIdentity.keyID
        )
    }

    /// Parses a stored envelope. The signature is not checked here: only a ``LedgerState`` knows whose keys count.
    public init(envelope bytes: [UInt8]) throws(LedgerError) {
        let (envelope, payload) = try Self.open(bytes)
        var (object, header) = try Self.header(envelope, payload)
        guard envelope.signatures.count == 1 else { throw .malformed("a record carries exactly one signature") }
        for key in ["type", "registry", "seq", "prev", "at", "kind", "by"] { object[key] = nil }
        self.registry = header.registry
        self.seq = header.seq
        self.prev = header.prev
        self.at = header.at
        self.by = header.by
        self.change = try LedgerChange(kind: header.kind, fields: object)
        self.envelope = bytes
        self.payload = payload
        self.hash = Self.hash(payload: payload)
        self.signerKeyID = envelope.signatures[0].keyid
    }

    /// What a walk along the chain needs of a record: its place, its link to the record before, its hash, and the
    /// version a `version` record records.
    public struct Link: Sendable, Equatable {
        public var seq: Int64
        public var prev: String
        public var hash: String
        /// `MODEL:VERSION` (``LedgerChange/VersionFacts/label``) for a `version` record, nil for any other.
        public var version: String?
    }

    /// A stored envelope's ``Link``, its change not decoded: a whole record took about 80 µs here, and a walk of 500
    /// records was two thirds of a `coffer verify` (2026-12-07). Enough to follow links to a known hash: each hash is of
    /// the bytes the link was read from.
    public static func link(envelope bytes: [UInt8]) throws(LedgerError) -> Link {
        let (envelope, payload) = try open(bytes)
        let (object, header) = try header(envelope, payload)
        var version: String? = nil
        if header.kind == "version", let model = object["model"]?.stringValue, let name = object["version"]?.stringValue {
            version = LedgerChange.VersionFacts.label(model: model, version: name)
        }
        return Link(seq: header.seq, prev: header.prev, hash: hash(payload: payload), version: version)
    }

    private struct Header {
        var registry: String
        var seq: Int64
        var prev: String
        var at: String
        var kind: String
        var by: String
    }

    /// The payload's members, and the ones every record has. Parsed with CofferCrypto's own JSON parser, which also
    /// refuses a member name given twice (``AmbiguousJSON``).
    private static func header(_ envelope: DSSEEnvelope, _ payload: [UInt8]) throws(LedgerError) -> ([String: JSONValue], Header) {
        guard envelope.payloadType == Self.payloadType else { throw .malformed("payload type \(envelope.payloadType) is not a record's") }
        let tree: JSONValue
        do { tree = try JSONValue(parsing: payload) } catch {
            throw .malformed(error.repeatedName == nil ? "the payload is not a JSON object" : error.reason)
        }
        guard case .object(let object) = tree else { throw .malformed("the payload is not a JSON object") }
        guard object["type"]?.stringValue == Self.type else { throw .malformed("the payload is not a \(Self.type) record") }
        guard let registry = object["registry"]?.stringValue, let seq = object["seq"]?.integerValue, seq >= 1,
            let prev = object["prev"]?.stringValue, let at = object["at"]?.stringValue, let kind = object["kind"]?.stringValue,
            let by = object["by"]?.stringValue
        else { throw .malformed("the payload lacks registry, seq, prev, at, kind or by") }
        return (object, Header(registry: registry, seq: Int64(seq), prev: prev, at: at, kind: kind, by: by))
    }

    /// The hash of the record in a stored envelope, without reading the record: all that a check that a record
    /// verified before is still there, unchanged, needs. (Parsing the whole record for it was about a sixth of the
    /// server's CPU at 500 metadata requests/s, since every request checks the last verified record.)
    static func hash(envelope bytes: [UInt8]) throws(LedgerError) -> String { hash(payload: try open(bytes).payload) }

    private static func hash(payload: [UInt8]) -> String { Digest.hex(Digest.sha256(payload)) }

    private static func open(_ bytes: [UInt8]) throws(LedgerError) -> (envelope: DSSEEnvelope, payload: [UInt8]) {
        do {
            let envelope = try DSSEEnvelope(jsonBytes: bytes)
            return (envelope, try envelope.payloadBytes())
        } catch {
            throw .malformed("not a record envelope: \(error)")
        }
    }

    /// Whether `signer` made the record's one signature.
    func isSigned(by signer: PublicIdentity) -> Bool {
        guard signer.keyID == signerKeyID, let envelope = try? DSSEEnvelope(jsonBytes: envelope) else { return false }
        return (try? envelope.verify(trusting: [signer])) != nil
    }
}

/// What can be wrong with a ledger: each a one-line sentence naming the record.
public enum LedgerError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case broken(seq: Int64, String)

    public var description: String {
        switch self {
        case .malformed(let why): "malformed ledger record: \(why)"
        case .broken(let seq, let why): "ledger record \(seq): \(why)"
        }
    }
}

// MARK: - JSON as records carry it

extension PublicIdentity {
    /// The `.pub` document as a JSON object, as records carry it.
    var json: JSONValue { (try? JSONDecoder().decode(JSONValue.self, from: Data(jsonBytes))) ?? .null }

    init(json: JSONValue) throws(CofferCryptoError) {
        guard let data = try? JSONEncoder().encode(json) else { throw .malformedIdentity("not a JSON object") }
        try self.init(jsonBytes: Array(data))
    }
}

extension PolicyRules {
    var json: JSONValue { (try? JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(self))) ?? .object([:]) }
}

extension JSONValue {
    /// Sorted keys, no whitespace, slashes unescaped: how Coffer writes the JSON it signs.
    var canonicalBytes: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(self)) ?? Data("null".utf8))
    }
}
