import CofferCrypto
import CofferRegistry
import CofferTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import CofferServer

#if canImport(Glibc)
import Glibc
#endif

/// The defences against clients that hold connections open (``ClientLimits``), against a real server on loopback.
extension ServerTests {
    @Test func aTrickledBodyIsCutAndASteadyOneIsNot() async throws {
        let w = try await world()
        let publisher = w.tokens["bob-publish"]!
        let limits = ClientLimits(timeout: .seconds(1), minimumRate: 1000)
        try await app(w, configuration: .init(port: 0, clientLimits: limits)).test(.live) { client in
            let port = try #require(client.port)
            // Every request on a connection of its own: with a one-second limit, a connection kept alive between two
            // requests is cut whenever the test runner pauses for a second (CI saw it on a loaded machine).
            var ids: [String] = []
            for _ in 0..<2 {
                let creating = try RawConnection(port: port)
                let answer = await offPool {
                    creating.send(
                        "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(publisher)\r\nContent-Length: 0\r\n"
                            + "Connection: close\r\n\r\n"
                    )
                    return creating.receiveAll(timeout: 30)
                }
                #expect(answer.hasPrefix("HTTP/1.1 201"), "\(answer)")
                let body = answer.components(separatedBy: "\r\n\r\n").dropFirst().joined()
                ids.append((try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["id"] as? String ?? "")
            }
            func head(_ id: String) -> String {
                "PATCH /v1/uploads/\(id) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(publisher)\r\nUpload-Offset: 0\r\n"
                    + "Content-Type: application/octet-stream\r\nContent-Length: LENGTH\r\nConnection: close\r\n\r\n"
            }
            // 10 bytes every 0.3 s: 33 bytes a second against 1,000 required past the first second.
            let slow = try await RawConnection.trickle(port: port, head: head(ids[0]), length: 100_000, chunk: 10, interval: 0.3, budget: 15)
            #expect(slow.cut, "the trickle was answered: \(slow.answer)")
            #expect(slow.seconds < 6 && slow.sent < 1_000, "cut after \(slow.seconds) s and \(slow.sent) bytes")
            // The cut is the client's failure: a 400 in the metrics, not a 500 (asked on connections of their own: the test
            // client's, idle meanwhile, was closed after a second). The client sees the close before the handler's error
            // reaches the metrics (CI saw the first ask miss it on a loaded machine), so ask until it is there.
            var metrics = ""
            for _ in 0..<50 where !metrics.contains(#"route="/v1/uploads/:id""#) {
                if !metrics.isEmpty { try await Task.sleep(for: .milliseconds(200)) }
                let asking = try RawConnection(port: port)
                metrics = await offPool {
                    asking.send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return asking.receiveAll(timeout: 10)
                }
            }
            #expect(metrics.contains(#"route="/v1/uploads/:id",status="400"} 1"#) && !metrics.contains("status=\"500\""), "\(metrics)")
            // 1,000 bytes every 0.25 s for 3 s: past the first second, but at 4,000 bytes a second.
            let steady = try await RawConnection.trickle(port: port, head: head(ids[1]), length: 12_000, chunk: 1_000, interval: 0.25, budget: 30)
            #expect(!steady.cut && steady.sent == 12_000 && steady.seconds > 2, "\(steady)")
            #expect(steady.answer.hasPrefix("HTTP/1.1 200"), "\(steady.answer)")
        }
    }

    /// The body's clock stops while the server does not read: a handler that takes its time before reading a large
    /// body (backpressure stops the reads) does not get its client cut.
    @Test func aServerSlowToReadDoesNotCutItsClient() async throws {
        let router = Router()
        router.post("/slow") { request, _ -> String in
            try await Task.sleep(for: .seconds(3))
            var count = 0
            for try await part in request.body { count += part.readableBytes }
            return "\(count)"
        }
        let limits = ClientLimits(timeout: .seconds(1), minimumRate: 1 << 20)
        let application = Application(
            router: router,
            server: try httpServer(tls: nil, limits: limits),
            configuration: .init(address: .hostname("127.0.0.1", port: 0))
        )
        try await application.test(.live) { client in
            let port = try #require(client.port)
            let length = 64 << 20
            let sent = try await RawConnection.trickle(
                port: port,
                head: "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: LENGTH\r\nConnection: close\r\n\r\n",
                length: length,
                chunk: 1 << 20,
                interval: 0,
                budget: 60
            )
            #expect(sent.answer.hasPrefix("HTTP/1.1 200") && sent.answer.hasSuffix("\(length)"), "\(sent)")
        }
    }

    /// Past `maximumConnections` the server stops accepting: a new connection waits, unanswered, until one closes.
    /// The application runs as `coffer serve` runs it: HummingbirdTesting's `TestApplication` rebuilds the
    /// configuration with `with(address:)`, which drops the cap (Hummingbird 2.28).
    @Test func connectionsPastTheCapWaitForOneToClose() async throws {
        let w = try await world()
        let (ports, listening) = AsyncStream.makeStream(of: Int.self)
        let application = try await buildApplication(
            registry: w.fixture.registry,
            registryIdentity: w.fixture.registryIdentity,
            configuration: .init(port: 0, clientLimits: ClientLimits(timeout: .seconds(30), maximumConnections: 2)),
            onListening: { listening.yield($0) }
        )
        let running = Task { try await application.runService(gracefulShutdownSignals: []) }
        defer { running.cancel() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        let first = try RawConnection(port: port)
        let second = try RawConnection(port: port)
        // Each served connection answers, so both are accepted before the third comes.
        for connection in [first, second] {
            let answer = await offPool {
                connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                return connection.receive(timeout: 10)
            }
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "\(answer ?? "no answer")")
        }
        let third = try RawConnection(port: port)
        let waiting = await offPool {
            third.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return third.receive(timeout: 1.5)
        }
        #expect(waiting == nil, "a third connection was served past the cap of two: \(waiting ?? "")")
        let answered = await offPool { () -> String? in
            first.hangUp()
            return third.receive(timeout: 10)
        }
        #expect(answered?.hasPrefix("HTTP/1.1 200") == true, "the third connection once the first closed: \(answered ?? "no answer")")
        withExtendedLifetime(second) {}
        running.cancel()
        _ = await running.result
    }
}
