import CofferCrypto
import Synchronization

/// Results of a pure function (no clock, no database: the same inputs give the same answer), kept for the exact bytes
/// they were computed from, under a SHA-256 over every input, each prefixed with its length.
///
/// A server that shows one version again and again need not decode its statement and check its signatures each time:
/// ``Registry/verifySigned(envelope:bundle:trusting:model:version:digest:)`` and the parse of a version's ledger record
/// were together a third of the CPU of a `GET /v1/version`. Only successes are kept: a failure is computed again, and
/// says why, every time. Past `capacity` entries, or past `byteLimit` bytes of inputs (a value keeps about as many
/// bytes as it was computed from: a parsed record its envelope and payload), the memo starts again empty, so that
/// whoever can write large rows into the database cannot make it hold more.
final class DigestMemo<Value: Sendable>: Sendable {
    private let entries = Mutex<(values: [[UInt8]: Value], bytes: Int)>(([:], 0))
    private let capacity: Int
    private let byteLimit: Int

    init(capacity: Int, byteLimit: Int) {
        self.capacity = capacity
        self.byteLimit = byteLimit
    }

    /// The inputs' key: SHA-256 over each part, length-prefixed (so that parts cannot run into one another).
    static func key(_ parts: [[UInt8]]) -> [UInt8] {
        var hasher = StreamingSHA256()
        for part in parts {
            withUnsafeBytes(of: UInt64(part.count).bigEndian) { hasher.update($0) }
            part.withUnsafeBytes { hasher.update($0) }
        }
        return hasher.finalize()
    }

    func value<E: Error>(for parts: [[UInt8]], computing compute: () throws(E) -> Value) throws(E) -> Value {
        let key = Self.key(parts)
        if let known = entries.withLock({ $0.values[key] }) { return known }
        let value = try compute()
        let bytes = parts.reduce(0) { $0 + $1.count }
        guard bytes <= byteLimit else { return value }
        entries.withLock { entries in
            if entries.values.count >= capacity || entries.bytes + bytes > byteLimit {
                entries.values.removeAll(keepingCapacity: true)
                entries.bytes = 0
            }
            entries.values[key] = value
            entries.bytes += bytes
        }
        return value
    }
}
