import CofferCrypto
import CofferTestSupport
import Testing

@testable import CofferFederated

@Suite(.ownThread)
struct MaskExpanderTests {
    /// The one-pass form must give exactly what one mask at a time gives: the format defines each mask, not the loop.
    @Test(arguments: [1, 7, 1024, 1025, 8 * 1024 + 3, 101_000])
    func manyMasksInOnePassEqualOneMaskAtATime(count: Int) {
        let seeds = SecureBytes.random(count: 5 * 32)
        let directions: [MaskExpander.Direction] = [.add, .subtract, .add, .add, .subtract]
        let start = (0..<count).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
        var one = start
        let expander = MaskExpander()
        for (i, direction) in directions.enumerated() {
            let seed = seeds.slice((i * 32)..<(i * 32 + 32))
            one.withUnsafeMutableBufferPointer { expander.apply(seed: seed, direction, to: $0) }
        }
        var pass = start
        pass.withUnsafeMutableBufferPointer { vector in
            seeds.withUnsafeBytes { expander.apply(seeds: $0.baseAddress!, directions: directions, to: vector) }
        }
        #expect(pass == one)
        // Split over threads (ranges on 64-byte blocks), as the coordinator unmasks.
        var split = start
        split.withUnsafeMutableBufferPointer { MaskExpander.apply(seeds: seeds, directions: directions, to: $0, threads: 3) }
        #expect(split == one)
        // And the masks cancel: subtracting what was added gives the start back.
        let opposite = directions.map { $0 == .add ? MaskExpander.Direction.subtract : .add }
        split.withUnsafeMutableBufferPointer { MaskExpander.apply(seeds: seeds, directions: opposite, to: $0, threads: 2) }
        #expect(split == start)
    }
}
