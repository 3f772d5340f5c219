import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

@testable import CofferFederated

@Suite(.ownThread)
struct SecureAggregationTests {
    // MARK: - Shamir

    @Test func shamirReconstructsFromEveryThresholdSubsetAndNotFromFewer() throws {
        let secret = SecureBytes.random(count: 32)
        let points: [UInt32] = [1, 2, 3, 4, 5]
        let shares = Shamir.split(secret, threshold: 3, points: points)
        var subset = [0, 1, 2]
        repeat {
            let picked = SecureBytes(count: 3 * 40)
            picked.withUnsafeMutableBytes { out in
                shares.withUnsafeBytes { all in
                    for (k, j) in subset.enumerated() { (out.baseAddress! + k * 40).copyMemory(from: all.baseAddress! + j * 40, byteCount: 40) }
                }
            }
            let back = try Shamir.reconstruct(points: subset.map { points[$0] }, shares: picked)
            let same = back.constantTimeEquals(secret)
            #expect(same, "subset \(subset)")
        } while SecAggAggregator.nextCombination(&subset, of: 5)
        // Two shares of a degree-2 polynomial interpolate a line: almost surely not the secret (and usually out of range).
        let two = shares.slice(0..<80)
        if let wrong = try? Shamir.reconstruct(points: [1, 2], shares: two) {
            let same = wrong.constantTimeEquals(secret)
            #expect(!same)
        }
    }

    @Test func malformedSharesAreRefusedWithTheReason() throws {
        let bad = SecureBytes(count: 40)
        bad.withUnsafeMutableBytes { $0.storeBytes(of: UInt64.max, toByteOffset: 8, as: UInt64.self) }
        let error = #expect(throws: FederatedError.self) {
            try bad.withUnsafeBytes { (raw) throws(FederatedError) in try Shamir.validate(share: raw) }
        }
        #expect(error?.description == "malformed share: element 1 of the share is not below 2^61 - 1")
        let short = SecureBytes(count: 39)
        #expect(throws: FederatedError.malformedShare("a share is 40 bytes, got 39")) {
            try short.withUnsafeBytes { (raw) throws(FederatedError) in try Shamir.validate(share: raw) }
        }
        #expect(throws: FederatedError.self) { _ = try Shamir.reconstruct(points: [1, 1], shares: SecureBytes(count: 80)) }
    }

    // MARK: - Correctness

    /// Random updates in [-1, 1] and weights, some coordinates beyond the clipping range.
    static func updates(sites: Int, dimension: Int, seed: UInt64) -> ([[Float]], [UInt64]) {
        var random = TestRandom(seed: seed)
        let values = (0..<sites).map { _ in (0..<dimension).map { _ in Float(random.uniform(-1.2, 1.2)) } }
        let weights = (0..<sites).map { _ in 1 + random.next() % 5000 }
        return (values, weights)
    }

    /// The weighted mean of the clipped updates of `included` (indices from 1).
    static func plaintextMean(_ values: [[Float]], _ weights: [UInt64], clip: Double, included: Set<Int>) -> [Double] {
        var mean = [Double](repeating: 0, count: values[0].count)
        var total = 0.0
        for (i, (update, weight)) in zip(values, weights).enumerated() where included.contains(i + 1) {
            total += Double(weight)
            for j in update.indices { mean[j] += Double(weight) * min(max(Double(update[j]), -clip), clip) }
        }
        return mean.map { $0 / total }
    }

    @Test(arguments: [(3, 0), (5, 0), (10, 0), (25, 0), (50, 0), (50, 8), (20, 4)])
    func theSecureSumDecodesToThePlaintextWeightedMeanWithinTheQuantizationBound(sites: Int, neighbours: Int) throws {
        let dimension = 200
        let quantizer = try Quantizer(clipRange: 1, bits: 20)
        let (values, weights) = Self.updates(sites: sites, dimension: dimension, seed: UInt64(sites * 31 + neighbours))
        let shares = neighbours == 0 ? sites : neighbours + 1
        let threshold = shares / 2 + 1
        let harness = try SecAggHarness(count: sites, threshold: threshold, neighbours: neighbours, dimension: dimension + 1)
        let sum = try harness.run(encode(values, weights: weights, quantizer: quantizer))
        let (mean, weight) = quantizer.decodeMean(sum)
        #expect(weight == weights.reduce(0, +))
        let expected = Self.plaintextMean(values, weights, clip: 1, included: Set(1...sites))
        let worst = zip(mean, expected).map { abs($0 - $1) }.max()!
        #expect(worst <= quantizer.errorBound, "worst error \(worst), bound \(quantizer.errorBound)")
        #expect(harness.siteErrors.isEmpty)
    }

    @Test func stochasticRoundingIsUnbiased() throws {
        let quantizer = try Quantizer(clipRange: 1, bits: 8)
        // 0.3 sits between two grid points; the mean of many roundings must approach it far closer than one step.
        let values = [Float](repeating: 0.3, count: 200_000)
        var vector = [UInt64](repeating: 0, count: values.count + 1)
        vector.withUnsafeMutableBufferPointer { _ = quantizer.encode(values, weight: 1, into: $0) }
        let decoded = vector.dropLast().map { Double($0) / quantizer.scale - 1 }
        let mean = decoded.reduce(0, +) / Double(decoded.count)
        #expect(abs(mean - 0.3) < quantizer.errorBound / 50, "mean \(mean)")
        #expect(Set(decoded.map { ($0 * 1e6).rounded() }).count == 2, "each value rounds to one of its two neighbours")
    }

    // MARK: - Dropouts

    @Test(arguments: [Stage.advertise, .share, .masked, .consistency, .unmask])
    func upToNMinusTDropoutsAtAnyStageAreRecovered(stage: Stage) throws {
        let (sites, threshold, dimension) = (7, 4, 64)
        let quantizer = try Quantizer(clipRange: 1, bits: 20)
        let (values, weights) = Self.updates(sites: sites, dimension: dimension, seed: 7)
        let harness = try SecAggHarness(count: sites, threshold: threshold, dimension: dimension + 1)
        let dropped: Set<Int> = [2, 5, 7]  // n - t = 3
        let sum = try harness.run(
            encode(values, weights: weights, quantizer: quantizer),
            faults: Faults(dropouts: Dictionary(uniqueKeysWithValues: dropped.map { ($0, stage) }))
        )
        // A site that dropped after sending its masked input is still in the sum; one that dropped before is not.
        let included = stage > .masked ? Set(1...sites) : Set(1...sites).subtracting(dropped)
        let (mean, weight) = quantizer.decodeMean(sum)
        #expect(weight == included.map { weights[$0 - 1] }.reduce(0, +))
        let expected = Self.plaintextMean(values, weights, clip: 1, included: included)
        #expect(zip(mean, expected).map { abs($0 - $1) }.max()! <= quantizer.errorBound)
    }

    @Test func dropoutsInASecAggPlusRingAreRecoveredFromTheNeighbours() throws {
        let (sites, neighbours, dimension) = (12, 4, 32)
        let quantizer = try Quantizer(clipRange: 1, bits: 20)
        let (values, weights) = Self.updates(sites: sites, dimension: dimension, seed: 12)
        let harness = try SecAggHarness(count: sites, threshold: 3, neighbours: neighbours, dimension: dimension + 1)
        // Two sites that are not within two of each other drop before masking: each has 4 surviving neighbours.
        let sum = try harness.run(encode(values, weights: weights, quantizer: quantizer), faults: Faults(dropouts: [3: .masked, 9: .masked]))
        let expected = Self.plaintextMean(values, weights, clip: 1, included: Set(1...sites).subtracting([3, 9]))
        #expect(zip(quantizer.decodeMean(sum).mean, expected).map { abs($0 - $1) }.max()! <= quantizer.errorBound)
    }

    @Test(arguments: [Stage.advertise, .share, .masked, .consistency, .unmask])
    func moreThanNMinusTDropoutsAbortTheRoundWithOneLine(stage: Stage) throws {
        let harness = try SecAggHarness(count: 7, threshold: 4, dimension: 9)
        let inputs = [[UInt64]](repeating: [UInt64](repeating: 1, count: 9), count: 7)
        let error = #expect(throws: FederatedError.self) {
            _ = try harness.run(inputs, faults: Faults(dropouts: [1: stage, 3: stage, 4: stage, 6: stage]))
        }
        let message = try #require(error?.description)
        #expect(message.hasPrefix("round 1 aborted: only 3 of 7 sites answered the \(stage.rawValue) stage, the threshold is 4"), "\(message)")
        #expect(!message.contains("\n"))
    }

    // MARK: - A malicious coordinator

    @Test func aShareBoxAlteredByTheCoordinatorIsDetectedByItsRecipient() throws {
        let quantizer = try Quantizer(clipRange: 1, bits: 20)
        let (values, weights) = Self.updates(sites: 5, dimension: 16, seed: 5)
        let harness = try SecAggHarness(count: 5, threshold: 3, dimension: 17)
        let tamper: (inout SiteTask) -> Void = { task in
            guard task.stage == .masked, var boxes = task.boxes, let k = boxes.firstIndex(where: { $0.to == 2 && $0.from == 4 }) else { return }
            boxes[k].box.bytes[40] ^= 0x01
            task.boxes = boxes
        }
        let sum = try harness.run(encode(values, weights: weights, quantizer: quantizer), faults: Faults(tamper: tamper))
        let site4 = harness.identities[3].publicIdentity.keyID
        #expect(
            harness.siteErrors[2]?.description
                == "message tampered with: the shares from site \(site4) do not authenticate: the coordinator or the network altered, replayed or misrouted them"
        )
        // Site 2 refused to go on, so the round completed without its input.
        let expected = Self.plaintextMean(values, weights, clip: 1, included: [1, 3, 4, 5])
        #expect(zip(quantizer.decodeMean(sum).mean, expected).map { abs($0 - $1) }.max()! <= quantizer.errorBound)
    }

    @Test func misroutedReplayedAndWithheldBoxesAreDetected() throws {
        // Misrouted: the box from 4 to 3 is handed to 5 (tasks are filled in index order) with its recipient rewritten.
        var harness = try SecAggHarness(count: 5, threshold: 3, dimension: 3)
        var stolen: ShareBox?
        _ = try? harness.run(
            [[UInt64]](repeating: [0, 0, 0], count: 5),
            faults: Faults(tamper: { task in
                guard task.stage == .masked, var boxes = task.boxes else { return }
                if let box = boxes.first(where: { $0.from == 4 && $0.to == 3 }) { stolen = box }
                if boxes.first?.to == 5, let box = stolen, let k = boxes.firstIndex(where: { $0.from == 4 }) {
                    boxes[k] = ShareBox(from: 4, to: 5, box: box.box)
                    task.boxes = boxes
                }
            })
        )
        #expect(harness.siteErrors[5]?.description.contains("do not authenticate") == true)

        // Replayed from an earlier round: a box from round 1 offered in round 2 (same sites, new keys).
        harness = try SecAggHarness(count: 5, threshold: 3, dimension: 3, round: 1)
        var first: [ShareBox] = []
        _ = try harness.run(
            [[UInt64]](repeating: [0, 0, 0], count: 5),
            faults: Faults(tamper: { task in if task.stage == .masked { first += task.boxes ?? [] } })
        )
        let later = try SecAggHarness(count: 5, threshold: 3, dimension: 3, round: 2)
        _ = try? later.run(
            [[UInt64]](repeating: [0, 0, 0], count: 5),
            faults: Faults(tamper: { task in
                guard task.stage == .masked, var boxes = task.boxes, let k = boxes.indices.first else { return }
                if let old = first.first(where: { $0.from == boxes[k].from && $0.to == boxes[k].to }) { boxes[k] = old }
                task.boxes = boxes
            })
        )
        #expect(later.siteErrors.values.allSatisfy { $0.description.contains("do not authenticate") } && !later.siteErrors.isEmpty)

        // Withheld: the coordinator drops one box but counts its sender as having sent shares.
        let withheld = try SecAggHarness(count: 5, threshold: 3, dimension: 3)
        _ = try? withheld.run(
            [[UInt64]](repeating: [0, 0, 0], count: 5),
            faults: Faults(tamper: { task in if task.stage == .masked, task.boxes?.first?.to == 1 { task.boxes?.removeFirst() } })
        )
        #expect(withheld.siteErrors[1]?.description.contains("withheld the shares") == true)
    }

    /// On a SecAgg+ ring each site is sent its own keys and its neighbours', no others (m^2 key sets a round otherwise),
    /// and refuses another site's keys even when they are genuine.
    @Test func aSiteOnARingGetsAndTakesOnlyItsNeighboursKeys() throws {
        let ring = try SecAggHarness(count: 9, threshold: 3, neighbours: 4, dimension: 3)
        var forwarded: [Set<Int>] = []
        let sum = try ring.run(
            (0..<9).map { [UInt64($0), 1, 2] },
            faults: Faults(tamper: { task in if task.stage == .share { forwarded.append(Set(task.keys!.map(\.index))) } })
        )
        #expect(sum == [36, 9, 18])
        let neighbourhoods = ring.sites.map { index, site in Set(site.neighbourIndices).union([index]) }
        #expect(Set(forwarded) == Set(neighbourhoods) && forwarded.count == 9 && forwarded.allSatisfy { $0.count == 5 }, "\(forwarded)")

        // The coordinator adds a non-neighbour's genuine keys to site 1's task.
        let padded = try SecAggHarness(count: 9, threshold: 3, neighbours: 4, dimension: 3)
        let own = Set(padded.sites[1]!.neighbourIndices).union([1])
        let stranger = Set(1...9).subtracting(own).min()!
        _ = try? padded.run(
            [[UInt64]](repeating: [0, 0, 0], count: 9),
            faults: Faults(tamper: { task in
                if task.stage == .share, Set(task.keys!.map(\.index)) == own { task.keys!.append(padded.aggregator.keys[stranger]!) }
            })
        )
        let name = padded.identities[stranger - 1].publicIdentity.keyID
        #expect(padded.siteErrors[1]?.description == "malformed message: keys for site \(name), which is not a neighbour")

        // The coordinator counts as having sent shares a neighbour that never advertised keys, or an index outside the
        // roster: refused, since the site holds no keys to mask against.
        let listed =
            "malformed message: the list of sites that sent shares repeats a site, or names one outside the roster or a neighbour that advertised no keys"
        for (dropped, added) in [(2, 2), (nil, 99)] as [(Int?, Int)] {
            let counted = try SecAggHarness(count: 9, threshold: 3, neighbours: 4, dimension: 3)
            let victim = dropped.map { d in counted.sites.first { $0.value.neighbourIndices.contains(d) && $0.key != d }!.key } ?? 1
            _ = try? counted.run(
                [[UInt64]](repeating: [0, 0, 0], count: 9),
                faults: Faults(
                    dropouts: dropped.map { [$0: .advertise] } ?? [:],
                    tamper: { task in if task.stage == .masked, task.survivors?.contains(added) == false { task.survivors!.append(added) } }
                )
            )
            #expect(counted.siteErrors[victim]?.description == listed, "\(added): \(counted.siteErrors)")
        }
    }

    @Test func keysSwappedByTheCoordinatorAndUnsignedListsAreRefused() throws {
        let swapped = try SecAggHarness(count: 4, threshold: 3, dimension: 3)
        let attacker = EphemeralKeyPair.generate().publicKey
        _ = try? swapped.run(
            [[UInt64]](repeating: [0, 0, 0], count: 4),
            faults: Faults(tamper: { task in
                if task.stage == .share, let k = task.keys?.firstIndex(where: { $0.index == 3 }) { task.keys![k].maskKey = Base64Bytes(attacker) }
            })
        )
        let site3 = swapped.identities[2].publicIdentity.keyID
        #expect(swapped.siteErrors[1]?.description == "signature does not verify: the round keys forwarded for site \(site3) are not signed by it")

        // Unmasking a list other than the one signed, or with too few signatures: refused before any share is released.
        let relisted = try SecAggHarness(count: 4, threshold: 3, dimension: 3)
        _ = try? relisted.run(
            [[UInt64]](repeating: [0, 0, 0], count: 4),
            faults: Faults(tamper: { task in if task.stage == .unmask, task.site == "" { task.signatures = Array(task.signatures!.prefix(2)) } })
        )
        #expect(relisted.siteErrors.values.contains { $0.description.contains("only 2 sites signed the list of masked inputs") })
    }

    // MARK: - What the coordinator sees

    /// Chi-square with 255 degrees of freedom at 1 - 1e-6 (scipy.stats.chi2.ppf(1 - 1e-6, 255) = 377.078), and the
    /// Kolmogorov-Smirnov statistic at the same level for n samples (asymptotic: sqrt(-ln(1e-6 / 2) / 2n)): fixed before
    /// the data is seen, so a correct implementation fails each check about once in a million runs.
    static let chiSquareCritical = 377.08
    static func ksCritical(_ n: Int) -> Double { (-log(0.5e-6) / (2 * Double(n))).squareRoot() }

    static func chiSquare(_ values: [UInt64], byte: Int) -> Double {
        var counts = [Double](repeating: 0, count: 256)
        for v in values { counts[Int((v >> UInt64(8 * byte)) & 0xFF)] += 1 }
        let expected = Double(values.count) / 256
        return counts.map { ($0 - expected) * ($0 - expected) / expected }.reduce(0, +)
    }

    static func kolmogorovSmirnov(_ values: [UInt64]) -> Double {
        let u = values.map { Double($0 >> 11) * 0x1.0p-53 }.sorted()
        let n = Double(u.count)
        return u.enumerated().map { i, x in max(Double(i + 1) / n - x, x - Double(i) / n) }.max()!
    }

    @Test func maskedVectorsAreIndistinguishableFromUniformInTheRing() throws {
        // Every site sends the same update (all coordinates 0.25, weight 1): unmasked, its encoding is one value.
        let sites = 6
        let dimension = 6000
        let quantizer = try Quantizer(clipRange: 1, bits: 22)
        let inputs = encode(
            [[Float]](repeating: [Float](repeating: 0.25, count: dimension), count: sites),
            weights: [UInt64](repeating: 1, count: sites),
            quantizer: quantizer
        )
        let harness = try SecAggHarness(count: sites, threshold: 4, dimension: dimension + 1)
        _ = try harness.run(inputs)
        let seen = harness.maskedVectors.keys.sorted().flatMap { harness.maskedVectors[$0]! }
        #expect(seen.count == sites * (dimension + 1))
        for byte in [0, 3, 7] {
            let statistic = Self.chiSquare(seen, byte: byte)
            #expect(statistic < Self.chiSquareCritical, "byte \(byte): chi-square \(statistic)")
        }
        let d = Self.kolmogorovSmirnov(seen)
        #expect(d < Self.ksCritical(seen.count), "KS \(d)")
        // The same tests reject the unmasked encodings: they can fail.
        let plain = inputs.flatMap { $0 }
        #expect(Self.chiSquare(plain, byte: 7) > Self.chiSquareCritical)
        #expect(Self.kolmogorovSmirnov(plain) > Self.ksCritical(plain.count))
    }
}
