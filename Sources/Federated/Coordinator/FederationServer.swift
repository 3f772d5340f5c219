import CofferCrypto
import HTTPTypes
public import Hummingbird
public import HummingbirdCore
public import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// The coordinator's HTTP face (Hummingbird 2): four routes over a ``Coordinator``.
///
/// | route | body | answer |
/// | --- | --- | --- |
/// | `POST /v1/fl/join` | signed ``JoinRequest`` | 200 signed ``Welcome`` |
/// | `POST /v1/fl/poll` | signed ``PollRequest`` | 200 signed ``SiteTask``, or 204 after 20 s without one |
/// | `POST /v1/fl/submit` | signed ``Submission`` | 200 signed ``Acknowledgement`` |
/// | `GET /v1/fl/status` | | 200 JSON of public facts |
///
/// Signatures travel in `Coffer-Signature`; every refusal is a one-line `text/plain` body with the status of
/// ``FederatedError/status`` (another method on a route: 405 with `Allow`); docs/openapi.yaml describes the routes.
/// `server` is the channel set-up: plain HTTP/1.1 by default; `coffer fl serve` passes the same one as `coffer serve`
/// (HTTPS with `--tls-cert`, deadlines on clients slow to send a request). `maximumConnections` caps the connections
/// served at once (past it the server stops accepting until one closes: hostile clients holding connections cannot
/// make it hold unbounded memory). `onListening` runs once the socket takes connections, with the port it is bound to
/// (the one the system chose when `port` is 0).
///
/// ```swift
/// let app = buildFederationApplication(coordinator: coordinator, host: "127.0.0.1", port: 8450)
/// try await app.runService()
/// ```
public func buildFederationApplication(
    coordinator: Coordinator,
    host: String,
    port: Int,
    server: HTTPServerBuilder = .http1(),
    maximumBody: Int = 256 << 20,
    maximumConnections: Int = 512,
    logger: Logger = Logger(label: "coffer.fl"),
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    Application(
        router: buildFederationRouter(coordinator: coordinator, maximumBody: maximumBody, logger: logger),
        server: server,
        configuration: .init(
            address: .hostname(host, port: port),
            serverName: "coffer-fl",
            availableConnectionsDelegate: MaximumAvailableConnections(maximumConnections)
        ),
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
        logger: logger
    )
}

/// The routes alone, for tests (`app.test(.router)`).
public func buildFederationRouter(coordinator: Coordinator, maximumBody: Int, logger: Logger) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    router.add(
        middleware: RouteMethods(routes: [
            "/v1/fl/join": .post, "/v1/fl/poll": .post, "/v1/fl/submit": .post, "/v1/fl/status": .get, "/healthz": .get,
        ])
    )
    @Sendable func signedBody(_ request: Request) async throws -> SignedMessage {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: maximumBody)
        } catch {
            throw HTTPError(.contentTooLarge, message: "the request body is over \(maximumBody) bytes")
        }
        return try SignedMessage(payload: Array(buffer.readableBytesView), headerValue: request.headers[HTTPField.Name(SignedMessage.header)!])
    }
    @Sendable func answer(_ signed: SignedMessage) -> Response {
        Response(
            status: .ok,
            headers: [.contentType: MessageCoding.mediaType(of: signed.payload), HTTPField.Name(SignedMessage.header)!: signed.headerValue],
            body: .init(byteBuffer: ByteBuffer(bytes: signed.payload))
        )
    }
    router.post("/v1/fl/join") { request, _ in
        answer(try await coordinator.join(try await signedBody(request)))
    }
    router.post("/v1/fl/poll") { request, _ in
        guard let task = try await coordinator.poll(try await signedBody(request)) else { return Response(status: .noContent) }
        return answer(task)
    }
    router.post("/v1/fl/submit") { request, _ in
        do {
            // The signature and the message (a megabyte for a masked vector) are checked on the request's task, so
            // that submissions arriving together are checked at once; only taking them is serial, in the actor.
            let opened = try coordinator.core.open(try await signedBody(request))
            return answer(try await coordinator.submit(opened))
        } catch let error as FederatedError {
            // Every refused submission is logged with its one-line reason (the body already tells the site).
            logger.warning("refused submission: \(VisibleText.of(error.description))")
            throw error
        }
    }
    router.get("/v1/fl/status") { _, _ in
        let status = await coordinator.status()
        let body = "{" + status.keys.sorted().map { "\"\($0)\":\"\(status[$0]!)\"" }.joined(separator: ",") + "}\n"
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
    router.get("/healthz") { _, _ in "ok\n" }
    return router
}

/// Answers a method a route does not take with 405, `Allow` and one `text/plain` line, as `coffer serve` does (the router
/// alone would say 404, as if the path did not exist).
struct RouteMethods: RouterMiddleware {
    typealias Context = BasicRequestContext
    /// Each route's path and the one method it takes.
    let routes: [String: HTTPRequest.Method]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let allowed = routes[request.uri.path], request.method != allowed else { return try await next(request, context) }
        return Response(
            status: .methodNotAllowed,
            headers: [.allow: allowed.rawValue, .contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: "\(request.method.rawValue) is not allowed here: use \(allowed.rawValue)\n"))
        )
    }
}

extension FederatedError: HTTPResponseError {
    /// 401 for who-are-you failures, 403 for sites outside the round, 409 for stale, duplicate and out-of-stage
    /// messages and recipe mismatches, 400 for malformed content.
    public var status: HTTPResponse.Status {
        switch self {
        case .signatureInvalid, .unknownSite: .unauthorized
        case .notInRound: .forbidden
        case .staleRound, .wrongStage, .duplicate, .recipeMismatch, .roundAborted: .conflict
        case .timeout: .gatewayTimeout
        case .io, .transport, .tlsFailed: .internalServerError
        default: .badRequest
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(
            status: status,
            headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: description + "\n"))
        )
    }
}

/// The largest body a site needs to send: a masked vector of `parameters + 1` elements in base64 JSON, with room for
/// the other fields. Bodies are read before their signature can be checked, so anyone who can connect could otherwise
/// make the coordinator buffer 256 MiB per request.
public func maximumBody(parameters: Int) -> Int {
    max(1 << 20, (parameters + 1) * 8 * 4 / 3 + (256 << 10))
}

/// The largest answer a site reads: a task holds the global model (4 bytes a parameter, in base64), less than a
/// masked vector, and the boxes of the other sites' shares, a few hundred bytes each; twice that, with 16 MiB for
/// the boxes of a large federation.
public func maximumAnswer(parameters: Int) -> Int {
    2 * maximumBody(parameters: parameters) + (16 << 20)
}

/// Runs the federation behind its HTTP routes: serves until every round is done and the sites have had the final
/// model, then shuts the server down gracefully. SIGTERM or SIGINT stop both at once.
///
/// - Parameters:
///   - server: the channel set-up (plain HTTP/1.1, or TLS: see
///     ``buildFederationApplication(coordinator:host:port:server:maximumBody:maximumConnections:logger:onListening:)``).
///   - maximumConnections: connections served at once; past it the server stops accepting until one closes.
/// - Returns: every round's record.
public func runFederation(
    coordinator: Coordinator,
    host: String,
    port: Int,
    server: HTTPServerBuilder = .http1(),
    maximumConnections: Int = 512,
    logger: Logger,
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) async throws -> [RoundRecord] {
    let app = buildFederationApplication(
        coordinator: coordinator,
        host: host,
        port: port,
        server: server,
        maximumBody: maximumBody(parameters: coordinator.core.global.count),
        maximumConnections: maximumConnections,
        logger: logger,
        onListening: onListening
    )
    let services = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    return try await withThrowingTaskGroup(of: [RoundRecord]?.self) { group in
        group.addTask {
            try await services.run()
            return nil
        }
        group.addTask {
            do {
                let records = try await coordinator.run()
                await services.triggerGracefulShutdown()
                return records
            } catch {
                await services.triggerGracefulShutdown()
                throw error
            }
        }
        // Whichever ends first decides: the rounds (then the server stops gracefully), or the server (a signal: the
        // rounds stop). A failed federation also stops the server gracefully before its error is thrown.
        let first: [RoundRecord]??
        do {
            first = try await group.next()
        } catch {
            _ = try? await group.next()
            throw error
        }
        guard let records = first ?? nil else {
            group.cancelAll()
            throw FederatedError.io("interrupted: the coordinator stopped before the federation ended")
        }
        try await group.waitForAll()
        return records
    }
}
