import CofferTestSupport
import Foundation
import Testing

/// The trait the synchronous suites run under (``OwnThread``): each test on a thread of its own, so that one waiting on
/// a subprocess holds no thread of Swift's cooperative pool.
@Suite(.ownThread)
struct OwnThreadTests {
    @Test func aSynchronousTestRunsOnAThreadOfItsOwn() {
        #expect(threadName() == Test.current?.name)
    }

    @Test func anAsynchronousTestComesBackToItsThreadAfterWaiting() async throws {
        try await Task.sleep(for: .milliseconds(20))
        #expect(threadName() == Test.current?.name)
        async let child = threadName()
        #expect(await child == Test.current?.name, "a child task runs there too")
        #expect(await Task.detached { OwnThread.testOfThisThread }.value == nil, "a detached task runs in the pool")
    }

    /// The trait on the suite and again on the test: the test's one thread (and one slot of the cores).
    @Test(.ownThread) func aTestMarkedTwiceRunsOnOneThread() async {
        #expect(threadName() == Test.current?.name)
        #expect(await Task { OwnThread.testOfThisThread }.value == nil, "an unstructured task runs in the pool")
    }

    private func threadName() -> String? { OwnThread.testOfThisThread }
}
