import CSodium
import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// The parts of a DP-SGD step that a review found no test reached (helper-66): the noise stream's top-up blocks, the
/// libsodium keystream where OpenSSL loads, and the split of a step between threads under clipping, uncertainty
/// weighting and an audit.
@Suite(.ownThread)
struct DPStepTests {
    /// Fixed keys: byte i of block b's key under `trial` is a function of (trial, b, i).
    static func seeding(_ trial: UInt32) -> (UnsafeMutableRawBufferPointer) -> Void {
        var block: UInt8 = 0
        return { seed in
            for i in seed.indices { seed[i] = UInt8(truncatingIfNeeded: trial >> (8 * UInt32(i % 4))) &+ UInt8(i / 4) &* 31 }
            seed[31] = block
            block &+= 1
        }
    }

    /// Marsaglia's polar method one pair at a time on libsodium's keystream, as plainly as it can be written, counting
    /// the blocks it keyed.
    static func transcription(_ count: Int, _ nextSeed: (UnsafeMutableRawBufferPointer) -> Void) -> (draws: [Double], blocks: Int) {
        var expected: [Double] = []
        var blocks = 0
        var seed = [UInt8](repeating: 0, count: Int(randombytes_SEEDBYTES))
        while expected.count < count {
            seed.withUnsafeMutableBytes(nextSeed)
            blocks += 1
            let pairs = (count - expected.count) / 2 * 135 / 100 + 16
            var bits = [UInt64](repeating: 0, count: 2 * pairs)
            let nonce = [UInt8](repeating: 0, count: Int(crypto_stream_chacha20_ietf_NONCEBYTES))
            _ = crypto_stream_chacha20_ietf(&bits, UInt64(16 * pairs), nonce, seed)
            for k in stride(from: 0, to: bits.count, by: 2) where expected.count < count {
                let u = Double(bits[k] >> 11) * 0x1.0p-52 - 1
                let v = Double(bits[k + 1] >> 11) * 0x1.0p-52 - 1
                let s = u * u + v * v
                guard s > 0, s < 1 else { continue }
                let factor = (-2 * log(s) / s).squareRoot()
                expected.append(u * factor)
                if expected.count < count { expected.append(v * factor) }
            }
        }
        return (expected, blocks)
    }

    /// The first draw of `drawn` whose bits differ from `expected`'s, if any.
    static func firstDifference(_ drawn: [Double], _ expected: [Double]) -> Int? {
        zip(drawn, expected).enumerated().first { $0.element.0.bitPattern != $0.element.1.bitPattern }?.offset
    }

    /// The batched polar method gives the draws of one pair at a time from the same stream, in the same order: with the
    /// blocks' keys fixed, every value matches the transcription to the bit, on libsodium's ChaCha20 keystream (so
    /// OpenSSL's, which the sampler uses where it loads, gives the same bytes).
    @Test func batchedDrawsAreThoseOfOnePairAtATime() {
        for (count, trial) in [(1, UInt32(1)), (2, 2), (255, 3), (513, 4), (100_001, 5)] {
            let expected = Self.transcription(count, Self.seeding(trial)).draws
            var drawn = [Double](repeating: .nan, count: count)
            GaussianNoise.normals(count, seeding: Self.seeding(trial)) { i, z in drawn[i] = z }
            let first = Self.firstDifference(drawn, expected)
            #expect(first == nil, "\(count) draws: the first to differ is draw \(first ?? -1)")
        }
    }

    /// A block that yields too few accepted pairs is topped up from a second block under a fresh key: reached about once
    /// in 5,000 keys for a few hundred draws, so the keys that reach it are searched for. A top-up that reused the first
    /// key (repeating draws) fails here and nowhere else.
    @Test func topUpBlocksAreThoseOfOnePairAtATime() {
        for count in [301, 400] {
            var found = 0
            var trial: UInt32 = 0
            while found < 2 && trial < 200_000 {
                trial += 1
                let (expected, blocks) = Self.transcription(count, Self.seeding(trial))
                guard blocks > 1 else { continue }
                found += 1
                var drawn = [Double](repeating: .nan, count: count)
                GaussianNoise.normals(count, seeding: Self.seeding(trial)) { i, z in drawn[i] = z }
                let first = Self.firstDifference(drawn, expected)
                #expect(first == nil, "count \(count), trial \(trial), \(blocks) blocks: first differing draw \(first ?? -1)")
            }
            #expect(found == 2, "no top-up found for count \(count) in \(trial) trials")
        }
    }

    /// DP's Poisson sample by geometric gaps takes every row, the first and the last included, with probability q, and
    /// batches of mean Nq and variance Nq(1 - q) (an off-by-one in the gaps would skip or favour a row).
    @Test func poissonSampleTakesEveryRowAtTheRate() {
        let draws = SecretDraws()
        let (count, q, steps) = (200, 0.05, 20_000)
        var taken = [Int](repeating: 0, count: count)
        var sizes: [Double] = []
        for _ in 0..<steps {
            let rows = draws.poissonSample(of: count, rate: q)
            #expect(rows == rows.sorted() && Set(rows).count == rows.count && rows.allSatisfy { (0..<count).contains($0) })
            for row in rows { taken[row] += 1 }
            sizes.append(Double(rows.count))
        }
        // Each row: Binomial(20,000, 0.05), mean 1,000, sd 31; 5.5 sd is 1 in 10^7 per row.
        #expect(taken.allSatisfy { abs($0 - 1_000) < 170 }, "from \(taken.min()!) to \(taken.max()!); first \(taken[0]), last \(taken[count - 1])")
        let mean = sizes.reduce(0, +) / Double(steps)
        let variance = sizes.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(steps)
        #expect(abs(mean - 10) < 0.1, "mean batch \(mean)")
        #expect(abs(variance - 9.5) < 0.5, "batch variance \(variance)")
        #expect(draws.poissonSample(of: 5, rate: 1) == [0, 1, 2, 3, 4])
        #expect(draws.poissonSample(of: 0, rate: 0.5) == [])
    }

    /// OpenSSL's keystream and libsodium's (used where OpenSSL does not load) are the same bytes, for lengths that are
    /// and are not whole 64-byte blocks.
    @Test func bothKeystreamsGiveTheSameBytes() {
        #expect(ChaCha20Keystream.openSSL, "OpenSSL's ChaCha20 loads here, so both are compared")
        var key = [UInt8](repeating: 0, count: 32)
        for count in [1, 64, 272, 70_001] {
            randombytes_buf(&key, key.count)
            var (openSSL, sodium) = ([UInt8](repeating: 0, count: count), [UInt8](repeating: 1, count: count))
            key.withUnsafeBufferPointer { key in
                GaussianNoise.keystream(into: &openSSL, count: count, key: key.baseAddress!, openSSL: true)
                GaussianNoise.keystream(into: &sodium, count: count, key: key.baseAddress!, openSSL: false)
            }
            #expect(openSSL == sodium, "\(count) bytes")
            #expect(Set(sodium).count > min(count, 200) / 2, "\(count) bytes of keystream, not zeros")
        }
    }

    /// Under DP (clipping on, sigma so small the noise vanishes), with uncertainty weighting and an audit attached, a
    /// three-way split gives the one-thread model to float rounding: log-variances and audit head included. Both
    /// trainers take their batches from the same fixed keys.
    @Test func dpSplitWithUncertaintyAndAuditMatchesOneThread() throws {
        let data = TrainerTests.synthetic(count: 2000, seed: 7)
        let model = try MultiTaskModel(architecture: TrainerTests.architecture, seed: 5)
        var configuration = TrainingConfiguration(
            learningRate: 0.05,
            optimizer: .sgd(momentum: 0),
            sampleRate: 0.1,
            noiseMultiplier: 1e-12,
            clipNorm: 0.05
        )
        configuration.uncertaintyWeighting = true
        var generator = SeededGenerator(seed: 99)
        let canaries = AuditCanaries(count: 64, inputs: 4, generator: &generator)
        var one = try Trainer(model: model, configuration: configuration, seed: 9, secretDraws: SecretDraws(seeding: Self.seeding(7)))
        var three = try Trainer(
            model: model,
            configuration: configuration,
            seed: 9,
            threads: 3,
            secretDraws: SecretDraws(seeding: Self.seeding(7))
        )
        one.attachAudit(canaries)
        three.attachAudit(canaries)
        for _ in 0..<20 {
            let (a, b) = (one.step(on: data), three.step(on: data))
            #expect(a.batchSize == b.batchSize && a.batchSize >= 3 * Trainer.rowsPerThread)
        }
        func all(_ t: Trainer) -> [Float] {
            TrainerTests.parameters(t.model) + t.logVariances + t.auditHead!.layer.weight + t.auditHead!.layer.bias
        }
        let (start, single, split) = (TrainerTests.parameters(model) + [0, 0, 0], all(one), all(three))
        #expect(zip(single, split).map { abs($0 - $1) }.max()! < 1e-5)
        #expect(zip(start, single.prefix(start.count)).map { abs($0 - $1) }.max()! > 1e-3, "the model moved")
        #expect(one.logVariances.map { abs($0) }.max()! > 1e-4, "log-variances moved")
        #expect(three.accountant.segments == [PrivacySegment(sampleRate: 0.1, noiseMultiplier: 1e-12, steps: 20)])
    }
}
