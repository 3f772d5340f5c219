public import CofferCrypto
import Foundation

/// What was measured beside a version's proven epsilon (docs/FORMAT.md, "Evidence"): the privacy audit's lower bound,
/// the membership attacks, utility and robustness, as `coffer train` writes them into `privacy.json`. Signed as the
/// predicate's `privacy.evidence`, the object as given; the registry reads three flat fields out of it to filter on
/// and to judge policies by.
public struct Evidence: Sendable, Equatable, Codable {
    /// The object as signed.
    public let json: JSONValue
    /// `audit.epsilon_lower_bound`: the audit's 95% lower bound on epsilon.
    public let auditEpsilon: Double?
    /// `membership.max_auc`: the strongest membership attack's AUC over every task.
    public let membershipAUC: Double?
    /// `membership.max_tpr_at_1pct_fpr`.
    public let membershipTPR: Double?

    static let version = 1.0
    /// Far beyond what a model with hundreds of task heads reports; small enough for every row and statement.
    static let maximumBytes = 256 << 10

    /// Checks `value` as docs/FORMAT.md says; `source` names where it came from in errors.
    init(_ value: JSONValue, source: String) throws(CofferRegistryError) {
        guard case .object(let fields) = value else { throw .invalidPrivacy("\(source): evidence must be a JSON object") }
        guard fields["version"] == .number(Self.version) else {
            throw .invalidPrivacy("\(source): evidence version \(Self.describe(fields["version"])) is not one this Coffer reads (1)")
        }
        guard value.canonicalBytes.count <= Self.maximumBytes else {
            throw .invalidPrivacy("\(source): evidence is larger than \(Self.maximumBytes >> 10) KiB")
        }
        func number(_ part: String, _ key: String, upTo limit: Double) throws(CofferRegistryError) -> Double? {
            guard let section = fields[part], section != .null else { return nil }
            guard case .object(let members) = section else { throw .invalidPrivacy("\(source): evidence.\(part) must be an object or null") }
            guard let field = members[key], field != .null else { return nil }
            guard case .number(let n) = field, n >= 0, n <= limit, n.isFinite else {
                let range = limit.isInfinite ? "a number >= 0" : "a number in [0, \(Int(limit))]"
                throw .invalidPrivacy("\(source): evidence.\(part).\(key) must be \(range) or null, got \(Self.describe(field))")
            }
            return n
        }
        auditEpsilon = try number("audit", "epsilon_lower_bound", upTo: .infinity)
        membershipAUC = try number("membership", "max_auc", upTo: 1)
        membershipTPR = try number("membership", "max_tpr_at_1pct_fpr", upTo: 1)
        json = value
    }

    /// Reads the canonical text the registry keeps in `versions.evidence`; text that is not evidence is `nil` (and
    /// then disagrees with the signed statement).
    init?(storedText text: String) {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), let evidence = try? Evidence(value, source: "") else {
            return nil
        }
        self = evidence
    }

    /// The object as canonical JSON: what `versions.evidence` holds.
    var canonicalText: String { String(decoding: json.canonicalBytes, as: UTF8.self) }

    public init(from decoder: any Decoder) throws {
        try self.init(try JSONValue(from: decoder), source: "evidence")
    }

    public func encode(to encoder: any Encoder) throws { try json.encode(to: encoder) }

    private static func describe(_ value: JSONValue?) -> String {
        guard let value else { return "(missing)" }
        return String(decoding: value.canonicalBytes.prefix(60), as: UTF8.self)
    }
}
