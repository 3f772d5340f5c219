import Synchronization
import Testing

@testable import CofferRegistry

/// The memo of pure results: kept by the exact bytes of every input, successes only, and bounded in entries and bytes.
struct DigestMemoTests {
    struct Refused: Error {}

    /// Counts how often the memo computes.
    final class Counter: Sendable {
        let calls = Mutex(0)
        func compute(_ value: Int) -> Int {
            calls.withLock { $0 += 1 }
            return value
        }
        var count: Int { calls.withLock { $0 } }
    }

    @Test func aResultIsKeptForTheSameBytesOnly() {
        let memo = DigestMemo<Int>(capacity: 8, byteLimit: 1 << 20)
        let counter = Counter()
        #expect(memo.value(for: [[1, 2], [3]]) { counter.compute(1) } == 1)
        #expect(memo.value(for: [[1, 2], [3]]) { counter.compute(99) } == 1)
        #expect(counter.count == 1)
        // The same bytes split differently are other inputs: each part is length-prefixed.
        #expect(memo.value(for: [[1], [2, 3]]) { counter.compute(2) } == 2)
        #expect(counter.count == 2)
    }

    @Test func aFailureIsComputedAgainEveryTime() {
        let memo = DigestMemo<Int>(capacity: 8, byteLimit: 1 << 20)
        let counter = Counter()
        for _ in 0..<3 {
            #expect(throws: Refused.self) {
                try memo.value(for: [[7]]) { () throws(Refused) -> Int in
                    _ = counter.compute(0)
                    throw Refused()
                }
            }
        }
        #expect(counter.count == 3)
    }

    @Test func theMemoHoldsNoMoreThanItsBytesOrEntries() {
        let memo = DigestMemo<Int>(capacity: 3, byteLimit: 1000)
        let counter = Counter()
        let big = [UInt8](repeating: 1, count: 600)
        _ = memo.value(for: [big]) { counter.compute(1) }
        _ = memo.value(for: [big + [2]]) { counter.compute(2) }  // 1201 bytes in all: the first is let go
        _ = memo.value(for: [big]) { counter.compute(1) }
        #expect(counter.count == 3)
        // An input over the limit is never kept.
        let huge = [UInt8](repeating: 3, count: 1001)
        _ = memo.value(for: [huge]) { counter.compute(3) }
        _ = memo.value(for: [huge]) { counter.compute(3) }
        #expect(counter.count == 5)
        // Past three entries it starts again.
        let fresh = DigestMemo<Int>(capacity: 3, byteLimit: 1000)
        for value in 0..<4 { _ = fresh.value(for: [[UInt8(value)]]) { counter.compute(value) } }
        _ = fresh.value(for: [[0]]) { counter.compute(0) }
        #expect(counter.count == 10)
    }
}
