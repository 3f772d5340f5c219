import CofferCrypto
public import CofferTraining
import Foundation

/// A version's privacy and pruning facts: signed in its statement, copied into typed columns for queries.
///
/// JSON names (also the `--json` output and the statement's predicate): `mechanism`, `epsilon`, `delta`,
/// `accountant`, `noise_multiplier`, `clipping_norm`, `sampling_rate`, `steps`, `epochs`, `dataset_size`,
/// `privacy_unit`, `pruning_method`, `pruning_ratio`, `achieved_sparsity`; and, when known, `segments` (the
/// accountant history, `[{sample_rate, noise_multiplier, steps}]`) and `claimed_epsilon` (the epsilon a history
/// imported with `--privacy-from` claimed; `epsilon` is then Coffer's recomputation), `evidence` (``Evidence``),
/// `standardisation` (`dp`, `public` or `nonprivate`: where the feature statistics came from) and `batch_sampling`
/// (`secret` or `seeded`).
public struct PrivacyMetadata: Sendable, Equatable, Codable {
    public var mechanism: String?
    public var epsilon: Double?
    public var delta: Double?
    public var accountant: String?
    public var noiseMultiplier: Double?
    public var clippingNorm: Double?
    public var samplingRate: Double?
    public var steps: Int?
    public var epochs: Double?
    public var datasetSize: Int?
    public var privacyUnit: String?
    public var pruningMethod: String?
    public var pruningRatio: Double?
    public var achievedSparsity: Double?
    public var segments: [PrivacySegment] = []
    public var claimedEpsilon: Double?
    public var evidence: Evidence?
    public var standardisation: String?
    public var batchSampling: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case mechanism, epsilon, delta, accountant
        case noiseMultiplier = "noise_multiplier"
        case clippingNorm = "clipping_norm"
        case samplingRate = "sampling_rate"
        case steps, epochs
        case datasetSize = "dataset_size"
        case privacyUnit = "privacy_unit"
        case pruningMethod = "pruning_method"
        case pruningRatio = "pruning_ratio"
        case achievedSparsity = "achieved_sparsity"
        case segments
        case claimedEpsilon = "claimed_epsilon"
        case evidence, standardisation
        case batchSampling = "batch_sampling"
    }

    public init() {}

    /// Column names of the numeric fields `list --where` may filter on.
    public static let numericColumns: Set<String> = [
        "epsilon", "delta", "noise_multiplier", "clipping_norm", "sampling_rate", "steps", "epochs", "dataset_size",
        "pruning_ratio", "achieved_sparsity", "audit_epsilon", "membership_auc", "membership_tpr",
    ]

    /// Refuses values no honest training run produces.
    public func validate() throws(CofferRegistryError) {
        if let epsilon, !(epsilon >= 0 && epsilon.isFinite) { throw .invalidPrivacy("epsilon must be a finite number >= 0, got \(epsilon)") }
        if let delta, !(delta >= 0 && delta < 1) { throw .invalidPrivacy("delta must be in [0, 1), got \(delta)") }
        if let noiseMultiplier, !(noiseMultiplier >= 0 && noiseMultiplier.isFinite) {
            throw .invalidPrivacy("noise_multiplier must be >= 0, got \(noiseMultiplier)")
        }
        if let clippingNorm, !(clippingNorm > 0 && clippingNorm.isFinite) { throw .invalidPrivacy("clipping_norm must be > 0, got \(clippingNorm)") }
        if let samplingRate, !(samplingRate > 0 && samplingRate <= 1) {
            throw .invalidPrivacy("sampling_rate must be in (0, 1], got \(samplingRate)")
        }
        if let steps, steps < 0 { throw .invalidPrivacy("steps must be >= 0, got \(steps)") }
        if let epochs, !(epochs >= 0 && epochs.isFinite) { throw .invalidPrivacy("epochs must be >= 0, got \(epochs)") }
        if let datasetSize, datasetSize < 0 { throw .invalidPrivacy("dataset_size must be >= 0, got \(datasetSize)") }
        if let pruningRatio, !(pruningRatio >= 0 && pruningRatio < 1) {
            throw .invalidPrivacy("pruning_ratio must be in [0, 1), got \(pruningRatio)")
        }
        if let achievedSparsity, !(achievedSparsity >= 0 && achievedSparsity <= 1) {
            throw .invalidPrivacy("achieved_sparsity must be in [0, 1], got \(achievedSparsity)")
        }
        if let problem = Self.problem(segments) { throw .invalidPrivacy(problem) }
        if let standardisation, !["dp", "public", "nonprivate"].contains(standardisation) {
            throw .invalidPrivacy("standardisation must be dp, public or nonprivate, got \(standardisation)")
        }
        if let batchSampling, batchSampling != "secret", batchSampling != "seeded" {
            throw .invalidPrivacy("batch_sampling must be secret or seeded, got \(batchSampling)")
        }
        if let claimedEpsilon, !(claimedEpsilon >= 0 && claimedEpsilon.isFinite) {
            throw .invalidPrivacy("claimed_epsilon must be a finite number >= 0, got \(claimedEpsilon)")
        }
    }

    /// ``validate()``, and what a new version's claims must also meet (stored statements are read without it: a version
    /// pushed before the rule existed still reads). A DP release of the statistics is the history's first segment, one
    /// unsampled step, before DP-SGD's.
    public func validateForPush() throws(CofferRegistryError) {
        try validate()
        if standardisation == "dp", !(segments.count >= 2 && segments[0].sampleRate == 1 && segments[0].steps == 1) {
            throw .invalidPrivacy("standardisation dp needs its release, {sample_rate: 1, steps: 1}, first in a history of two or more segments")
        }
    }

    /// Most segments a history may have, and most steps in one: far beyond any real training run, small enough that
    /// whoever replays a history (a server checking a budget, a client replaying the ledger) cannot be made to spend
    /// minutes or to overflow on it.
    public static let maximumSegments = 1000
    public static let maximumSteps = 1_000_000_000_000

    /// What is wrong with an accountant history, or nil.
    static func problem(_ segments: [PrivacySegment]) -> String? {
        guard segments.count <= maximumSegments else { return "a history has at most \(maximumSegments) segments, got \(segments.count)" }
        for (i, segment) in segments.enumerated() {
            guard segment.sampleRate > 0, segment.sampleRate <= 1, segment.noiseMultiplier >= 0, segment.noiseMultiplier.isFinite,
                segment.steps >= 0, segment.steps <= maximumSteps
            else {
                return
                    "segment \(i + 1) needs sample_rate in (0, 1], noise_multiplier >= 0 and steps from 0 to 10^12, got \(segment.sampleRate), \(segment.noiseMultiplier), \(segment.steps)"
            }
        }
        return nil
    }

    /// Why a model with these claims may not be charged to a privacy budget, or nil when it may. One rule for the
    /// ledger's replay (on a record's facts), a push's budget check and every reader (on the signed statement).
    public enum ChargeRefusal: Sendable, Equatable {
        /// Trained without differential privacy (mechanism `none`).
        case notPrivate
        /// Batches drawn from a known seed: the epsilon is not a DP guarantee.
        case seededBatches
        /// Standardisation statistics released without differential privacy.
        case nonprivateStatistics
        /// No accountant history to charge.
        case noHistory
    }

    static func chargeRefusal(
        mechanism: String?,
        segments: [PrivacySegment],
        standardisation: String?,
        batchSampling: String?
    )
        -> ChargeRefusal?
    {
        if mechanism == "none" { return .notPrivate }
        if batchSampling == "seeded" { return .seededBatches }
        if standardisation == "nonprivate" { return .nonprivateStatistics }
        if segments.isEmpty { return .noHistory }
        return nil
    }

    var chargeRefusal: ChargeRefusal? {
        Self.chargeRefusal(mechanism: mechanism, segments: segments, standardisation: standardisation, batchSampling: batchSampling)
    }

    /// Reads a privacy file: the flat shape above, or a training checkpoint's `privacy.json`
    /// (`max_grad_norm`, `segments` of `{sample_rate, noise_multiplier, steps}`, `pruning` object).
    public init(contentsOf path: String) throws(CofferRegistryError) {
        let bytes: [UInt8]
        do throws(CofferCryptoError) { bytes = try FileBytes.read(path) } catch { throw .io(path: path, reason: error.description) }
        guard let object = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)), case .object(let fields) = object else {
            throw .invalidPrivacy("\(path) is not a JSON object")
        }
        try self.init(json: fields, source: path)
    }

    init(json fields: [String: JSONValue], source: String) throws(CofferRegistryError) {
        func number(_ key: String) throws(CofferRegistryError) -> Double? {
            guard let value = fields[key], value != .null else { return nil }
            guard let number = value.numberValue else { throw .invalidPrivacy("\(source): \(key) must be a number") }
            return number
        }
        func text(_ key: String) throws(CofferRegistryError) -> String? {
            guard let value = fields[key], value != .null else { return nil }
            guard let string = value.stringValue else { throw .invalidPrivacy("\(source): \(key) must be a string") }
            return string
        }
        func integer(_ value: Double?, _ key: String) throws(CofferRegistryError) -> Int? {
            guard let value else { return nil }
            guard value.rounded() == value, abs(value) < 1e15 else { throw .invalidPrivacy("\(source): \(key) must be an integer") }
            return Int(value)
        }
        mechanism = try text("mechanism")
        epsilon = try number("epsilon")
        delta = try number("delta")
        accountant = try text("accountant")
        noiseMultiplier = try number("noise_multiplier")
        clippingNorm = try number("clipping_norm")
        if clippingNorm == nil { clippingNorm = try number("max_grad_norm") }
        samplingRate = try number("sampling_rate")
        steps = try integer(try number("steps"), "steps")
        epochs = try number("epochs")
        datasetSize = try integer(try number("dataset_size"), "dataset_size")
        privacyUnit = try text("privacy_unit")
        pruningMethod = try text("pruning_method")
        pruningRatio = try number("pruning_ratio")
        achievedSparsity = try number("achieved_sparsity")
        claimedEpsilon = try number("claimed_epsilon")
        // A checkpoint's privacy.json says {method, noise_multiplier, sensitivity}; the flat shape the method alone.
        if case .object(let given)? = fields["standardisation"] {
            guard let method = given["method"]?.stringValue else { throw .invalidPrivacy("\(source): standardisation.method must be a string") }
            // A DP release without its grid is one written between 76a793e and c2d6f4c (2026-12-06), whose Float noise
            // left the sums' low-order bits uncovered (helper-68): not private.
            standardisation = method == "dp" && given["grid"] == nil ? "nonprivate" : method
        } else {
            standardisation = try text("standardisation")
        }
        batchSampling = try text("batch_sampling")
        // A DP-SGD checkpoint that does not say is one `coffer train` wrote before 2026-12-06, which drew its batches from
        // the recipe's seed and released exact statistics: its privacy.json says so from here on (and a budget refuses it).
        if mechanism == "dp-sgd", fields["epsilon_rdp"] != nil, fields["noise_mode"] != nil, fields["batch_sampling"] == nil {
            batchSampling = "seeded"
            standardisation = standardisation ?? "nonprivate"
        }
        if case .array(let list)? = fields["segments"], !list.isEmpty {
            for item in list {
                guard case .object(let s) = item, let q = s["sample_rate"]?.numberValue, let sigma = s["noise_multiplier"]?.numberValue,
                    let n = try integer(s["steps"]?.numberValue, "segments.steps")
                else {
                    throw .invalidPrivacy("\(source): each segment needs sample_rate, noise_multiplier and steps")
                }
                segments.append(PrivacySegment(sampleRate: q, noiseMultiplier: sigma, steps: n))
            }
            fillFromSegments()
        }
        if let value = fields["evidence"], value != .null { evidence = try Evidence(value, source: source) }
        if case .object(let pruning)? = fields["pruning"] {
            pruningMethod = pruningMethod ?? pruning["method"]?.stringValue
            pruningRatio = pruningRatio ?? pruning["target_ratio"]?.numberValue
            achievedSparsity = achievedSparsity ?? pruning["achieved_sparsity"]?.numberValue
        }
        try validate()
    }

    /// The predicate form: every field, `null` where unknown.
    var json: JSONValue {
        func n(_ v: Double?) -> JSONValue { v.map { .number($0) } ?? .null }
        func i(_ v: Int?) -> JSONValue { v.map { .number(Double($0)) } ?? .null }
        func s(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
        var fields: [String: JSONValue] = [
            "mechanism": s(mechanism), "epsilon": n(epsilon), "delta": n(delta), "accountant": s(accountant),
            "noise_multiplier": n(noiseMultiplier), "clipping_norm": n(clippingNorm), "sampling_rate": n(samplingRate),
            "steps": i(steps), "epochs": n(epochs), "dataset_size": i(datasetSize), "privacy_unit": s(privacyUnit),
            "pruning_method": s(pruningMethod), "pruning_ratio": n(pruningRatio), "achieved_sparsity": n(achievedSparsity),
        ]
        // Added in format v1's second revision: present only when known, so earlier statements read the same.
        if !segments.isEmpty { fields["segments"] = Self.segmentsJSON(segments) }
        if let claimedEpsilon { fields["claimed_epsilon"] = .number(claimedEpsilon) }
        if let evidence { fields["evidence"] = evidence.json }
        if let standardisation { fields["standardisation"] = .string(standardisation) }
        if let batchSampling { fields["batch_sampling"] = .string(batchSampling) }
        return .object(fields)
    }

    static func segmentsJSON(_ segments: [PrivacySegment]) -> JSONValue {
        .array(
            segments.map {
                .object(["sample_rate": .number($0.sampleRate), "noise_multiplier": .number($0.noiseMultiplier), "steps": .number(Double($0.steps))])
            }
        )
    }

    /// Segments from their stored JSON; an unreadable list reads as none (and then disagrees with the statement).
    static func segments(fromJSON text: String) -> [PrivacySegment] {
        (try? JSONDecoder().decode([PrivacySegment].self, from: Data(text.utf8))) ?? []
    }

    /// Fills the summary columns the segments determine, where unset: steps add up over all segments, and a single
    /// segment gives its rate and noise. After a DP release of the standardisation statistics (the first segment), the
    /// columns are DP-SGD's alone: its steps, rate and noise.
    mutating func fillFromSegments() {
        guard !segments.isEmpty else { return }
        let training = standardisation == "dp" ? Array(segments.dropFirst()) : segments
        steps = steps ?? training.reduce(0) { $0 + $1.steps }
        if training.count == 1 {
            samplingRate = samplingRate ?? training[0].sampleRate
            noiseMultiplier = noiseMultiplier ?? training[0].noiseMultiplier
        }
    }
}

extension LedgerChange.VersionFacts {
    /// ``PrivacyMetadata/chargeRefusal`` on a `version` record's facts, as the replay judges them.
    var chargeRefusal: PrivacyMetadata.ChargeRefusal? {
        PrivacyMetadata.chargeRefusal(mechanism: mechanism, segments: segments, standardisation: standardisation, batchSampling: batchSampling)
    }
}
