import CofferCrypto
import Testing

struct LoopbackTests {
    /// Plain connections are allowed to these hosts alone. A name that merely looks like a loopback address (a DNS name
    /// starting with 127., or a part with a sign or a leading zero, which getaddrinfo hands to DNS) is resolved anywhere,
    /// so it gets TLS like any other host.
    @Test func onlyAddressesThatStayOnTheMachineAreLoopback() {
        for host in ["127.0.0.1", "127.1.2.3", "127.255.255.255", "localhost", "::1", "[::1]", "0:0:0:0:0:0:0:1"] {
            #expect(isLoopback(host: host), "\(host)")
        }
        for host in [
            "127.example.com", "127.0.0.1.nip.io", "127.0.0", "127.0.0.256", "1270.0.0.1", "10.1.2.3", "0.0.0.0", "::", "[fd00::1]", "",
            "localhost.example.com", "128.0.0.1",
        ] {
            #expect(!isLoopback(host: host), "\(host)")
        }
    }
}
