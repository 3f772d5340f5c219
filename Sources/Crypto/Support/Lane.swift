import CLinux
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A serial lane of work on a thread of its own, or inline on the caller's thread.
///
/// The sealing pipeline blocks while it waits for its lanes; running them on dedicated threads
/// rather than on Dispatch's global pools keeps that from starving (or deadlocking) a Swift
/// concurrency pool that called it, as a server's request handler would.
final class Lane: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var stopping = false
    private let finished = DispatchSemaphore(value: 0)
    private let inline: Bool

    /// - Parameters:
    ///   - name: the thread's name, as `top -H` and `perf` show it (the kernel keeps 15 bytes).
    ///   - inline: run every job immediately on the thread that submits it (for inputs of one batch).
    ///   - nice: how much lower than its creator's the thread's scheduling priority is (Linux's per-thread nice value).
    init(name: String, inline: Bool = false, nice: Int32 = 0) {
        self.inline = inline
        guard !inline else { return }
        let thread = Thread { [self] in
            // Foundation's Thread.name does not reach the kernel on Linux: every lane showed as `oot.default-qos`.
            _ = coffer_name_this_thread(name)
            // glibc's nice() is getpriority and setpriority on PRIO_PROCESS 0, which on Linux is the calling thread.
            if nice > 0 { _ = Glibc.nice(nice) }
            run()
        }
        thread.start()
    }

    func async(_ job: @escaping () -> Void) {
        if inline { return job() }
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Runs the jobs already submitted, then ends the thread.
    func finish() {
        guard !inline else { return }
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        finished.wait()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                finished.signal()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}
