import Hummingbird
import NIOCore
import NIOHTTPTypes

/// Answers `Expect: 100-continue` (RFC 9110 §10.1.1) with an interim `100 Continue` when a route first reads the
/// request's body. curl sends the header with every body over 1 MiB and then waits a second for the interim answer
/// before sending the body: a 2 MB `PATCH /v1/uploads/ID` took 1.02 s against 0.016 s without the header. A request
/// refused before its body is read (401, 403, 409, 413) gets its final answer alone, and the client need not send the
/// body at all.
struct ContinueMiddleware: RouterMiddleware {
    typealias Context = CofferRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.headers.expectsContinue else { return try await next(request, context) }
        var request = request
        request.body = RequestBody(asyncSequence: ContinuingBody(body: request.body, channel: context.channel))
        return try await next(request, context)
    }
}

extension HTTPFields {
    /// Whether the client waits for an interim `100 Continue` before sending its body. The middleware that writes the
    /// 100 and ``ClientDeadlineHandler``, which starts the body's clock once the client has it, must agree on this.
    var expectsContinue: Bool { self[.expect]?.lowercased() == "100-continue" }
}

/// A request body that writes `100 Continue` to the connection before its first read.
private struct ContinuingBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let body: RequestBody
    let channel: any Channel

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: RequestBody.AsyncIterator
        /// The connection until the interim answer is written, then nil.
        var channel: (any Channel)?

        mutating func next() async throws -> ByteBuffer? {
            if let channel {
                self.channel = nil
                try await channel.writeAndFlush(HTTPResponsePart.head(HTTPResponse(status: .continue))).get()
            }
            return try await base.next()
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: body.makeAsyncIterator(), channel: channel) }
}
