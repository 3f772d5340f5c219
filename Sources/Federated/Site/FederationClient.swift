import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// What the coordinator answered: status, its signature header, body.
struct HTTPAnswer: Sendable {
    var status: Int
    var signature: String?
    var body: [UInt8]
}

/// A minimal HTTP/1.1 client over SwiftNIO for a site: one connection per request (a site sends a handful per stage),
/// a deadline on each.
struct FederationClient: Sendable {
    let host: String
    let port: Int

    /// - Parameter url: `http://HOST:PORT` of `coffer fl serve`.
    init(url: String) throws(FederatedError) {
        guard let components = URLComponents(string: url), components.scheme == "http", let host = components.host, !host.isEmpty else {
            throw .invalidParameter("the coordinator URL must be http://HOST:PORT, got \(url)")
        }
        self.host = host
        self.port = components.port ?? 80
    }

    /// POSTs a signed message to `path`.
    func post(_ path: String, _ signed: SignedMessage, timeout: Duration) async throws(FederatedError) -> HTTPAnswer {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: HTTPAnswer.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            promise.fail(error)
            throw .transport("http://\(host):\(port): \(Self.describe(error))")
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: SignedMessage.header, value: signed.headerValue)
        head.headers.add(name: "Content-Length", value: "\(signed.payload.count)")
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: signed.payload))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let deadline = channel.eventLoop.scheduleTask(
            in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        ) { promise.fail(FederatedError.timeout("no answer from http://\(host):\(port)\(path)")) }
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        do {
            return try await promise.futureResult.get()
        } catch let error as FederatedError {
            throw error
        } catch {
            throw .transport("http://\(host):\(port): \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first { return describe(first.error) }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        return "\(error)"
    }
}

/// Collects one response and fulfils the promise at its end (or fails it if the connection closes first).
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<HTTPAnswer>
    private var answer = HTTPAnswer(status: 0, signature: nil, body: [])
    private var done = false

    init(promise: EventLoopPromise<HTTPAnswer>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            answer.status = Int(head.status.code)
            answer.signature = head.headers.first(name: SignedMessage.header)
        case .body(var buffer):
            answer.body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            done = true
            promise.succeed(answer)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done { promise.fail(error) }
        done = true
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { promise.fail(FederatedError.transport("the coordinator closed the connection")) }
        done = true
    }
}
