import Foundation

/// An in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md).
public struct InTotoStatement: Sendable, Equatable, Codable {
    public static let type = "https://in-toto.io/Statement/v1"

    /// An artifact the statement is about, named and identified by its digests.
    public struct Subject: Sendable, Equatable, Codable {
        public var name: String
        /// Algorithm name to lower-case hex digest, e.g. `["sha256": "..."]`.
        public var digest: [String: String]

        public init(name: String, digest: [String: String]) {
            self.name = name
            self.digest = digest
        }
    }

    public var type: String
    public var subject: [Subject]
    public var predicateType: String
    public var predicate: JSONValue

    enum CodingKeys: String, CodingKey {
        case type = "_type"
        case subject, predicateType, predicate
    }

    public init(subject: [Subject], predicateType: String, predicate: JSONValue) {
        self.type = Self.type
        self.subject = subject
        self.predicateType = predicateType
        self.predicate = predicate
    }

    /// The statement as JSON (keys sorted), ready to be a DSSE payload.
    public var jsonBytes: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(self))
    }

    /// Parses and checks a statement: `_type`, at least one subject, each with a digest.
    public init(jsonBytes: [UInt8]) throws(CofferCryptoError) {
        // Parsed straight from the bytes, not through Codable (see ``JSONValue/init(parsing:)``), which also refuses what
        // ``AmbiguousJSON`` refuses.
        let notAStatement = CofferCryptoError.malformedStatement("not an in-toto statement (expected _type, subject, predicateType, predicate)")
        let tree: JSONValue
        do { tree = try JSONValue(parsing: jsonBytes) } catch { throw error.repeatedName == nil ? notAStatement : .malformedStatement(error.reason) }
        guard case .object(let fields) = tree, let type = fields["_type"]?.stringValue,
            let listed = fields["subject"]?.arrayValue, let predicateType = fields["predicateType"]?.stringValue,
            let predicate = fields["predicate"]
        else { throw notAStatement }
        var subjects: [Subject] = []
        for item in listed {
            guard let name = item["name"]?.stringValue, case .object(let digests)? = item["digest"] else { throw notAStatement }
            var digest: [String: String] = [:]
            for (algorithm, value) in digests {
                guard let hex = value.stringValue else { throw notAStatement }
                digest[algorithm] = hex
            }
            subjects.append(Subject(name: name, digest: digest))
        }
        self.type = type
        self.subject = subjects
        self.predicateType = predicateType
        self.predicate = predicate
        guard type == Self.type else { throw .malformedStatement("_type is '\(type)', expected \(Self.type)") }
        guard !subject.isEmpty else { throw .malformedStatement("no subjects") }
        for item in subject where item.digest.isEmpty { throw .malformedStatement("subject '\(item.name)' has no digest") }
    }
}
