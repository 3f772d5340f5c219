import Foundation

/// Runs blocking work (hashing, sealing, decrypting, a synchronous database call) on a thread of its own and awaits
/// it, so that Swift's cooperative pool, which has one thread per core, never waits on it.
///
/// A thread per call rather than a pool: the work is megabytes to gigabytes long, so starting a thread (~20 µs) is
/// noise, and sixteen concurrent pulls must not queue behind two pool threads on a two-core machine.
public enum Offload {
    public static func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let pending = Pending(work)
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            Thread {
                let result = Result { () throws(E) -> T in try pending.work!() }
                // What the work captured is released before the caller resumes, not when the thread ends: a temporary
                // file it held (deleted when released) outlived a failed push that exited at once (CI under load).
                pending.work = nil
                continuation.resume(returning: result)
            }.start()
        }
        return try result.get()
    }

    /// The work, owned by its thread until it has run.
    private final class Pending<T, E: Error>: @unchecked Sendable {
        var work: (@Sendable () throws(E) -> T)?
        init(_ work: @escaping @Sendable () throws(E) -> T) { self.work = work }
    }
}
