import CofferCrypto
import CofferRegistry
import CofferTestSupport
import Foundation
import HummingbirdTesting
import NIOHTTP1
import Testing

@testable import CofferClient

/// Refusals and failures reach the caller as one ``CofferClientError`` line with the server's status and message.
struct ErrorTests {
    @Test func authenticationFailuresCarryTheirStatusAndTheServersMessage() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let port = try live.livePort
            let unknown = try f.client(port: port, token: "cft_" + String(repeating: "0", count: 64))
            let refused = await #expect(throws: CofferClientError.self) { try await unknown.versions() }
            #expect(refused?.status == 401)
            let line = try #require(refused?.description)
            #expect(line.hasPrefix("http://127.0.0.1:\(port) answered 401: unauthenticated: unknown bearer token "), "\(line)")
            #expect(!line.contains("\n"))
            let malformed = try f.client(port: port, token: "cft_nothex")
            await #expect { try await malformed.version("m/risk:1") } throws: { ($0 as? CofferClientError)?.status == 401 }

            // carol's token is good, her principal may not read m/; bob's read token does not allow publishing.
            let carol = try f.client(port: port, token: "carol-read")
            let forbidden = await #expect(throws: CofferClientError.self) { try await carol.version("m/risk:1") }
            #expect(forbidden?.status == 403 && forbidden?.description.contains("carol lacks the reader role on m") == true)
            let reader = try f.client(port: port, token: "bob-read")
            let scope = await #expect(throws: CofferClientError.self) { try await reader.setAlias("prod", of: "m/risk", to: "1") }
            #expect(scope?.status == 403, "\(String(describing: scope))")
            #expect(scope?.description.contains("scope read, which does not allow the publisher role") == true, "\(String(describing: scope))")
            let admin = await #expect(throws: CofferClientError.self) { try await reader.audit() }
            #expect(admin?.status == 403)
        }
    }

    @Test func aServerErrorIsItsOneLineMessageWithItsStatus() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "admin")
            let missing = await #expect(throws: CofferClientError.self) { try await client.version("m/risk:9") }
            #expect(missing?.status == 404)
            let text = try #require(missing?.description)
            #expect(text.contains("answered 404: ") && text.contains("m/risk:9") && !text.contains("\n"), "\(text)")
            let badFilter = await #expect(throws: CofferClientError.self) { try await client.versions(where: "epsilon<=") }
            #expect(badFilter?.status == 400)
            let noBudget = await #expect(throws: CofferClientError.self) { try await client.budget(dataset: "hf:org/none") }
            #expect(noBudget?.status == 404, "\(String(describing: noBudget))")
            // A budget's models go over the wire both ways; a bad scope is the client's 400.
            let scoped = try await client.setBudget(dataset: "census", epsilon: 4, delta: 1e-5, models: ["m/", "other"])
            #expect(scoped.models == ["m/", "other"])
            let kept = try await client.setBudget(dataset: "census", epsilon: 5, delta: 1e-5)
            #expect(kept.models == ["m/", "other"] && kept.epsilon == 5)
            let badScope = await #expect(throws: CofferClientError.self) {
                try await client.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, models: ["a b"])
            }
            #expect(badScope?.status == 400 && badScope?.description.contains("invalid model scope 'a b'") == true, "\(String(describing: badScope))")
        }
    }

    @Test func aServerThatIsNotThereIsUnreachableInWords() async throws {
        let f = try await Fixture()
        // A port that was just free: nothing listens there.
        let port = try await f.app().test(.live) { live in try live.livePort }
        let client = try f.client(port: port, token: "admin")
        let error = await #expect(throws: CofferClientError.self) { try await client.versions() }
        #expect(error == .unreachable(url: "http://127.0.0.1:\(port)", reason: "connection refused"), "\(String(describing: error))")
        #expect(throws: CofferClientError.invalidInput("a registry must be an http:// or https:// URL, not ftp://127.0.0.1/")) {
            try CofferClient(baseURL: URL(string: "ftp://127.0.0.1/")!, token: Secret(text: "cft_x"), memory: nil)
        }
    }

    /// A kept-alive connection the server closes as a request goes out on it (the server's idle limit ran out as the
    /// client took the connection from its pool): a GET asks again on a new connection, a POST, which may have had its
    /// effect, is not sent twice. The server here is a socket that answers the first request on each connection and
    /// closes it, unanswered, as the second arrives. On a machine so loaded that the client's pool dropped an idle
    /// connection first (4 s), a request goes out on a new one: the test then checks only that nothing was sent twice.
    @Test func aRequestOnAConnectionTheServerClosedIsAskedAgainOnlyWithoutEffects() async throws {
        let listener = try RawListener()
        let memory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-client-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: memory) }
        let client = try CofferClient(
            baseURL: URL(string: "http://127.0.0.1:\(listener.port)")!,
            token: Secret(text: "cft_" + String(repeating: "0", count: 64)),
            memory: ClientMemory(directory: memory)
        )
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        async let served: [String] = offPool {
            var lines: [String] = []
            while let connection = listener.accept(timeout: 120) {
                guard let first = connection.receiveHead(timeout: 60) else { continue }
                if first.hasPrefix("STOP ") { break }
                lines.append(first.components(separatedBy: "\r\n")[0])
                connection.send(ok)
                if let second = connection.receiveHead(timeout: 30) { lines.append(second.components(separatedBy: "\r\n")[0]) }
                connection.hangUp()
            }
            return lines
        }
        _ = try await client.raw(.GET, "v1/a")
        #expect(String(decoding: try await client.raw(.GET, "v1/b").body, as: UTF8.self) == "{}")
        var post: CofferClientError? = nil
        do { _ = try await client.raw(.POST, "v1/c") } catch { post = error }
        let stop = try RawConnection(port: listener.port)
        stop.send("STOP / HTTP/1.1\r\n\r\n")
        let lines = await served
        // Each request once, but GET /v1/b twice when it went out on the kept-alive connection (as it does unless the
        // pool dropped that connection first); a POST sent on a kept-alive connection was closed and reported.
        #expect(lines.first == "GET /v1/a HTTP/1.1" && lines.last == "POST /v1/c HTTP/1.1", "\(lines)")
        #expect(lines.filter { $0 == "POST /v1/c HTTP/1.1" }.count == 1 && (3...4).contains(lines.count), "\(lines)")
        if let post { #expect(post.description.hasSuffix("the server closed the connection"), "\(post)") }
    }
}
