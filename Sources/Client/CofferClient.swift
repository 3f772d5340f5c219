import AsyncHTTPClient
public import CofferRegistry
public import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
public import NIOSSL
import Synchronization

/// A client of a registry served by `coffer serve` (docs/openapi.yaml), over async-http-client.
///
/// Every route has a typed method taking and returning the wire types both sides share (CofferRegistry's `Wire`
/// folder); every failure is one ``CofferClientError``. The bearer token lives in sodium memory. Nothing the server
/// says about versions is taken on its word by ``pull(_:identity:into:trusting:registryKey:)`` and the other
/// verifying calls: they replay the registry's signed ledger against the root this client pinned.
///
/// ```swift
/// let client = try CofferClient(baseURL: URL(string: "https://registry.example:8443")!, token: Secret(text: token))
/// let versions = try await client.versions(model: "m/risk")
/// let result = try await client.pull(try ModelReference(parsing: "m/risk@prod"), identity: me, into: "out")
/// ```
public final class CofferClient: Sendable {
    public let baseURL: URL
    /// Where pins and remembered ledger states live (`~/.local/state/coffer` by default); nil remembers nothing.
    public let memory: ClientMemory?
    /// Where the client says what a user should know and no answer carries: a pin made on first use, a push resumed.
    let notice: @Sendable (String) -> Void
    let http: HTTPClient
    private let token: Secret

    /// - Parameters:
    ///   - baseURL: `http://` or `https://`, with an optional path prefix.
    ///   - token: the bearer token (`cft_...`).
    ///   - caCertificate: a PEM file of the certificates to trust for `https` instead of the system's.
    ///   - memory: where the ledger's pin and replayed state are kept between calls.
    ///   - notice: told, in one line, what a user should know and no answer carries (a pin made on first use, a
    ///     push resumed).
    /// - Throws: ``CofferClientError/invalidInput(_:)`` for a URL or certificate file the client cannot use.
    public init(
        baseURL: URL,
        token: Secret,
        caCertificate: String? = nil,
        memory: ClientMemory? = .standard(),
        notice: @escaping @Sendable (String) -> Void = { _ in }
    ) throws(CofferClientError) {
        guard let scheme = baseURL.scheme?.lowercased(), scheme == "http" || scheme == "https", let host = baseURL.host, !host.isEmpty else {
            throw .invalidInput("a registry must be an http:// or https:// URL, not \(baseURL)")
        }
        // Here rather than in each caller: `HTTP://` passed a caller's check for "http" and sent the token in the clear.
        guard scheme == "https" || Self.loopbackHosts.contains(host.lowercased()) else {
            throw .invalidInput("refusing to send a bearer token in plain http to \(host): use https")
        }
        self.baseURL = baseURL
        self.token = token
        self.memory = memory
        self.notice = notice
        http = try HTTPClients.client(caCertificate: scheme == "https" ? caCertificate : nil)
    }

    /// The hosts plain `http` is allowed to: this machine.
    static let loopbackHosts: Set<String> = ["127.0.0.1", "::1", "[::1]", "localhost"]

    // MARK: - Requests

    /// The absolute URL of `path` (segments already percent-encoded: see ``pathSegment(_:)``) under the base URL.
    func url(_ path: String, query: [URLQueryItem] = []) -> String {
        var base = baseURL.absoluteString
        if let queryStart = base.firstIndex(where: { $0 == "?" || $0 == "#" }) { base = String(base[..<queryStart]) }
        if base.hasSuffix("/") { base.removeLast() }
        var components = URLComponents()
        components.queryItems = query.isEmpty ? nil : query
        // `+` is a space to many query parsers: encode it, as Python's urlencode does.
        let encoded = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
        return base + "/" + path + (encoded.map { "?\($0)" } ?? "")
    }

    /// `text` as one path segment: percent-encoded, `/` included.
    public static func pathSegment(_ text: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove("/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// Sends a request with the bearer token and returns the answer, whatever its status.
    func send(
        _ method: HTTPMethod,
        _ path: String,
        query: [URLQueryItem] = [],
        headers: [(String, String)] = [],
        body: HTTPClientRequest.Body? = nil
    ) async throws(CofferClientError) -> (url: String, response: HTTPClientResponse) {
        let target = url(path, query: query)
        var request = HTTPClientRequest(url: target)
        request.method = method
        // The header's String lives as long as this request: an HTTP client takes no other form.
        request.headers.add(name: "Authorization", value: "Bearer \(token.text())")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            request.body = body
        } else if method == .POST || method == .PUT || method == .PATCH {
            request.headers.add(name: "Content-Length", value: "0")
        }
        // No overall deadline: a large PATCH or blob may take minutes; the read timeout catches a silent server.
        do { return (target, try await http.execute(request, deadline: .distantFuture)) } catch {
            // A kept-alive connection the server closed as the request went out on it, before any answer: a GET asks
            // once more, on a new connection, as browsers do (CI: "the server closed the connection" on a machine so
            // loaded that the client saw the server's idle close late). A Coffer server closes an idle connection
            // before reading a request on it; a GET it did read and then died on (a restart) may be logged twice in
            // the audit log (a pull, a verify), and changes nothing else. Other methods are never sent twice.
            guard error as? HTTPClientError == .remoteConnectionClosed, body == nil, method == .GET || method == .HEAD else {
                throw .unreachable(url: baseURL.absoluteString, reason: Self.describe(error))
            }
        }
        do { return (target, try await http.execute(request, deadline: .distantFuture)) } catch {
            throw .unreachable(url: baseURL.absoluteString, reason: Self.describe(error))
        }
    }

    /// Sends and requires one of `accepted`; a refusal becomes ``CofferClientError/server(url:status:message:)``.
    func exchange(
        _ method: HTTPMethod,
        _ path: String,
        query: [URLQueryItem] = [],
        headers: [(String, String)] = [],
        body: HTTPClientRequest.Body? = nil,
        accepting accepted: Set<UInt> = [200, 201, 204]
    ) async throws(CofferClientError) -> (url: String, response: HTTPClientResponse) {
        let (target, response) = try await send(method, path, query: query, headers: headers, body: body)
        guard accepted.contains(response.status.code) else { throw await Self.failure(response, url: target, base: baseURL) }
        return (target, response)
    }

    /// The largest JSON answer read: a ledger page of 10000 records, a long audit log.
    static let answerLimit = 256 << 20

    /// Sends `body` (JSON when given) and decodes the answer as `T`, of at most `limit` bytes.
    func call<T: Decodable>(
        _ method: HTTPMethod,
        _ path: String,
        query: [URLQueryItem] = [],
        json body: (some Encodable)? = String?.none,
        headers: [(String, String)] = [],
        limit: Int = answerLimit,
        as type: T.Type
    ) async throws(CofferClientError) -> T {
        let data = try await raw(method, path, query: query, json: body, headers: headers, limit: limit)
        do { return try JSONDecoder().decode(T.self, from: data.body) } catch {
            throw .badAnswer(url: data.url, reason: "its JSON is not a \(T.self) (\(error))")
        }
    }

    /// Sends `body` (JSON when given) and returns the answer's bytes, requiring a 2xx status.
    func raw(
        _ method: HTTPMethod,
        _ path: String,
        query: [URLQueryItem] = [],
        json body: (some Encodable)? = String?.none,
        headers: [(String, String)] = [],
        limit: Int = answerLimit
    ) async throws(CofferClientError) -> (url: String, body: Data) {
        var fields = headers
        var payload: HTTPClientRequest.Body?
        if let body {
            do { payload = .bytes(ByteBuffer(bytes: try WireJSON.encode(body))) } catch { throw .invalidInput("cannot encode the request: \(error)") }
            fields.append(("Content-Type", "application/json"))
        }
        let (target, response) = try await exchange(method, path, query: query, headers: fields, body: payload)
        do {
            return (target, Data(try await response.body.collect(upTo: limit).readableBytesView))
        } catch is NIOTooManyBytesError {
            throw .badAnswer(url: target, reason: "its answer is over the \(limit) bytes this client reads of it")
        } catch {
            throw .unreachable(url: baseURL.absoluteString, reason: "its answer broke off: \(Self.describe(error))")
        }
    }

    /// The error of a refused request: the server's one-line message from its JSON error body, or the start of
    /// whatever else it sent (a server that is not Coffer's), on one line.
    static func failure(_ response: HTTPClientResponse, url: String, base: URL) async -> CofferClientError {
        let body = (try? await response.body.collect(upTo: 1 << 16)).map { Data($0.readableBytesView) } ?? Data()
        let text = (try? JSONDecoder().decode(WireError.self, from: body))?.error.message ?? String(decoding: body.prefix(200), as: UTF8.self)
        let message = text.split(whereSeparator: \.isNewline).joined(separator: " ")
        return .server(url: base.absoluteString, status: Int(response.status.code), message: message)
    }

    /// A transport failure in words, without the error dumps of the layers beneath.
    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connection timed out"
            case .readTimeout: return "the server stopped answering (read timeout)"
            case .writeTimeout: return "the server stopped reading (write timeout)"
            case .remoteConnectionClosed: return "the server closed the connection"
            case .deadlineExceeded: return "the request timed out"
            case .cancelled: return "the request was cancelled"
            default: return "\(error)"
            }
        }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first { return describe(first.error) }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? ChannelError, case .connectTimeout = error { return "connection timed out" }
        if error is HTTPParserError { return "its answer is not HTTP (\(error))" }
        if let error = error as? NIOSSLError, case .handshakeFailed(let reason) = error {
            guard "\(reason)".contains("CERTIFICATE_VERIFY_FAILED") else { return "the TLS handshake failed" }
            return "its TLS certificate is not trusted (give the client its CA certificate)"
        }
        if error is NIOSSLError || error is BoringSSLError { return "the TLS handshake failed" }
        if error is CancellationError { return "the request was cancelled" }
        let text = "\(error)"
        if text.localizedCaseInsensitiveContains("connection refused") { return "connection refused" }
        return text.split(whereSeparator: \.isNewline).joined(separator: " ")
    }
}

/// A TLS client configuration that trusts the certificates in `caCertificate` (PEM) instead of the system's roots:
/// how every client of a Coffer server (`--ca-cert`, `COFFER_CA_CERT`, the config file's `ca_cert`) trusts one started
/// with its own `--tls-cert`.
///
/// ```swift
/// var configuration = HTTPClient.Configuration()
/// configuration.tlsConfiguration = try clientTLS(trusting: "ca.pem")
/// ```
///
/// - Throws: ``CofferClientError/invalidInput(_:)`` when the file cannot be read or holds no certificate.
public func clientTLS(trusting caCertificate: String) throws(CofferClientError) -> TLSConfiguration {
    let certificates: [NIOSSLCertificate]
    do { certificates = try NIOSSLCertificate.fromPEMFile(caCertificate) } catch {
        throw .invalidInput("\(caCertificate) is not a readable PEM certificate file")
    }
    guard !certificates.isEmpty else { throw .invalidInput("\(caCertificate) is not a readable PEM certificate file: it holds none") }
    var tls = TLSConfiguration.makeClientConfiguration()
    tls.trustRoots = .certificates(certificates)
    return tls
}

/// One `HTTPClient` per CA file for the whole process: clients keep their connections alive across calls, and an
/// `HTTPClient` must be shut down before it is released, which a `Sendable` client has no moment to do.
enum HTTPClients {
    private static let clients = Mutex<[String: HTTPClient]>([:])

    static func client(caCertificate: String?) throws(CofferClientError) -> HTTPClient {
        let key = caCertificate ?? ""
        if let client = clients.withLock({ $0[key] }) { return client }
        var configuration = HTTPClient.Configuration()
        // The API never redirects; following one would send the bearer token somewhere else.
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(30), read: .seconds(300))
        // Idle connections are closed here before a server closes them: a Coffer server waits 10 s for the next request
        // on a connection (`--client-timeout`), and a request sent as that close comes finds the connection gone.
        configuration.connectionPool.idleTimeout = .seconds(4)
        // A refused connection is reported at once instead of retried until the connect timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.decompression = .disabled
        if let caCertificate { configuration.tlsConfiguration = try clientTLS(trusting: caCertificate) }
        let made = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
        return clients.withLock { clients in
            if let existing = clients[key] {
                Task { try? await made.shutdown() }
                return existing
            }
            clients[key] = made
            return made
        }
    }
}
