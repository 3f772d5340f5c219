import CofferCrypto
import Foundation

@testable import CofferFederated

/// Identities are cheap to generate (no Argon2id: they are never written to disk here), so tests make their own.
func makeSites(_ count: Int, prefix: String = "site") -> [UnlockedIdentity] {
    (0..<count).map { UnlockedIdentity(try! Identity.generate(name: "\(prefix)\($0)")) }
}

/// Deterministic pseudo-random values (xorshift), so failures reproduce; never used for anything secret.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    mutating func uniform(_ low: Double, _ high: Double) -> Double { low + (high - low) * Double(next() >> 11) * 0x1.0p-53 }
}

/// How a harness round should misbehave.
struct Faults {
    /// Sites (by index) that stop answering from this stage on.
    var dropouts: [Int: Stage] = [:]
    /// Alters the tasks the coordinator forwards (a malicious coordinator).
    var tamper: ((inout SiteTask) -> Void)? = nil
    /// Alters what a site (by index) submits (a faulty or malicious site).
    var submission: ((Int, inout Submission) -> Void)? = nil
}

/// One round of secure aggregation between `SecAggSite`s and a `SecAggAggregator`, with no training and no transport:
/// the protocol alone, on the vectors given.
final class SecAggHarness {
    let session = (0..<16).map { UInt8($0) }
    let identities: [UnlockedIdentity]
    let roster: [Int: PublicIdentity]
    let aggregator: SecAggAggregator
    var sites: [Int: SecAggSite] = [:]
    /// What each site refused, by index.
    var siteErrors: [Int: FederatedError] = [:]
    /// The masked vectors the coordinator received, by index.
    var maskedVectors: [Int: [UInt64]] = [:]
    /// What the coordinator refused, by index.
    var coordinatorErrors: [Int: FederatedError] = [:]

    init(count: Int, threshold: Int, neighbours: Int = 0, dimension: Int, round: Int = 1) throws {
        identities = makeSites(count)
        roster = Dictionary(uniqueKeysWithValues: identities.enumerated().map { ($0 + 1, $1.publicIdentity) })
        let template = RoundParameters(
            kind: .update,
            threshold: threshold,
            neighbours: neighbours,
            clipRange: 8,
            bits: 22,
            mechanism: "fedavg",
            clipNorm: nil,
            coordinatorKey: Base64Bytes([UInt8](repeating: 0, count: 32))
        )
        aggregator = try SecAggAggregator(session: session, round: round, roster: roster, template: template, dimension: dimension)
        for index in roster.keys {
            sites[index] = try SecAggSite(session: session, round: round, me: index, roster: roster, parameters: aggregator.parameters)
        }
    }

    /// Runs every stage; `inputs[i]` is the encoded vector of index i + 1. Returns the unmasked sum.
    func run(_ inputs: [[UInt64]], faults: Faults = Faults()) throws(FederatedError) -> [UInt64] {
        let expander = MaskExpander()
        while aggregator.stage != .finished {
            let stage = aggregator.stage
            for index in aggregator.expected.sorted() {
                if let drop = faults.dropouts[index], drop <= stage { continue }
                guard let site = sites[index] else { continue }
                var task = SiteTask(session: "", site: "", seq: 0, round: aggregator.round, stage: stage)
                aggregator.fill(&task, for: index)
                faults.tamper?(&task)
                var submission = Submission(session: "", site: "", round: aggregator.round, stage: stage)
                do throws(FederatedError) {
                    switch stage {
                    case .advertise: site.advertise(signedBy: identities[index - 1].identity, into: &submission)
                    case .share: try site.share(keys: task.keys!, into: &submission)
                    case .masked:
                        let input = SecureBytes(count: inputs[index - 1].count * 8)
                        input.withUnsafeMutableBytes { raw in
                            for (j, v) in inputs[index - 1].enumerated() { raw.storeBytes(of: v, toByteOffset: j * 8, as: UInt64.self) }
                        }
                        let masked = try site.mask(survivors: task.survivors!, boxes: task.boxes!, input: input, expander: expander)
                        maskedVectors[index] = [UInt64](littleEndianBytes: masked)!
                        submission.vector = Base64Bytes(masked)
                    case .consistency:
                        submission.signature = Base64Bytes(try site.signConsistency(masked: task.masked!, by: identities[index - 1].identity))
                    case .unmask: submission.sealedShares = Base64Bytes(try site.unmask(masked: task.masked!, signatures: task.signatures!))
                    case .finished: break
                    }
                } catch {
                    siteErrors[index] = error
                    continue
                }
                faults.submission?(index, &submission)
                do throws(FederatedError) {
                    try aggregator.accept(submission, from: index)
                } catch {
                    coordinatorErrors[index] = error
                }
            }
            try aggregator.close()
        }
        return try aggregator.result()
    }
}

/// Encoded update vectors: `values[i]` quantized with weight `weights[i]`.
func encode(_ values: [[Float]], weights: [UInt64], quantizer: Quantizer) -> [[UInt64]] {
    zip(values, weights).map { update, weight in
        var vector = [UInt64](repeating: 0, count: update.count + 1)
        vector.withUnsafeMutableBufferPointer { _ = quantizer.encode(update, weight: weight, into: $0) }
        return vector
    }
}
