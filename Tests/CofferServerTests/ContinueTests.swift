import CofferTestSupport
import Foundation
import Testing

@testable import CofferServer

/// `Expect: 100-continue`, as curl sends it with a body over 1 MiB, against a real server on loopback.
extension ServerTests {
    /// The interim answer comes when the route reads the body, before the client sent a byte of it; the final answer
    /// after it. Without it, curl waits a second per upload.
    @Test func anExpectedBodyIsAskedForWithAnInterimContinue() async throws {
        let w = try await world()
        let token = w.tokens["bob-publish"]!
        try await serving(w, limits: ClientLimits()) { port in
            let started = try RawConnection(port: port)
            started.send("POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Length: 0\r\n\r\n")
            let created = try #require(await offPool { started.receive(timeout: 5) })
            let id = try #require(created.firstMatch(of: /"id":"([0-9a-f]{32})"/)?.1, "\(created)")

            let body = String(repeating: "b", count: 4096)
            let upload = try RawConnection(port: port)
            upload.send(
                "PATCH /v1/uploads/\(id) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nUpload-Offset: 0\r\n"
                    + "Content-Type: application/octet-stream\r\nContent-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\n\r\n"
            )
            let interim = await offPool { upload.receive(timeout: 5) }
            #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n", "\(interim ?? "nothing within 5 s")")
            upload.send(body)
            let final = await offPool { upload.receive(timeout: 5) } ?? ""
            #expect(final.hasPrefix("HTTP/1.1 200 ") && final.contains(#""offset":4096"#), "\(final)")
        }
    }

    /// A request refused before its body is read gets its final answer alone: the client need not send the body.
    @Test func aRefusedRequestIsNotAskedForItsBody() async throws {
        let w = try await world()
        try await serving(w, limits: ClientLimits()) { port in
            let upload = try RawConnection(port: port)
            upload.send(
                "PATCH /v1/uploads/\(String(repeating: "0", count: 32)) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer cft_not-a-token\r\n"
                    + "Upload-Offset: 0\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n"
            )
            let answer = await offPool { upload.receive(timeout: 5) } ?? ""
            #expect(answer.hasPrefix("HTTP/1.1 401 "), "\(answer)")
            #expect(!answer.contains("100 Continue"), "\(answer)")
        }
    }
}
