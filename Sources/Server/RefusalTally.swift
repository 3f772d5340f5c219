import CofferCrypto
import CofferRegistry
import Foundation
import Synchronization

/// Refusals, counted in memory and written to the audit log as one entry per principal, action, target and reason
/// and interval: refused authentications, and every refusal of the registry's own checks (``Registry/countRefusals(with:)``).
///
/// Writing one synchronous audit row per refused request let anyone without a token fill the disk and hold the
/// registry's write lock, and any token holder do the same with requests its principal may not make; the log still
/// shows every refusal, as a count with the first and last time.
final class RefusalTally: Sendable {
    typealias Key = RefusalKey

    struct Count {
        var count: Int
        var first: Date
        var last: Date
    }

    /// Distinct reasons kept between flushes; beyond it, refusals are counted under one overflow reason.
    static let limit = 1000
    private let counts = Mutex<[Key: Count]>([:])

    func add(principal: String, action: String, reason: String, now: Date = Date()) {
        add(Key(principal: principal, action: action, reason: reason), now: now)
    }

    func add(_ refusal: Key, now: Date = Date()) {
        counts.withLock { counts in
            var key = refusal
            if counts[key] == nil, counts.count >= Self.limit { key = Key(principal: "-", action: key.action, reason: "other refusals") }
            counts[key, default: Count(count: 0, first: now, last: now)].count += 1
            counts[key]!.last = now
        }
    }

    /// Writes one audit entry per reason counted since the last flush. A count the log did not take (a write refused,
    /// e.g. in a cancelled task) goes back into the tally for the next flush rather than being lost.
    func flush(to registry: Registry) async {
        let taken = counts.withLock { counts in
            defer { counts.removeAll() }
            return counts
        }
        for (key, count) in taken.sorted(by: { $0.value.first < $1.value.first }) {
            let reason =
                count.count == 1
                ? key.reason : "\(key.reason) (\(count.count) requests, \(Timestamp.string(count.first)) to \(Timestamp.string(count.last)))"
            do {
                try await registry.recordRefusal(action: key.action, target: key.target, reason: reason, principal: key.principal)
            } catch {
                putBack(key, count)
            }
        }
    }

    private func putBack(_ key: Key, _ count: Count) {
        counts.withLock { counts in
            guard let newer = counts[key] else {
                counts[key] = count
                return
            }
            counts[key] = Count(count: newer.count + count.count, first: min(newer.first, count.first), last: max(newer.last, count.last))
        }
    }
}
