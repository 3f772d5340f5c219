import Foundation
import HTTPTypes
import Hummingbird
import Testing

@testable import CofferServer

/// The per-principal bucket that limits blob checks (the web page's "check now" and `GET /v1/verify`), on a clock the
/// test sets: WebTests drives the same limit through the server, where a loaded machine's pace can earn a token.
struct VersionChecksTests {
    @Test func aPrincipalChecksItsBurstThenOnceEachInterval() throws {
        let checks = VersionChecks(burst: 3, interval: 20)
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        for second in 0..<3 { #expect(checks.take(principal: "bob", now: start + Double(second)) == nil) }
        let wait = try #require(checks.take(principal: "bob", now: start + 3))
        #expect(abs(wait - 17) < 1e-9, "three tokens spent over 3 s: 17 s until the next")
        #expect(checks.take(principal: "alice", now: start + 3) == nil, "each principal has a bucket of its own")
        #expect(checks.take(principal: "bob", now: start + 19.5) != nil)
        #expect(checks.take(principal: "bob", now: start + 20.5) == nil)
        // 0.025 of a token left at 20.5 s; at 30.5 s, 0.525: 9.5 s to wait, said as 10.
        let refused = try #require(checks.admit("bob", now: start + 30.5))
        #expect(refused.status == .tooManyRequests && refused.headers[.retryAfter] == "10")
        #expect(refused.body == "bob checked versions 3 times recently: check again in 10 s")
        // A long pause refills the bucket to its burst, no further.
        for offset in [1000.0, 1001, 1002] { #expect(checks.take(principal: "bob", now: start + offset) == nil) }
        #expect(checks.take(principal: "bob", now: start + 1003) != nil)
    }
}
