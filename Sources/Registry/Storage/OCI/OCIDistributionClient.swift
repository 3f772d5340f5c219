import AsyncHTTPClient
import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The requests of the OCI distribution API (distribution-spec v1.1, Docker Registry HTTP API v2) that Coffer makes, over
/// async-http-client, for one repository.
///
/// Every failure is one ``CofferRegistryError/unavailable(engine:reason:)`` line naming the registry
/// (`OCI registry 127.0.0.1:5000/coffer: connection refused`), or `.invalidInput` for what the caller asked wrongly.
/// Authentication follows the registry's `WWW-Authenticate` challenge (``OCIAuthenticator``); redirects (a registry
/// keeping its blobs on S3 answers a blob `GET` with a presigned URL) are followed, and `Authorization` is never sent
/// to another origin.
///
/// ```swift
/// let client = try OCIDistributionClient(endpoint: endpoint, environment: ProcessInfo.processInfo.environment)
/// let size = try await client.blobSize(digest)
/// ```
public final class OCIDistributionClient: Sendable {
    public let endpoint: OCIEndpoint
    let http: HTTPClient
    let authenticator: OCIAuthenticator

    /// The largest manifest or index read back; distribution-spec asks registries to accept at least 4 MiB.
    static let manifestLimit = 4 << 20

    /// A client with the credentials and CA file this environment names (`REGISTRY_AUTH_FILE` and the other auth files,
    /// `COFFER_OCI_CA_FILE`).
    public convenience init(endpoint: OCIEndpoint, environment: [String: String]) throws(CofferRegistryError) {
        try self.init(
            endpoint: endpoint,
            credentials: try OCICredentials.lookup(for: endpoint, environment: environment),
            caFile: environment["COFFER_OCI_CA_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        )
    }

    /// - Parameters:
    ///   - credentials: sent only after the registry asks for them.
    ///   - caFile: PEM certificates trusted instead of the system's roots, for an `oci://` registry with its own CA.
    public init(endpoint: OCIEndpoint, credentials: OCICredentials?, caFile: String?) throws(CofferRegistryError) {
        self.endpoint = endpoint
        self.http = try OCIHTTPClients.client(caFile: endpoint.scheme == "https" ? caFile : nil)
        self.authenticator = OCIAuthenticator(endpoint: endpoint, credentials: credentials, http: http)
    }

    // MARK: - Requests

    /// What a request needs from a token service (distribution maps GET and HEAD to pull, writes to push, DELETE to delete).
    enum Access: String {
        case pull = "pull"
        case push = "pull,push"
        case delete = "delete"
    }

    /// A request body: bytes in memory and file ranges can be sent again after a 401; a stream cannot.
    enum Body: Sendable {
        case bytes([UInt8])
        case file(path: String, range: Range<Int>)
        case stream(BlobSlice)

        var count: Int {
            switch self {
            case .bytes(let bytes): bytes.count
            case .file(_, let range): range.count
            case .stream(let slice): slice.count
            }
        }

        var replayable: Bool {
            if case .stream = self { return false }
            return true
        }

        var request: HTTPClientRequest.Body {
            switch self {
            case .bytes(let bytes): .bytes(ByteBuffer(bytes: bytes))
            case .file(let path, let range): .stream(FileChunks(path: path, range: range), length: .known(Int64(range.count)))
            case .stream(let slice): .stream(slice, length: .known(Int64(slice.count)))
            }
        }
    }

    /// `/v2/REPO/...` made absolute.
    func url(_ path: String) -> String { "\(endpoint.baseURL)/v2/\(endpoint.repository)/\(path)" }

    /// An upload `Location` as the registry gave it (absolute, or a path on the registry) made absolute.
    func absolute(_ location: String) -> String {
        if location.hasPrefix("http://") || location.hasPrefix("https://") { return location }
        return endpoint.baseURL + (location.hasPrefix("/") ? "" : "/") + location
    }

    /// Whether `url` is on the registry itself: only there does `Authorization` go.
    private func sameOrigin(_ url: String) -> Bool {
        url.hasPrefix(endpoint.baseURL + "/")
    }

    /// Sends a request, answering one 401 by authenticating again when the body can be sent twice.
    func send(
        _ method: HTTPMethod,
        _ url: String,
        headers: [(String, String)] = [],
        body: Body? = nil,
        access: Access,
        what: String
    ) async throws(CofferRegistryError) -> HTTPClientResponse {
        let scope = "repository:\(endpoint.repository):\(access.rawValue)"
        var retried = false
        while true {
            let authorization = sameOrigin(url) ? try await authenticator.authorization(scope: scope) : nil
            var request = HTTPClientRequest(url: url)
            request.method = method
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            if let authorization { request.headers.add(name: "Authorization", value: authorization) }
            if let body {
                request.body = body.request
            } else if method == .POST || method == .PUT || method == .PATCH {
                request.headers.add(name: "Content-Length", value: "0")
            }
            let response: HTTPClientResponse
            do {
                // No overall deadline: a 64 MiB PATCH over a slow link may take minutes. The read timeout catches a
                // registry that stops answering.
                response = try await http.execute(request, deadline: .distantFuture)
            } catch {
                if let error = error as? CofferRegistryError { throw error }
                throw .unavailable(engine: endpoint.name, reason: Self.describe(error, endpoint: endpoint))
            }
            guard response.status == .unauthorized else { return response }
            let challenge = response.headers.first(name: "WWW-Authenticate")
            _ = try? await response.body.collect(upTo: 1 << 16)
            if !retried, body?.replayable ?? true, await authenticator.refused(challenge: challenge, scope: scope, sent: authorization) {
                retried = true
                continue
            }
            throw .unavailable(engine: endpoint.name, reason: "authentication failed (401)")
        }
    }

    /// The one-line error for an answer the caller did not expect: the registry's own error code and message when it sent
    /// them (distribution-spec "Error Codes").
    func failure(_ response: HTTPClientResponse, _ what: String) async -> CofferRegistryError {
        let status = response.status.code
        let body = (try? await response.body.collect(upTo: 1 << 16)).map { Data($0.readableBytesView) }
        if status == 401 { return .unavailable(engine: endpoint.name, reason: "authentication failed (401)") }
        var reason = status == 403 ? "access denied (403) to \(what)" : "\(what) answered \(status)"
        if let body, let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let errors = object["errors"] as? [[String: Any]], let first = errors.first
        {
            let code = first["code"] as? String ?? ""
            let message = (first["message"] as? String).map(Self.oneLine) ?? ""
            reason += ": \(code)\(message.isEmpty ? "" : " \(message)")"
        }
        return .unavailable(engine: endpoint.name, reason: reason)
    }

    /// The registry's error code in a failed answer's body (`DIGEST_INVALID`, `BLOB_UPLOAD_INVALID`), if any.
    static func errorCode(_ body: ByteBuffer?) -> String? {
        guard let body, let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
            let errors = object["errors"] as? [[String: Any]]
        else { return nil }
        return errors.first?["code"] as? String
    }

    private static func oneLine(_ text: String) -> String {
        String(text.map { $0.isNewline ? " " : $0 }.prefix(200))
    }

    // MARK: - Errors

    static func checkDigest(_ digest: String) throws(CofferRegistryError) {
        guard digest.utf8.count == 64, digest.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw .invalidInput("'\(digest)' is not a SHA-256 digest (64 lower-case hex digits)")
        }
    }

    /// BoringSSL's reason (`CERTIFICATE_VERIFY_FAILED`) in words, without the error's source path and codes.
    static func tlsReason(_ text: String, endpoint: OCIEndpoint) -> String {
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "the registry's certificate is not trusted (COFFER_OCI_CA_FILE names the CA to trust instead of the system's)"
        }
        if text.contains("failedToValidateHostname") { return "the registry's certificate does not name \(endpoint.host)" }
        if let marker = text.range(of: "OPENSSL_internal:") {
            let reason = text[marker.upperBound...].prefix { $0 != " " && $0 != "]" && $0 != ")" }
            return "handshake failed: " + reason.lowercased().replacingOccurrences(of: "_", with: " ")
        }
        return oneLine(text)
    }

    /// One short phrase for a transport error: what a person can act on, not a type dump.
    static func describe(_ error: any Error, endpoint: OCIEndpoint) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connection timed out"
            case .readTimeout: return "the registry stopped answering (read timeout)"
            case .writeTimeout: return "the registry stopped reading (write timeout)"
            case .remoteConnectionClosed: return "the registry closed the connection"
            case .redirectLimitReached: return "too many redirects"
            case .redirectCycleDetected: return "a redirect cycle"
            case .deadlineExceeded: return "the request timed out"
            case .cancelled: return "the request was cancelled"
            default: return "HTTP error: \(error)"
            }
        }
        if let error = error as? NIOConnectionError {
            if error.dnsAError != nil || error.dnsAAAAError != nil, error.connectionErrors.isEmpty {
                return "cannot resolve \(endpoint.host)"
            }
            if let first = error.connectionErrors.first { return describe(first.error, endpoint: endpoint) }
            return "cannot connect"
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? ChannelError, case .connectTimeout = error { return "connection timed out" }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError { return "TLS: " + tlsReason("\(error)", endpoint: endpoint) }
        if error is CancellationError { return "the request was cancelled" }
        let text = "\(error)"
        if text.localizedCaseInsensitiveContains("connection refused") { return "connection refused" }
        return oneLine(text)
    }
}

/// One `HTTPClient` per CA file for the whole process: clients keep their connections alive across stores, and an
/// `HTTPClient` must be shut down before it is released, which a `Sendable` struct store has no moment to do.
enum OCIHTTPClients {
    private static let clients = Mutex<[String: HTTPClient]>([:])

    static func client(caFile: String?) throws(CofferRegistryError) -> HTTPClient {
        let key = caFile ?? ""
        if let client = clients.withLock({ $0[key] }) { return client }
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .follow(max: 5, allowCycles: false)
        // A read timeout rather than a request deadline: a large PATCH may take minutes, a silent registry should not.
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(120))
        // A refused connection is reported at once instead of retried until the connect timeout: the caller (a command,
        // a server request) decides whether to try again.
        configuration.connectionPool.retryConnectionEstablishment = false
        // Every store of the process shares this client, so the per-host limit (AsyncHTTPClient's default is 8) caps how
        // many blob transfers a server has open to its registry at once; a request waiting longer than the connect
        // timeout for one of them fails. 8 was hit by the registry suite's parallel tests on a loaded machine.
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        if let caFile {
            let certificates: [NIOSSLCertificate]
            do {
                certificates = try NIOSSLCertificate.fromPEMFile(caFile)
            } catch {
                throw .invalidInput("COFFER_OCI_CA_FILE \(caFile): not a readable PEM certificate file")
            }
            guard !certificates.isEmpty else { throw .invalidInput("COFFER_OCI_CA_FILE \(caFile) holds no certificate") }
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(certificates)
            configuration.tlsConfiguration = tls
        }
        let made = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
        return clients.withLock { clients in
            if let existing = clients[key] {
                // Another thread made one first; this one was never used, and must be shut down before it is released.
                Task { try? await made.shutdown() }
                return existing
            }
            clients[key] = made
            return made
        }
    }
}
