import Foundation

/// Runs blocking work (hashing, sealing, decrypting, a synchronous database call) on a thread of its own and awaits
/// it, so that Swift's cooperative pool, which has one thread per core, never waits on it.
///
/// A thread per call rather than a pool: the work is megabytes to gigabytes long, so starting a thread (~20 µs) is
/// noise, and sixteen concurrent pulls must not queue behind two pool threads on a two-core machine.
public enum Offload {
    public static func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            Thread {
                continuation.resume(returning: Result { () throws(E) -> T in try work() })
            }.start()
        }
        return try result.get()
    }
}
