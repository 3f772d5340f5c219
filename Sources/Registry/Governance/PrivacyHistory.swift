import CofferCrypto
public import CofferTraining
import Foundation

/// The accountant history of a model trained outside Coffer (`push --privacy-from FILE`), whose epsilon Coffer
/// recomputes instead of believing. Accepted shapes (docs/FORMAT.md):
///
/// - a list of segments `[{"sample_rate": q, "noise_multiplier": σ, "steps": n}, ...]`;
/// - Opacus's `RDPAccountant.history`, a list of `[noise_multiplier, sample_rate, steps]` triples;
/// - an object `{"segments" or "history": one of the above, "epsilon": claimed, "delta": δ}`, which may also say
///   `standardisation` and `batch_sampling` as a checkpoint's `privacy.json` does.
public struct PrivacyHistory: Sendable, Equatable {
    public var segments: [PrivacySegment]
    public var claimedEpsilon: Double?
    public var delta: Double?
    /// How the model's standardisation statistics and batches were made, as the history's publisher states them.
    public var standardisation: String?
    public var batchSampling: String?

    /// How far below the recomputed epsilon a claim may be (relative) before it is refused as understated.
    public static let tolerance = 1e-3

    public init(contentsOf path: String) throws(CofferRegistryError) {
        let bytes: [UInt8]
        do throws(CofferCryptoError) { bytes = try FileBytes.read(path) } catch { throw .io(path: path, reason: error.description) }
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)) else {
            throw .invalidPrivacy("\(path) is not JSON")
        }
        try self.init(json: json, source: path)
    }

    init(json: JSONValue, source: String) throws(CofferRegistryError) {
        var list: [JSONValue]
        switch json {
        case .array(let items):
            list = items
            claimedEpsilon = nil
            delta = nil
        case .object(let fields):
            guard case .array(let items)? = fields["segments"] ?? fields["history"] else {
                throw .invalidPrivacy("\(source): expected a list of segments, or an object with \"segments\" or \"history\"")
            }
            list = items
            claimedEpsilon = fields["epsilon"]?.numberValue
            delta = fields["delta"]?.numberValue
            func text(_ key: String) throws(CofferRegistryError) -> String? {
                guard let value = fields[key], value != .null else { return nil }  // null is absent, as in privacy.json
                guard let text = value.stringValue else { throw .invalidPrivacy("\(source): \(key) must be a string") }
                return text
            }
            standardisation = try text("standardisation")
            batchSampling = try text("batch_sampling")
        default:
            throw .invalidPrivacy("\(source): expected a list of segments, or an object with \"segments\" or \"history\"")
        }
        guard !list.isEmpty else { throw .invalidPrivacy("\(source): the history is empty") }
        segments = []
        for (i, item) in list.enumerated() {
            let segment: PrivacySegment?
            switch item {
            case .object(let s):
                segment = Self.segment(q: s["sample_rate"]?.numberValue, sigma: s["noise_multiplier"]?.numberValue, steps: s["steps"]?.numberValue)
            case .array(let triple) where triple.count == 3:
                segment = Self.segment(q: triple[1].numberValue, sigma: triple[0].numberValue, steps: triple[2].numberValue)
            default:
                segment = nil
            }
            guard let segment else {
                throw .invalidPrivacy(
                    "\(source): entry \(i + 1) is neither {sample_rate, noise_multiplier, steps} nor [noise_multiplier, sample_rate, steps]"
                )
            }
            segments.append(segment)
        }
    }

    private static func segment(q: Double?, sigma: Double?, steps: Double?) -> PrivacySegment? {
        guard let q, let sigma, let steps, steps >= 0, steps.rounded() == steps, steps < 1e12 else { return nil }
        return PrivacySegment(sampleRate: q, noiseMultiplier: sigma, steps: Int(steps))
    }

    /// `base` completed with this history: epsilon recomputed by Coffer's accountants at the history's delta (or
    /// `base.delta`), the claim kept beside it. A claim below the recomputed epsilon by more than the tolerance is
    /// refused.
    public func applied(to base: PrivacyMetadata) throws(CofferRegistryError) -> PrivacyMetadata {
        var privacy = base
        privacy.segments = segments
        guard let delta = delta ?? base.delta else {
            throw .invalidPrivacy("the history gives no delta: add \"delta\" to it or pass --delta")
        }
        privacy.delta = delta
        // The history may add what the claim left out, not overrule it: exact statistics stay exact (helper-71).
        for (stated, given, key) in [
            (standardisation, base.standardisation, "standardisation"), (batchSampling, base.batchSampling, "batch_sampling"),
        ] {
            if let stated, let given, stated != given {
                throw .invalidPrivacy("the history says \(key) \(stated), the version's privacy metadata \(given)")
            }
        }
        privacy.standardisation = standardisation ?? base.standardisation
        privacy.batchSampling = batchSampling ?? base.batchSampling
        try privacy.validate()
        for (i, segment) in segments.enumerated() where segment.noiseMultiplier == 0 && segment.steps > 0 {
            throw .invalidPrivacy("segment \(i + 1) has no noise: the history is not differentially private")
        }
        let recomputed = Registry.tightestEpsilon(segments, delta: delta)
        if let claimed = claimedEpsilon ?? base.epsilon, claimed < recomputed.epsilon * (1 - Self.tolerance) {
            throw .invalidPrivacy(
                String(
                    format: "the history claims epsilon %.4f, but its segments give %.4f at delta %g: the claim is understated",
                    claimed,
                    recomputed.epsilon,
                    delta
                )
            )
        }
        privacy.claimedEpsilon = claimedEpsilon ?? base.epsilon
        privacy.epsilon = recomputed.epsilon
        privacy.accountant = recomputed.accountant
        privacy.mechanism = privacy.mechanism ?? "dp-sgd"
        privacy.steps = segments.reduce(0) { $0 + $1.steps }
        if segments.count == 1 {
            privacy.samplingRate = segments[0].sampleRate
            privacy.noiseMultiplier = segments[0].noiseMultiplier
        }
        try privacy.validate()
        return privacy
    }
}
