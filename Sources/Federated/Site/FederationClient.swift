import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
public import NIOSSL

/// What the coordinator answered: status, its signature header, body.
struct HTTPAnswer: Sendable {
    var status: Int
    var signature: String?
    var body: [UInt8]
}

/// A minimal HTTP/1.1 client over SwiftNIO for a site: one connection per request (a site sends a handful per stage),
/// a deadline on each; over TLS (swift-nio-ssl) for an https coordinator, with the certificate checked against the
/// trusted roots and the URL's host.
public struct FederationClient: Sendable {
    let host: String
    let port: Int
    /// `http` or `https`.
    let scheme: String
    /// With https: the TLS context, and the name sent for SNI and checked against the certificate (`nil` for an IP
    /// address, which the certificate's IP addresses are checked against instead).
    let tls: NIOSSLContext?
    let serverHostname: String?
    /// The largest answer read; a longer one fails the exchange as it arrives, before anything buffers it (a hostile
    /// coordinator, or a man in the middle of plain HTTP, streamed gigabytes into a site: helper-47). A site sets it
    /// from its recipe (``maximumAnswer(parameters:)``).
    public var maximumAnswer = 256 << 20

    /// - Parameters:
    ///   - url: `http://HOST:PORT` or `https://HOST:PORT` of `coffer fl serve`.
    ///   - tls: with https, the configuration to use (e.g. a CA to trust); by default the system's roots.
    ///   - plainHTTPOffLoopback: whether `http` to a host beyond loopback is allowed; refused by default, as `fl serve`
    ///     refuses to listen so: the global model sent to the site every round would cross the network readable.
    public init(url: String, tls configuration: TLSConfiguration? = nil, plainHTTPOffLoopback: Bool = false) throws(FederatedError) {
        guard let components = URLComponents(string: url), components.scheme == "http" || components.scheme == "https",
            let host = components.host, !host.isEmpty
        else {
            throw .invalidParameter("the coordinator URL must be http://HOST:PORT or https://HOST:PORT, got \(url)")
        }
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if components.scheme == "http", !plainHTTPOffLoopback, !isLoopback(host: bare) {
            throw .plainHTTPOffLoopback(host: host)
        }
        self.host = bare
        self.scheme = components.scheme!
        self.port = components.port ?? (scheme == "https" ? 443 : 80)
        if scheme == "https" {
            do {
                tls = try NIOSSLContext(configuration: configuration ?? .makeClientConfiguration())
            } catch {
                throw .invalidParameter("cannot set up TLS for \(url): \(error)")
            }
            serverHostname = (try? SocketAddress(ipAddress: bare, port: 0)) == nil ? bare : nil
        } else {
            tls = nil
            serverHostname = nil
        }
    }

    /// `SCHEME://HOST:PORT`, as errors name the coordinator.
    var origin: String { "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)" }

    /// POSTs a signed message to `path`.
    func post(_ path: String, _ signed: SignedMessage, timeout: Duration) async throws(FederatedError) -> HTTPAnswer {
        try await send(path, signed, timeout: timeout)
    }

    /// GETs `path` (the unsigned `GET /v1/fl/status`).
    func get(_ path: String, timeout: Duration) async throws(FederatedError) -> HTTPAnswer {
        try await send(path, nil, timeout: timeout)
    }

    /// One request: a POST of `signed`, or a GET without it.
    private func send(_ path: String, _ signed: SignedMessage?, timeout: Duration) async throws(FederatedError) -> HTTPAnswer {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: HTTPAnswer.self)
        let (tls, serverHostname, limit, origin) = (self.tls, self.serverHostname, maximumAnswer, origin)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverHostname))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, limit: limit, origin: origin))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            promise.fail(error)
            throw Self.failure(error, origin: origin)
        }
        var head = HTTPRequestHead(version: .http1_1, method: signed == nil ? .GET : .POST, uri: path)
        head.headers.add(name: "Host", value: "\(host.contains(":") ? "[\(host)]" : host):\(port)")
        if let signed {
            head.headers.add(name: "Content-Type", value: MessageCoding.mediaType(of: signed.payload))
            head.headers.add(name: SignedMessage.header, value: signed.headerValue)
            head.headers.add(name: "Content-Length", value: "\(signed.payload.count)")
        }
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let signed { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: signed.payload))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let deadline = channel.eventLoop.scheduleTask(
            in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        ) { [origin] in promise.fail(FederatedError.timeout("no answer from \(origin)\(path)")) }
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        do {
            return try await promise.futureResult.get()
        } catch let error as FederatedError {
            throw error
        } catch {
            throw Self.failure(error, origin: origin)
        }
    }

    /// A failed exchange with the coordinator at `origin` as one line: TLS failures apart (retrying cannot mend them).
    static func failure(_ error: any Error, origin: String) -> FederatedError {
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first { return failure(first.error, origin: origin) }
        if let error = error as? NIOSSLError, case .handshakeFailed(let reason) = error, "\(reason)".contains("CERTIFICATE_VERIFY_FAILED") {
            return .tlsFailed("\(origin): its TLS certificate is not trusted (give fl join the CA that issued it: --ca-cert or COFFER_CA_CERT)")
        }
        if let error = error as? NIOSSLExtraError, error == .failedToValidateHostname {
            return .tlsFailed("\(origin): its TLS certificate is for another name")
        }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            return .tlsFailed("\(origin): the TLS handshake failed (is it serving https?)")
        }
        if let error = error as? IOError { return .transport("\(origin): \(String(cString: strerror(error.errnoCode)).lowercased())") }
        return .transport("\(origin): \(error)")
    }
}

/// Collects one response and fulfils the promise at its end (or fails it if the connection closes first).
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<HTTPAnswer>
    private var answer = HTTPAnswer(status: 0, signature: nil, body: [])
    private var done = false
    private let limit: Int
    private let origin: String

    init(promise: EventLoopPromise<HTTPAnswer>, limit: Int, origin: String) {
        self.promise = promise
        self.limit = limit
        self.origin = origin
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            answer.status = Int(head.status.code)
            answer.signature = head.headers.first(name: SignedMessage.header)
        case .body(var buffer):
            guard !done else { return }
            guard answer.body.count + buffer.readableBytes <= limit else {
                done = true
                promise.fail(
                    FederatedError.malformedMessage("\(origin) sent an answer longer than \(limit) bytes, more than any task of this recipe")
                )
                context.close(promise: nil)
                return
            }
            answer.body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard !done else { return }
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
