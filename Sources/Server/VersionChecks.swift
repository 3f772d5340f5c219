import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// Server-side checks of every blob of a version, in this process's memory: the last check of each version (when, by
/// whom, the result, for the version page: docs/WEB.md, "The version page's blob check") and, per principal, a token
/// bucket that limits them. Each check reads and hashes every sealed blob of the version and appends a `verify` audit
/// entry, so `GET /v1/verify` and the page's "check now" share the bucket: without it one reader could keep the
/// server hashing (helper-46).
final class VersionChecks: Sendable {
    struct Check: Sendable, Equatable {
        var at: String
        var by: String
        /// The verifier's exact message; nil when every blob matched.
        var failure: String?
    }

    /// Versions whose last check is kept; the oldest check goes first past this.
    static let capacity = 10_000
    /// A principal may check `burst` times at once, then once every `interval`.
    let burst: Double
    let interval: TimeInterval

    private struct State {
        var checks: [String: (check: Check, when: Date)] = [:]
        var buckets: [String: (tokens: Double, at: Date)] = [:]
    }

    private let state = Mutex(State())

    init(burst: Int = 3, interval: TimeInterval = 20) {
        self.burst = Double(burst)
        self.interval = interval
    }

    /// The last check of `version` (`model:version`) this server ran, if any.
    func last(_ version: String) -> Check? {
        state.withLock { $0.checks[version]?.check }
    }

    func record(_ check: Check, of version: String, now: Date = Date()) {
        state.withLock { state in
            state.checks[version] = (check, now)
            if state.checks.count > Self.capacity, let oldest = state.checks.min(by: { $0.value.when < $1.value.when })?.key {
                state.checks.removeValue(forKey: oldest)
            }
        }
    }

    /// Takes one check from `principal`'s bucket: nil when taken, else a 429 saying when to check again (with
    /// `Retry-After`).
    func admit(_ principal: String, now: Date = Date()) -> HTTPError? {
        guard let wait = take(principal: principal, now: now) else { return nil }
        let seconds = Int(wait.rounded(.up))
        return HTTPError(
            .tooManyRequests,
            headers: [.retryAfter: "\(seconds)"],
            message: "\(principal) checked versions \(Int(burst)) times recently: check again in \(seconds) s"
        )
    }

    /// Takes one check from `principal`'s bucket: nil when taken, else the seconds until the next one is allowed.
    func take(principal: String, now: Date = Date()) -> TimeInterval? {
        state.withLock { state in
            let (tokens, at) = state.buckets[principal] ?? (burst, now)
            let refilled = min(burst, tokens + max(0, now.timeIntervalSince(at)) / interval)
            guard refilled >= 1 else {
                state.buckets[principal] = (refilled, now)
                return (1 - refilled) * interval
            }
            state.buckets[principal] = (refilled - 1, now)
            return nil
        }
    }
}
