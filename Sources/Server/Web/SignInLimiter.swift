import CofferRegistry
import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Failed web sign-ins, limited per client address and overall (docs/WEB.md, "Sign-in rate limit"), with the
/// registry's ``RateBucket`` arithmetic (the predict limit's).
///
/// An attempt takes a token from its address's bucket and from the overall one before the token typed in is even
/// looked up (a guess over the limit learns nothing), and a sign-in that succeeds gives both back: only failures
/// count, and many attempts at once cannot all pass a check made before any of them failed. The buckets live in this
/// process's memory, as web sessions do: a bucket row per address in the metadata store would be a write, and a row
/// that stays, for every request of anyone without a token (what ``RefusalTally`` exists to avoid).
///
/// ```swift
/// if let wait = state.signInLimiter.take(address: key) { /* 429, Retry-After: wait */ }
/// // ... authenticated: state.signInLimiter.giveBack(address: key)
/// ```
final class SignInLimiter: Sendable {
    struct Limit: Sendable {
        /// Tokens a second.
        var rate: Double
        var burst: Int
    }

    /// One address: 10 failures at once, then one every 30 seconds.
    static let perAddress = Limit(rate: 1.0 / 30, burst: 10)
    /// Every address together: 100 failures at once, then 2 a second (each costs a token lookup and a refusal).
    static let overall = Limit(rate: 2, burst: 100)
    /// Addresses with a bucket at once. Past it, buckets that have refilled are dropped (they are the same as none);
    /// if none has, new addresses share one bucket, and the overall limit still holds.
    static let maximumAddresses = 10_000

    private struct Buckets {
        var byAddress: [String: RateBucket] = [:]
        var overall: RateBucket?
    }

    private let buckets = Mutex(Buckets())
    let perAddress: Limit
    let overall: Limit

    init(perAddress: Limit = SignInLimiter.perAddress, overall: Limit = SignInLimiter.overall) {
        self.perAddress = perAddress
        self.overall = overall
    }

    /// Takes a token for one sign-in attempt from `address` (``key(for:)``).
    ///
    /// - Returns: nil when the attempt may go on, else the seconds until the next one may (nothing was taken).
    func take(address: String, now: Date = Date()) -> Double? {
        let now = now.timeIntervalSince1970
        return buckets.withLock { buckets in
            let key = self.slot(address, in: &buckets, now: now)
            let own = buckets.byAddress[key] ?? RateBucket(tokens: Double(perAddress.burst), updatedAt: now)
            let all = buckets.overall ?? RateBucket(tokens: Double(overall.burst), updatedAt: now)
            let (ownAfter, ownWait) = own.taking(rate: perAddress.rate, burst: perAddress.burst, now: now)
            let (allAfter, allWait) = all.taking(rate: overall.rate, burst: overall.burst, now: now)
            if ownWait != nil || allWait != nil { return max(ownWait ?? 0, allWait ?? 0) }
            buckets.byAddress[key] = ownAfter
            buckets.overall = allAfter
            return nil
        }
    }

    /// Gives back the token a sign-in that succeeded took: a success is not a failure.
    func giveBack(address: String) {
        buckets.withLock { buckets in
            let key = buckets.byAddress[address] == nil ? Self.overflow : address
            buckets.byAddress[key] = buckets.byAddress[key]?.returning(burst: perAddress.burst)
            buckets.overall = buckets.overall?.returning(burst: overall.burst)
        }
    }

    /// The bucket key of `address`, made room for if it has none.
    private func slot(_ address: String, in buckets: inout Buckets, now: Double) -> String {
        if buckets.byAddress[address] != nil || buckets.byAddress.count < Self.maximumAddresses { return address }
        buckets.byAddress = buckets.byAddress.filter { !$0.value.isFull(rate: perAddress.rate, burst: perAddress.burst, now: now) }
        return buckets.byAddress.count < Self.maximumAddresses ? address : Self.overflow
    }

    private static let overflow = "(addresses past the limit)"

    /// The bucket key of a client: its IPv4 address, or the /64 an IPv6 address is in (one host holds a whole /64),
    /// or one key for a connection without an address (a Unix socket, a test's channel).
    static func key(for address: SocketAddress?) -> String {
        guard let address, let text = address.ipAddress else { return "-" }
        // An IPv4 client of a dual-stack socket (::ffff:a.b.c.d) is its IPv4 address, not the /64 all of them share.
        guard case .v6 = address, !text.contains(".") else { return text }
        // 16 bytes rather than an in6_addr, whose initializer a release build does not see (it comes from CNIOLinux).
        var bytes = [UInt8](repeating: 0, count: 16)
        guard inet_pton(AF_INET6, text, &bytes) == 1 else { return text }
        return bytes.prefix(8).map { String(format: "%02x", $0) }.joined() + "::/64"
    }
}
