import CofferCrypto
import CofferRegistry
import Foundation
import Synchronization

/// Refused authentications, counted in memory and written to the audit log as one entry per reason and interval.
///
/// Writing one synchronous audit row per unauthenticated request let anyone without a token fill the disk and hold
/// the registry's write lock; the log still shows every refusal, as a count with the first and last time.
final class RefusalTally: Sendable {
    struct Key: Hashable {
        var principal: String
        var action: String
        var reason: String
    }

    struct Count {
        var count: Int
        var first: Date
        var last: Date
    }

    /// Distinct reasons kept between flushes; beyond it, refusals are counted under one overflow reason.
    static let limit = 1000
    private let counts = Mutex<[Key: Count]>([:])

    func add(principal: String, action: String, reason: String, now: Date = Date()) {
        counts.withLock { counts in
            var key = Key(principal: principal, action: action, reason: reason)
            if counts[key] == nil, counts.count >= Self.limit { key = Key(principal: "-", action: action, reason: "other refusals") }
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
                try await registry.recordRefusal(action: key.action, target: "-", reason: reason, principal: key.principal)
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
