import CofferTestSupport
import Foundation
import Testing

/// `coffer serve`'s address checks through the built binary (issue 15, finding 17: `localhost` was accepted while
/// `[::1]` was refused).
@Suite(.ownThread)
struct ServeCommandTests {
    @Test func loopbackAddressesAreAcceptedInEveryFormAndOthersNeedTLS() throws {
        let dir = try Scratch()
        #expect(try CofferProcess.run(["init", "--home", dir.path("home")], in: dir.url).status == 0)
        for (listen, fragment) in [
            ("10.1.2.3:8443", "plain HTTP on 10.1.2.3 would expose tokens"), ("::1:8443", "write an IPv6 address in brackets, [::1]:8443"),
            ("[::1]", "--listen takes HOST:PORT or [IPV6]:PORT"), ("127.0.0.1:0", "--listen takes HOST:PORT"),
        ] {
            expectFailure(try CofferProcess.run(["serve", "--home", dir.path("home"), "--listen", listen], in: dir.url), fragment)
        }
        for listen in ["[::1]:\(Int.random(in: 20_000...40_000))", "localhost:\(Int.random(in: 40_001...60_000))"] {
            let server = try BackgroundCoffer(
                ["serve", "--home", dir.path("home"), "--listen", listen],
                in: dir.url,
                environment: CofferProcess.environment(in: dir.url)
            )
            // The line saying where it serves comes once the registry key is unlocked.
            let served = server.waitForStderr(containing: "serving", seconds: 20)
            let said = server.terminate().stderr
            #expect(served && said.contains("coffer: serving"), "\(listen): \(said)")
        }
    }
}
