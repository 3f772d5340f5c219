import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation
import NIOCore
import NIOHTTP1

/// `--registry URL --token cft_...` (or `COFFER_REGISTRY`, `COFFER_TOKEN`): a registry served by `coffer serve`.
struct RemoteOptions: ParsableArguments {
    @Option(name: .long, help: "A registry served by coffer serve (default: $COFFER_REGISTRY); otherwise --home is used.")
    var registry: String?
    @Option(name: .long, help: "Bearer token for --registry (default: $COFFER_TOKEN).") var token: String?
    @Option(name: .long, help: "PEM certificates to trust for an https --registry instead of the system's (default: $COFFER_CA_CERT).")
    var caCert: String?

    var url: URL? {
        (registry ?? ProcessInfo.processInfo.environment["COFFER_REGISTRY"]).flatMap { $0.isEmpty ? nil : URL(string: $0) }
    }
    var bearer: String? { token ?? ProcessInfo.processInfo.environment["COFFER_TOKEN"] }
    var caCertificate: String? { caCert ?? ProcessInfo.processInfo.environment["COFFER_CA_CERT"] }

    /// A client when `--registry` (or `COFFER_REGISTRY`) names a server; `nil` for the local registry.
    func client() throws -> RemoteClient? {
        guard let url else { return nil }
        guard let bearer else { throw CLIError("--registry needs a bearer token: --token or COFFER_TOKEN") }
        return try RemoteClient(base: url, token: bearer, caCertificate: caCertificate)
    }
}

/// A small synchronous HTTP client for the remote commands, over one kept-alive connection. The server's error
/// message (one line) becomes the command's.
final class RemoteClient: BlobFetcher {
    let base: URL
    let token: String
    private let connection: HTTPConnection

    init(base: URL, token: String, caCertificate: String?) throws {
        self.base = base
        self.token = token
        connection = try HTTPConnection(base: base, caCertificate: caCertificate)
    }

    /// `text` as one path segment: percent-encoded, `/` included.
    static func pathSegment(_ text: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove("/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// The request target of `path` (already percent-encoded: see ``pathSegment(_:)``) under the base URL's path,
    /// with `query` encoded.
    private func target(_ path: String, query: [URLQueryItem] = []) -> String {
        let basePath = URLComponents(url: base, resolvingAgainstBaseURL: false)?.percentEncodedPath ?? ""
        var components = URLComponents()
        components.queryItems = query.isEmpty ? nil : query
        return (basePath.hasSuffix("/") ? String(basePath.dropLast()) : basePath) + "/" + path
            + (components.percentEncodedQuery.map { "?\($0)" } ?? "")
    }

    private func open(
        _ method: String,
        _ path: String,
        query: [URLQueryItem] = [],
        headers: [String: String] = [:],
        body: Data? = nil
    )
        throws -> HTTPConnection.Response
    {
        var fields = [("Authorization", "Bearer \(token)")]
        fields += headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        do {
            return try connection.send(HTTPMethod(rawValue: method), target(path, query: query), headers: fields, body: body)
        } catch let error as CLIError {
            throw error
        } catch {
            throw CLIError("cannot reach \(base): \(Self.reason(error))")
        }
    }

    /// GET `path` and return the body; a non-2xx answer throws the server's message.
    func get(_ path: String, query: [URLQueryItem] = []) throws -> Data {
        let (status, data) = try send("GET", path, query: query)
        return try Self.check(data, status: status, base: base)
    }

    /// Sends a request and returns the status and body, whatever the status.
    func send(_ method: String, _ path: String, query: [URLQueryItem] = [], headers: [String: String] = [:], body: Data? = nil) throws -> (Int, Data)
    {
        let response = try open(method, path, query: query, headers: headers, body: body)
        do { return (response.status, try response.readAll()) } catch { throw CLIError("\(base) broke off its answer: \(Self.reason(error))") }
    }

    /// Sends and requires a 2xx answer.
    func expect(_ method: String, _ path: String, query: [URLQueryItem] = [], headers: [String: String] = [:], body: Data? = nil) throws -> Data {
        let (status, data) = try send(method, path, query: query, headers: headers, body: body)
        return try Self.check(data, status: status, base: base)
    }

    /// The blob's ciphertext as it arrives, read from the socket only as fast as the decryptor takes it.
    func blob(_ digest: String, size: Int) throws(CofferRegistryError) -> any ByteSource {
        let label = base.appendingPathComponent("v1/blobs/\(digest)").absoluteString
        do {
            let response = try open("GET", "v1/blobs/\(digest)")
            guard response.status == 200 else {
                throw CLIError("answered \(response.status): \(Self.serverMessage((try? response.readAll()) ?? Data()))")
            }
            let offered = response.headers.first(name: "Content-Length").flatMap(Int.init)
            guard offered == size else {
                throw CLIError("the server offers \(offered.map(String.init) ?? "an unknown number of") bytes; the publisher signed \(size)")
            }
            return StreamedBody(response: response, size: size, label: label)
        } catch {
            throw .io(path: label, reason: Self.reason(error))
        }
    }

    static func reason(_ error: any Error) -> String {
        if let error = error as? CofferCryptoError, case .io(_, let reason) = error { return reason }
        return "\(error)"
    }

    static func check(_ data: Data, status: Int, base: URL) throws -> Data {
        guard (200..<300).contains(status) else { throw CLIError("\(base) answered \(status): \(serverMessage(data))") }
        return data
    }

    /// The one-line message of a server's JSON error body, or the start of whatever else it sent.
    static func serverMessage(_ body: Data) -> String {
        let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any]
        let text = (object?["error"] as? [String: Any])?["message"] as? String ?? String(decoding: body.prefix(200), as: UTF8.self)
        // Whatever a server (or something that is not a Coffer server) sends, the error stays one line.
        return text.split(whereSeparator: \.isNewline).joined(separator: " ")
    }
}

extension RemoteClient: LedgerSource {
    func records(after seq: Int64, limit: Int) throws(CofferRegistryError) -> [[UInt8]] {
        let label = base.appendingPathComponent("v1/ledger").absoluteString
        do {
            let data = try get(
                "v1/ledger",
                query: [URLQueryItem(name: "after", value: String(seq)), URLQueryItem(name: "limit", value: String(limit))]
            )
            let page = try JSONDecoder().decode(LedgerPage.self, from: data)
            var expected = seq
            return try page.records.map { entry in
                expected += 1
                guard entry.seq == expected, let bytes = Data(base64Encoded: entry.envelope) else {
                    throw CofferRegistryError.tampered("\(base) sent ledger records out of order or unreadable")
                }
                return Array(bytes)
            }
        } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .io(path: label, reason: Self.reason(error))
        }
    }

    func stateHead() throws(CofferRegistryError) -> DSSEEnvelope {
        let label = base.appendingPathComponent("v1/ledger/head").absoluteString
        do {
            return try DSSEEnvelope(jsonBytes: Array(try get("v1/ledger/head")))
        } catch let error as CofferCryptoError {
            throw .tampered("\(label): \(error)")
        } catch {
            throw .io(path: label, reason: Self.reason(error))
        }
    }

    /// The registry's ledger, synced and replayed here against the root this user pinned (pinning it on first use,
    /// and saying so), with its state head checked for freshness.
    func ledger(key: PublicIdentity? = nil) async throws -> RemoteLedger {
        let ledger = try await RemoteLedger.sync(from: self, location: ClientMemory.location(url: base), key: key, memory: .standard())
        if ledger.pinnedNow, key == nil {
            FileDescriptorStream.standardError.writeLine(
                "coffer: first use of \(base): pinned its root key \(ledger.state.registry) (check it with the registry's owner)"
            )
        }
        return ledger
    }
}

/// A response body as a ``ByteSource`` of exactly `size` bytes.
private final class StreamedBody: ByteSource {
    private let response: HTTPConnection.Response
    private let size: Int
    private let label: String
    private var piece = ByteBuffer()
    private var consumed = 0

    init(response: HTTPConnection.Response, size: Int, label: String) {
        self.response = response
        self.size = size
        self.label = label
    }

    var remainingHint: Int? { size - consumed }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        var filled = 0
        while filled < buffer.count {
            if piece.readableBytes == 0 {
                let next: ByteBuffer?
                do { next = try response.nextPiece() } catch { throw .io(path: label, reason: RemoteClient.reason(error)) }
                guard let next else { break }
                piece = next
            }
            let n = min(buffer.count - filled, piece.readableBytes)
            piece.withUnsafeReadableBytes { bytes in (buffer.baseAddress! + filled).copyMemory(from: bytes.baseAddress!, byteCount: n) }
            piece.moveReaderIndex(forwardBy: n)
            filled += n
        }
        consumed += filled
        guard consumed <= size else { throw .io(path: label, reason: "the server sent more than the \(size) bytes signed") }
        return filled
    }
}
