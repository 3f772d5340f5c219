import CLinux
public import CofferCrypto
public import CofferRegistry
import CofferTraining
public import Foundation
public import Hummingbird
public import HummingbirdCore
import HummingbirdTLS
public import Logging
public import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// Where and how `coffer serve` listens.
public struct ServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Largest blob an upload may grow to; larger ones get 413.
    public var maxUploadSize: Int
    /// PEM certificate chain and private key files: serve HTTPS (swift-nio-ssl) instead of plain HTTP.
    public var tls: (certificate: String, privateKey: String)?
    /// Limits on `predict`, against model extraction: see ``PredictLimits``.
    public var predictLimits: PredictLimits
    /// How often the audit log's head is signed while the server appends to it (and once more at shutdown).
    public var auditSigningInterval: Duration
    /// How long a signed state head is news: clients refuse one older than this (a freeze); re-signed at half of it.
    public var headLifetime: TimeInterval
    /// How slowly a client may send a request, and how many connections are served at once: see ``ClientLimits``.
    public var clientLimits: ClientLimits

    public init(
        host: String = "127.0.0.1",
        port: Int = 8443,
        maxUploadSize: Int = 16 << 30,
        tls: (certificate: String, privateKey: String)? = nil,
        predictLimits: PredictLimits = .init(),
        auditSigningInterval: Duration = .seconds(5),
        headLifetime: TimeInterval = 3600,
        clientLimits: ClientLimits = .init()
    ) {
        self.host = host
        self.port = port
        self.maxUploadSize = maxUploadSize
        self.tls = tls
        self.predictLimits = predictLimits
        self.auditSigningInterval = auditSigningInterval
        self.headLifetime = headLifetime
        self.clientLimits = clientLimits
    }
}

/// The defences of `coffer serve` and `coffer fl serve` against clients that hold connections open (slowloris): a
/// deadline on each request's head, a minimum rate for its body and for taking its answer (see
/// `ClientDeadlineHandler`), and a cap on
/// connections served at once. Past the cap the server stops accepting: new connections wait in the kernel's queue
/// until one closes, and the memory a flood can make the server hold stays bounded.
public struct ClientLimits: Sendable {
    /// How long a client may take to send a request head, and how far it may fall behind `minimumRate`.
    public var timeout: Duration
    /// Bytes per second a client must send a request body at, and take an answer at, while the server waits on it.
    public var minimumRate: Int
    /// Connections served at once.
    public var maximumConnections: Int
    /// IP addresses of reverse proxies in front of the server (nginx), written as ``peerAddress(_:)`` writes them (the
    /// init does): their connections are not held to the answer's rate. A proxy reads an answer in bursts, as its own client drains its
    /// buffers (through nginx, honest readers at 8-200 KB/s were cut: helper-52), and it times its clients itself
    /// (nginx's `send_timeout`).
    public let trustedProxies: Set<String>

    public init(
        timeout: Duration = .seconds(10),
        minimumRate: Int = 1024,
        maximumConnections: Int = 512,
        trustedProxies: Set<String> = []
    ) {
        self.timeout = timeout
        self.minimumRate = minimumRate
        self.maximumConnections = maximumConnections
        // Written one way here, not by each caller: `0:0:0:0:0:0:0:1` or `::ffff:127.0.0.1` would otherwise match no
        // peer, and nothing would say so.
        self.trustedProxies = Set(trustedProxies.map { Self.peerAddress($0) ?? $0 })
    }

    /// `address` written one way (`::1`, not `0:0:0:0:0:0:0:1`; an IPv4 address mapped into IPv6, as a dual-stack
    /// listener sees IPv4 peers, as IPv4: helper-53); nil if it is not an IP address.
    public static func peerAddress(_ address: String) -> String? {
        guard let written = (try? SocketAddress(ipAddress: address, port: 0))?.ipAddress else { return nil }
        let mapped = "::ffff:"
        guard written.lowercased().hasPrefix(mapped) else { return written }
        let ipv4 = String(written.dropFirst(mapped.count))
        return (try? SocketAddress(ipAddress: ipv4, port: 0))?.ipAddress ?? written
    }
}

/// What one inference session may ask of the server: a query budget against model extraction, on top of the
/// session's own TTL and `max_uses` (each predict request is one use).
public struct PredictLimits: Sendable {
    /// Predict requests per second, per session (a token bucket); more get 429 with `Retry-After`.
    public var rate: Double
    /// Requests a session may make at once after a pause.
    public var burst: Int
    /// Rows in one predict request; more get 413.
    public var maxRows: Int
    /// Sessions one principal may hold open on this server at once, each a decrypted model in locked memory; another
    /// gets 429 (helper-46: one principal opened 20 year-long sessions of a 19 MiB model, 435 MB held for the year).
    public var sessionsPerPrincipal: Int

    public init(rate: Double = 10, burst: Int = 20, maxRows: Int = 1000, sessionsPerPrincipal: Int = 8) {
        self.rate = rate
        self.burst = burst
        self.maxRows = maxRows
        self.sessionsPerPrincipal = sessionsPerPrincipal
    }
}

/// The request context: who the bearer token speaks for, once the authentication middleware has run.
public struct CofferRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var holder: TokenHolder?
    public var requestID: String
    /// The web page session the cookie named, once ``WebSessionAuthenticator`` has run.
    var webSession: WebSession?
    /// The fields of a web form posted with a valid CSRF token, once ``WebSessionAuthenticator`` has checked it.
    var form: [String: String] = [:]
    /// The address of the connection's other end (a proxy's, behind one), for the web sign-in limit.
    let remoteAddress: SocketAddress?
    /// The connection, for the pace of streamed answers (``AnswerPacing``).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        holder = nil
        requestID = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        remoteAddress = source.channel.remoteAddress
        channel = source.channel
    }

    public var maxUploadSize: Int { 8 << 20 }

    /// The token holder ``BearerAuthenticator`` put here. Every `/v1` route sits behind one; a handler reached without
    /// a holder is a route added outside its group, answered 500 rather than served to nobody in particular.
    var authenticated: TokenHolder {
        get throws {
            guard let holder else { throw HTTPError(.internalServerError, message: "the route was reached without authentication") }
            return holder
        }
    }
}

/// Builds the application: the same `CofferRegistry` library the CLI uses, behind HTTP. `onListening` runs once its
/// socket takes connections, with the port it is bound to (the one the system chose when `configuration.port` is 0).
///
/// ```swift
/// let app = try buildApplication(registry: registry, registryIdentity: unlocked, configuration: .init(port: 8443))
/// try await app.runService()
/// ```
public func buildApplication(
    registry: Registry,
    registryIdentity: UnlockedIdentity,
    configuration: ServerConfiguration,
    logger: Logger = Logger(label: "coffer.server"),
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let server = try httpServer(configuration)
    let state = ServerState(registry: registry, registryIdentity: registryIdentity, configuration: configuration, logger: logger)
    // A fresh state head before the first request: clients check every answer against one. A key retired by a
    // rotation is refused here, not after the server has started.
    try await registry.signAuditHead(with: try state.currentRegistryIdentity(), checkpoint: false, headLifetime: configuration.headLifetime)
    return Application(
        router: buildRouter(state: state),
        server: server,
        configuration: .init(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: "coffer",
            availableConnectionsDelegate: MaximumAvailableConnections(configuration.clientLimits.maximumConnections)
        ),
        services: [
            state.sessions,
            // Often enough that a head is re-signed well before it expires, whatever lifetime was chosen.
            AuditHeadSigner(state: state, interval: min(configuration.auditSigningInterval, .milliseconds(Int(configuration.headLifetime * 250)))),
            // The audit page's first chain check, before anyone asks for it.
            AuditChainWatch(monitor: state.auditChain),
        ],
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

func httpServer(_ configuration: ServerConfiguration) throws -> HTTPServerBuilder {
    try httpServer(tls: configuration.tls, limits: configuration.clientLimits)
}

/// HTTP/1.1, over TLS when `tls` names a certificate and key (refused with one line when they do not load): how
/// `coffer serve` and `coffer fl serve` listen. A connection is closed when its client is slower than `limits` allow
/// in sending a request head or body, and when idle for a minute between requests. (The cap on connections is the
/// application's: `ApplicationConfiguration(availableConnectionsDelegate:)`.)
///
/// ```swift
/// let app = Application(router: router, server: try httpServer(tls: (certificate: "cert.pem", privateKey: "key.pem")))
/// ```
///
/// - Parameters:
///   - tls: PEM certificate chain and private key files; `nil` for plain HTTP.
///   - limits: how slowly a client may send a request.
/// - Returns: the server's channel set-up, for Hummingbird's `Application(server:)`.
/// - Throws: ``CofferRegistryError/io(path:reason:)`` when the certificate or key does not load.
public func httpServer(tls: (certificate: String, privateKey: String)?, limits: ClientLimits = .init()) throws -> HTTPServerBuilder {
    let http1 = HTTP1Channel.Configuration(
        additionalChannelHandlers: [ClientDeadlineHandler(limits: limits), AnswerPacer()],
        idleTimeout: .seconds(60)
    )
    guard let tls else { return .http1(configuration: http1) }
    do {
        let chain = try NIOSSLCertificate.fromPEMFile(tls.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: tls.privateKey, format: .pem)
        return try .tls(
            .http1(configuration: http1),
            tlsConfiguration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        )
    } catch {
        throw CofferRegistryError.io(path: tls.certificate, reason: "cannot load the TLS certificate or key: \(error)")
    }
}

/// Everything the handlers share.
final class ServerState: Sendable {
    let registry: Registry
    let registryIdentity: UnlockedIdentity
    let metrics = ServerMetrics()
    let sessions: LoadedSessions
    let signInLimiter = SignInLimiter()
    let pages = WebPages()
    let auditChain: AuditChainMonitor
    let versionChecks = VersionChecks()
    let refusals = RefusalTally()
    /// Whether this server speaks HTTPS itself (`--tls-cert`): the scheme of its own origin, which web forms must be
    /// posted from (``WebOrigin``).
    let servesTLS: Bool
    let maxUploadSize: Int
    let predictLimits: PredictLimits
    let headLifetime: TimeInterval
    let logger: Logger

    init(registry: Registry, registryIdentity: UnlockedIdentity, configuration: ServerConfiguration, logger: Logger) {
        self.registry = registry
        self.registryIdentity = registryIdentity
        self.maxUploadSize = configuration.maxUploadSize
        self.predictLimits = configuration.predictLimits
        self.headLifetime = configuration.headLifetime
        self.sessions = LoadedSessions(registry: registry, logger: logger)
        self.servesTLS = configuration.tls != nil
        self.auditChain = AuditChainMonitor(registry: registry)
        self.logger = logger
        // The registry's refusals are counted too, and written with the rest (AuditHeadSigner's flush).
        registry.countRefusals { [refusals] in refusals.add($0) }
    }

    /// The registry's key as this server holds it, if it is still the registry's current key (a `key rotate` while
    /// the server runs retires it: the server then refuses what needs the key, saying so, until it is restarted).
    func currentRegistryIdentity() async throws(CofferRegistryError) -> UnlockedIdentity {
        let current = try await registry.identity
        guard current.keyID == registryIdentity.publicIdentity.keyID else {
            throw .registryKeyRetired(held: registryIdentity.publicIdentity.keyID, current: current.keyID)
        }
        return registryIdentity
    }

    /// The signer of a change a token holder asks for: the registry's key, acting for them.
    func signer(for holder: TokenHolder) async throws(CofferRegistryError) -> Signer {
        .registry(try await currentRegistryIdentity(), for: holder.principal)
    }
}

/// The router: `/healthz` and `/metrics` open to all, the `/v1` controllers' route groups each behind the bearer
/// authenticator of its role, and around everything the request log and the 405 answer for a known path.
func buildRouter(state: ServerState) -> Router<CofferRequestContext> {
    @Sendable func text(_ body: String, _ type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type], body: .init(byteBuffer: .init(string: body)))
    }
    let routes = APIRoutes()
    routes.get("healthz") { _, _ in text("ok\n", "text/plain; charset=utf-8") }
    routes.get("metrics") { _, _ in text(state.metrics.prometheusText(), "text/plain; version=0.0.4") }
    RegistryController(state: state).addRoutes(to: routes)
    UploadController(state: state).addRoutes(to: routes)
    WebController(state: state).addRoutes(to: routes)
    let router = Router(context: CofferRequestContext.self)
    router.add(middleware: RequestLogMiddleware(state: state, endpoints: routes.endpoints))
    router.add(middleware: MethodNotAllowedMiddleware(endpoints: routes.endpoints))
    router.add(middleware: ContinueMiddleware())
    router.addRoutes(routes.collection)
    return router
}

/// Builds the application and serves until SIGTERM or SIGINT, then shuts down gracefully (open requests finish,
/// decrypted models are wiped). `onListening` runs once the socket takes connections, with its port.
public func runServer(
    registry: Registry,
    registryIdentity: UnlockedIdentity,
    configuration: ServerConfiguration,
    logger: Logger = Logger(label: "coffer.server"),
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) async throws {
    // Blob downloads allocate their 256 KiB pieces on one thread and free them on another. Under glibc's dynamic
    // mmap threshold those pieces come from the arenas, which 16 concurrent downloads fragmented to 200-450 MiB
    // that malloc_trim could not give back; with a fixed threshold each piece is mapped, and unmapped once sent.
    _ = coffer_set_mmap_threshold(Int32(RegistryController.blobPiece))
    try await buildApplication(
        registry: registry,
        registryIdentity: registryIdentity,
        configuration: configuration,
        logger: logger,
        onListening: onListening
    ).runService()
}
