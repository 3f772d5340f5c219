import CofferCrypto
import Foundation
import GRDB

extension Registry {
    /// For a process about to fork commands (`coffer runner`): what commands do first on made-up values, so that the
    /// forks find the Swift runtime's type and conformance lookups done (each a scan of ~12,800 conformance records).
    /// Beside the ledger's start (``ClientMemory/warmUp()``): GRDB's placeholders for a statement's values, and the
    /// Unicode normalization of a pushed file's path (through `NSString`). In 12 pushes through a runner, `perf` put
    /// 2.5 ms of each in such lookups, 0.8 ms of it in these two.
    ///
    /// OpenSSL's ChaCha20-Poly1305 for chunks is loaded too (2.6-3 ms), so that a fork seals and opens with it from its
    /// first chunk, whatever the file's size.
    ///
    /// It touches no file but that library, no environment and no key but its own, and starts no thread: a fork must
    /// come from a process with one. (Opening and closing an in-memory SQLite connection would have warmed 0.7 ms more,
    /// what closing one costs, but GRDB starts a thread for it, and the runner then declines to fork.) Returns whether
    /// every step worked.
    @discardableResult
    public static func warmUpForForks() -> Bool {
        loadFasterChunkCipher()
        let ledger = ClientMemory.warmUp()
        let placeholders = databaseQuestionMarks(count: 2) == "?,?"
        // A push's directory name (``modelDirectoryName(_:)``): a relative file URL made absolute ran a generic
        // requirement check the cache did not hold, a scan of all conformance records in every fork.
        let directory = URL(fileURLWithPath: "model/weights.bin").standardizedFileURL.lastPathComponent == "weights.bin"
        // Closing the registry: GRDB's DatabaseQueue deinit calls NotificationCenter's removeObserver(self), whose cast
        // asks whether the object is a boxed Swift value, two scans in every fork (Foundation's box type, once a process,
        // then the answer for DatabaseQueue). A queue cannot be made here (GRDB starts a thread), its type can.
        NotificationCenter.default.removeObserver(NotAnObserver())
        let queueIsNoBox = !(DatabaseQueue.self is any _NSSwiftValue.Type)
        return "model/weights.bin".precomposedStringWithCanonicalMapping == "model/weights.bin" && placeholders && ledger
            && directory && queueIsNoBox
    }

    private final class NotAnObserver {}
}
