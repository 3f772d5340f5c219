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
            ("[::1]", "--listen takes HOST:PORT or [IPV6]:PORT"), ("127.0.0.1:65536", "--listen takes HOST:PORT"),
        ] {
            expectFailure(try CofferProcess.run(["serve", "--home", dir.path("home"), "--listen", listen], in: dir.url), fragment)
        }
        expectFailure(
            try CofferProcess.run(["serve", "--home", dir.path("home"), "--max-sessions-per-principal", "0"], in: dir.url),
            "--predict-rate must be positive, --predict-burst, --max-predict-rows and --max-sessions-per-principal at least 1"
        )
        for limit in [["--max-connections", "0"], ["--client-timeout", "nan"], ["--client-timeout", "0"], ["--client-min-rate", "0"]] {
            expectFailure(
                try CofferProcess.run(["serve", "--home", dir.path("home")] + limit, in: dir.url),
                "--max-connections and --client-min-rate must be at least 1, --client-timeout over 0 and at most 86400 seconds"
            )
        }
        expectFailure(
            try CofferProcess.run(["serve", "--home", dir.path("home"), "--trusted-proxy", "proxy.example"], in: dir.url),
            "--trusted-proxy takes an IP address, got 'proxy.example'"
        )
        // `localhost` is served (and printed) as 127.0.0.1: the name also means ::1, where another process could hold
        // the same port.
        for (listen, host) in [("[::1]:0", "[::1]"), ("localhost:0", "127.0.0.1")] {
            let server = try BackgroundCoffer(
                ["serve", "--home", dir.path("home"), "--listen", listen],
                in: dir.url,
                environment: CofferProcess.environment(in: dir.url)
            )
            // The line saying where it serves comes once the registry key is unlocked and the socket is bound.
            let url = server.waitForListeningURL("coffer: serving", seconds: 20)
            let port = url.flatMap { URLComponents(string: $0)?.port } ?? 0
            #expect(url?.hasPrefix("http://\(host):") == true && port > 0, "\(listen): \(server.stderrSoFar)")
            // Port 0 asked the system for a free port: the one printed is the one that takes connections.
            let asked = try CofferProcess.run(["show", "no/such:1", "--registry", url ?? "http://\(host):1", "--token", "cft_x"], in: dir.url)
            #expect(asked.stderr.contains("answered 401: unauthenticated: malformed bearer token"), "\(listen): \(asked.stderr)")
            let said = server.terminate().stderr
            #expect(said.contains("coffer: serving"), "\(listen): \(said)")
        }
    }
}
