import CSodium
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One step's noise, one value per parameter, wiped when it goes: with it and the noised sum that the step releases
/// into the model, the clipped sum (what the noise hides) could be recovered.
struct StepNoise: ~Copyable {
    let values: UnsafeMutableBufferPointer<Float>

    init(count: Int) {
        values = .allocate(capacity: count)
        values.initialize(repeating: 0)
    }

    deinit {
        if let base = values.baseAddress, !values.isEmpty { sodium_memzero(base, 4 * values.count) }
        values.deallocate()
    }
}

/// The Poisson draws of DP-SGD's steps: ChaCha20's keystream under keys from the operating system's generator, a fresh
/// one for every 64 KiB. Poisson subsampling amplifies privacy, as the accountants count it, only while which rows
/// joined a step stays secret: from a seed, which a recipe names (1 when it does not), anyone could recompute every batch
/// and see the steps a row took part in. The draws are wiped once used up, and the rest when training ends.
final class SecretDraws: @unchecked Sendable {
    private let words = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 8192)
    private var used: Int
    private let seeding: (UnsafeMutableRawBufferPointer) -> Void
    private let lock = NSLock()

    /// `seeding` fills each key: the operating system's generator, unless a test fixes it.
    init(seeding: @escaping (UnsafeMutableRawBufferPointer) -> Void = { randombytes_buf($0.baseAddress!, $0.count) }) {
        _ = GaussianNoise.ready
        self.seeding = seeding
        words.initialize(repeating: 0)
        used = words.count
    }

    /// Callers hold `lock`.
    private func next() -> UInt64 {
        if used == words.count { refill() }
        defer { used += 1 }
        return words[used]
    }

    /// The rows of `0..<count` that a Poisson sample of rate `q` takes, each independently with probability `q`: the
    /// gaps between taken rows are geometric, P(gap >= k) = (1 - q)^k, drawn as floor(log u / log(1 - q)) for u uniform
    /// in (0, 1]. One draw per row taken instead of one per row: on the training benchmark, 256 draws a step instead of
    /// 60,000.
    func poissonSample(of count: Int, rate q: Double) -> [Int] {
        precondition(q > 0, "a sampling rate is positive")
        // One stream, one reader at a time: copies of a Trainer share it, and a word read twice would repeat a draw.
        lock.lock()
        defer { lock.unlock() }
        guard q < 1 else { return Array(0..<count) }
        let logMiss = log1p(-q)
        var taken: [Int] = []
        var row = -1
        while true {
            let u = Double(Int64(bitPattern: next() >> 11) + 1) * 0x1.0p-53
            let gap = (log(u) / logMiss).rounded(.down)
            guard gap < Double(count - row - 1) else { return taken }
            row += Int(gap) + 1
            taken.append(row)
        }
    }

    private func refill() {
        GaussianNoise.freshKeystream(into: UnsafeMutableRawPointer(words.baseAddress!), count: 8 * words.count, seeding: seeding)
        used = 0
    }

    deinit {
        sodium_memzero(words.baseAddress!, 8 * words.count)
        words.deallocate()
    }
}
