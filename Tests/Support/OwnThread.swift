import Foundation
import Synchronization
public import Testing

/// Runs each test of a suite on a thread of its own, off Swift's cooperative pool, at most as many at once as the
/// machine has cores.
///
/// Swift Testing runs a synchronous test on a thread of the cooperative pool, which is as wide as the machine has cores.
/// A test that waits on `coffer` subprocesses, or trains a model, holds its thread for seconds to minutes: on CI's two
/// cores two of them held the whole pool, and the asynchronous tests beside them stalled. One read a 67 MiB blob from
/// the OCI registry and did not ask for the next buffer for 120 s, so the HTTP client's read timeout failed it.
///
/// The thread is the test's only one: `async let`, task-group children and default actors run on it too (SE-0417),
/// so a child that blocks the thread (a semaphore, a wait for a process) while another needs it deadlocks. Give such a
/// child `executorPreference: globalConcurrentExecutor`, or use `Task {}`, which does not inherit the preference.
public struct OwnThread: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        testCase == nil ? nil : self
    }

    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        // Applied twice (to a suite and to a test in it): one thread and one slot, or two such tests could each hold one
        // of two slots and wait for a second.
        if Self.testOfThisThread != nil { return try await function() }
        await Self.slots.acquire()
        defer { Self.slots.release() }
        let executor = ThreadExecutor(name: test.name)
        defer { executor.stop() }
        try await withTaskExecutorPreference(executor) { try await function() }
    }

    /// The name of the test whose thread this is, nil on any other thread.
    public static var testOfThisThread: String? { Thread.current.threadDictionary[ThreadExecutor.testKey] as? String }

    /// As many as the cooperative pool had for these tests before: they were never run more widely.
    static let slots = Slots(ProcessInfo.processInfo.activeProcessorCount)
}

extension Trait where Self == OwnThread {
    /// See ``OwnThread``.
    public static var ownThread: Self { OwnThread() }
}

/// One thread running the jobs enqueued on it, in order, until stopped.
final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false
    private var ended = false

    static let testKey = "coffer.ownThread.test"

    init(name: String) {
        let thread = Thread { [self] in
            Thread.current.threadDictionary[Self.testKey] = name
            runJobs()
        }
        // As the main thread has: training and parsing tests recurse deeper than a pool thread's default allows.
        thread.stackSize = 8 << 20
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        defer { condition.unlock() }
        guard !ended else {
            // A job of a task that outlived the test (none should): run rather than lose it.
            Thread { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }.start()
            return
        }
        jobs.append(job)
        condition.signal()
    }

    /// Ends the thread once the jobs enqueued so far have run.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func runJobs() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            guard !jobs.isEmpty else {
                ended = true
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// A counting semaphore that waits without holding a thread.
final class Slots: Sendable {
    private let state: Mutex<(free: Int, waiting: [CheckedContinuation<Void, Never>])>

    init(_ count: Int) { state = Mutex((max(count, 1), [])) }

    func acquire() async {
        await withCheckedContinuation { continuation in
            let granted = state.withLock { state in
                guard state.free > 0 else {
                    state.waiting.append(continuation)
                    return false
                }
                state.free -= 1
                return true
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiting.isEmpty else {
                state.free += 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
