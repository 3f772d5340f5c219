/// A token bucket: it refills at `rate` tokens a second up to `burst`, and each request takes one token.
///
/// The server's one rate-limiting arithmetic. An inference session's predict limit keeps its bucket as a row of the
/// metadata store (`session_rates`), so replicas share it; the web sign-in limit keeps its buckets in the server's
/// memory, as it keeps web sessions (docs/WEB.md, "Sign-in rate limit").
///
/// ```swift
/// var bucket = RateBucket(tokens: 20, updatedAt: now)
/// let (after, wait) = bucket.taking(rate: 10, burst: 20, now: now)   // wait is nil: a token was taken
/// ```
public struct RateBucket: Sendable, Equatable {
    /// Tokens left at `updatedAt`.
    public var tokens: Double
    /// Seconds since 1970.
    public var updatedAt: Double

    public init(tokens: Double, updatedAt: Double) {
        self.tokens = tokens
        self.updatedAt = updatedAt
    }

    /// The bucket after taking one token at `now`, and nil when one was taken or the seconds until one is available.
    public func taking(rate: Double, burst: Int, now: Double) -> (RateBucket, Double?) {
        // The bucket's time never goes back: a replica whose clock is behind another's must not be credited the same
        // seconds again (with a 3 s skew, alternating replicas let 100 of 100 requests through a 10/s limit).
        let at = max(updatedAt, now)
        let refilled = min(Double(burst), tokens + max(0, now - updatedAt) * rate)
        guard refilled >= 1 else { return (RateBucket(tokens: refilled, updatedAt: at), (1 - refilled) / rate) }
        return (RateBucket(tokens: refilled - 1, updatedAt: at), nil)
    }

    /// The bucket with one token given back (a request that took one and turned out not to count), up to `burst`.
    public func returning(burst: Int) -> RateBucket { RateBucket(tokens: min(Double(burst), tokens + 1), updatedAt: updatedAt) }

    /// Whether the bucket has refilled to `burst` by `now`: then it is the same as no bucket at all.
    public func isFull(rate: Double, burst: Int, now: Double) -> Bool { tokens + max(0, now - updatedAt) * rate >= Double(burst) }
}
