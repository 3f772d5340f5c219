import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// One kept-alive HTTP/1.1 connection (TLS through swift-nio-ssl for `https`) used synchronously by the CLI.
/// Requests go one at a time; a response body is read from the socket only as fast as the caller consumes it,
/// so a blob streams into the decryptor in bounded memory. A connection the server closed, or one left in the
/// middle of a response, is replaced by a new one at the next request.
final class HTTPConnection {
    let base: URL
    private let host: String
    private let port: Int
    private let tls: NIOSSLContext?
    private var channel: (any Channel)?
    private var inbox: ResponseInbox?
    /// How long to wait for the server to answer or to send the next piece of a body.
    static let timeout: TimeInterval = 300

    /// `caCertificate`: a PEM file of the certificates to trust for `https`, instead of the system's.
    init(base: URL, caCertificate: String?) throws {
        guard let scheme = base.scheme?.lowercased(), scheme == "http" || scheme == "https", let host = base.host, !host.isEmpty else {
            throw CLIError("--registry must be an http:// or https:// URL, not \(base)")
        }
        self.base = base
        self.host = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        port = base.port ?? (scheme == "https" ? 443 : 80)
        if scheme == "https" {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if let caCertificate {
                do {
                    configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificate))
                } catch {
                    throw CLIError("--ca-cert \(caCertificate) is not a readable PEM certificate file")
                }
            }
            do { tls = try NIOSSLContext(configuration: configuration) } catch { throw CLIError("cannot set up TLS: \(error)") }
        } else {
            tls = nil
        }
    }

    deinit { try? channel?.close().wait() }

    /// Sends a request and waits for the status line and headers; the body is then read from ``Response``.
    func send(_ method: HTTPMethod, _ target: String, headers: [(String, String)], body: Data?) throws -> Response {
        let (channel, inbox) = try connection()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target)
        let name = host.contains(":") ? "[\(host)]" : host
        head.headers.add(name: "Host", value: base.port.map { "\(name):\($0)" } ?? name)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        head.headers.add(name: "Content-Length", value: "\(body?.count ?? 0)")
        inbox.expectResponse()
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body, !body.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        channel.read()
        let response = try inbox.head(deadline: Date() + Self.timeout)
        return Response(status: Int(response.status.code), headers: response.headers, inbox: inbox, channel: channel)
    }

    /// The open connection, or a new one when there is none or the last response was not read to its end.
    private func connection() throws -> (any Channel, ResponseInbox) {
        if let channel, let inbox, channel.isActive, inbox.isIdle { return (channel, inbox) }
        try? channel?.close().wait()
        let inbox = ResponseInbox()
        let tls = self.tls
        let serverName = host.contains(":") || host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : host
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: false)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64 << 10, initial: 256 << 10, maximum: 1 << 20))
            .connectTimeout(.seconds(30))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    if let tls { try operations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverName)) }
                    try operations.addHTTPClientHandlers()
                    try operations.addHandler(inbox)
                }
            }
        do {
            let channel = try bootstrap.connect(host: host, port: port).wait()
            self.channel = channel
            self.inbox = inbox
            return (channel, inbox)
        } catch {
            throw CLIError("cannot reach \(base): \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first { return describe(first.error) }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if error is HTTPParserError { return "its answer is not HTTP (\(error))" }
        if let error = error as? NIOSSLError, case .handshakeFailed(let reason) = error {
            guard "\(reason)".contains("CERTIFICATE_VERIFY_FAILED") else { return "the TLS handshake failed" }
            return "its TLS certificate is not trusted (pass its CA with --ca-cert or COFFER_CA_CERT)"
        }
        return "\(error)"
    }

    /// A response whose status and headers have arrived; its body is read with ``readAll()`` or ``nextPiece()``.
    struct Response {
        let status: Int
        let headers: HTTPHeaders
        fileprivate let inbox: ResponseInbox
        fileprivate let channel: any Channel

        /// The next piece of the body, `nil` at its end.
        func nextPiece() throws -> ByteBuffer? {
            try inbox.nextPiece(channel: channel, deadline: Date() + HTTPConnection.timeout)
        }

        func readAll() throws -> Data {
            var data = Data()
            while var piece = try nextPiece() { data.append(contentsOf: piece.readBytes(length: piece.readableBytes) ?? []) }
            return data
        }
    }
}

/// Collects one response at a time from the channel for a caller waiting on another thread, and asks the socket
/// for more only while fewer than `highWater` bytes wait to be consumed.
private final class ResponseInbox: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    static let highWater = 4 << 20

    private let condition = NSCondition()
    private var head: HTTPResponseHead?
    private var pieces: [ByteBuffer] = []
    private var first = 0
    private var queued = 0
    private var ended = true
    private var readPending = false
    private var failure: String?

    /// No response is in flight: the connection may carry the next request.
    var isIdle: Bool { condition.withLock { ended && failure == nil } }

    func expectResponse() {
        condition.withLock {
            head = nil
            pieces = []
            first = 0
            queued = 0
            ended = false
            readPending = true
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        condition.withLock {
            switch unwrapInboundIn(data) {
            case .head(let received): head = received
            case .body(let piece):
                pieces.append(piece)
                queued += piece.readableBytes
            case .end: ended = true
            }
            condition.broadcast()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        let more = condition.withLock {
            readPending = !ended && queued < Self.highWater
            return readPending
        }
        if more { context.read() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(HTTPConnection.describe(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail("the server closed the connection")
    }

    private func fail(_ reason: String) {
        condition.withLock {
            // After a whole response a close only retires the connection; during one it is the request's failure.
            if failure == nil { failure = ended ? "closed" : reason }
            condition.broadcast()
        }
    }

    func head(deadline: Date) throws -> HTTPResponseHead {
        try condition.withLock {
            while head == nil {
                if let failure { throw CofferCryptoError.io(path: "response", reason: failure) }
                guard condition.wait(until: deadline) else { throw CofferCryptoError.io(path: "response", reason: "no answer in time") }
            }
            return head!
        }
    }

    func nextPiece(channel: any Channel, deadline: Date) throws(CofferCryptoError) -> ByteBuffer? {
        condition.lock()
        while first == pieces.count {
            if ended {
                condition.unlock()
                return nil
            }
            if let failure {
                condition.unlock()
                throw .io(path: "response body", reason: failure)
            }
            guard condition.wait(until: deadline) else {
                condition.unlock()
                throw .io(path: "response body", reason: "no data in time")
            }
        }
        let piece = pieces[first]
        first += 1
        queued -= piece.readableBytes
        if first == pieces.count {
            pieces.removeAll(keepingCapacity: true)
            first = 0
        }
        // The socket was left unread while the queue was full: ask for more once half of it is consumed.
        let resume = !ended && !readPending && queued < Self.highWater / 2
        if resume { readPending = true }
        condition.unlock()
        if resume { channel.read() }
        return piece
    }
}
