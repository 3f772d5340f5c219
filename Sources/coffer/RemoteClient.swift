import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `--registry URL --token cft_...` (or `COFFER_REGISTRY`, `COFFER_TOKEN`): a registry served by `coffer serve`.
struct RemoteOptions: ParsableArguments {
    @Option(name: .long, help: "A registry served by coffer serve (default: $COFFER_REGISTRY); otherwise --home is used.")
    var registry: String?
    @Option(name: .long, help: "Bearer token for --registry (default: $COFFER_TOKEN).") var token: String?

    var url: URL? {
        (registry ?? ProcessInfo.processInfo.environment["COFFER_REGISTRY"]).flatMap { $0.isEmpty ? nil : URL(string: $0) }
    }
    var bearer: String? { token ?? ProcessInfo.processInfo.environment["COFFER_TOKEN"] }

    /// A client when `--registry` (or `COFFER_REGISTRY`) names a server; `nil` for the local registry.
    func client() throws -> RemoteClient? {
        guard let url else { return nil }
        guard let bearer else { throw CLIError("--registry needs a bearer token: --token or COFFER_TOKEN") }
        return RemoteClient(base: url, token: bearer)
    }
}

/// A small synchronous HTTP client over URLSession for the remote commands. The server's error message (one line)
/// becomes the command's.
final class RemoteClient: BlobFetcher, Sendable {
    let base: URL
    let token: String

    init(base: URL, token: String) {
        self.base = base
        self.token = token
    }

    private func request(_ path: String, query: [URLQueryItem] = []) -> URLRequest {
        var components = URLComponents(url: base.appendingPathComponent(path), resolvingAgainstBaseURL: false)!
        if !query.isEmpty { components.queryItems = query }
        var request = URLRequest(url: components.url!)
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        request.timeoutInterval = 300
        return request
    }

    /// GET `path` and return the body; a non-2xx answer throws the server's message.
    func get(_ path: String, query: [URLQueryItem] = []) throws -> Data {
        let (status, data) = try send("GET", path, query: query)
        return try Self.check(data, status: status, base: base)
    }

    /// Sends a request and returns the status and body, whatever the status.
    func send(_ method: String, _ path: String, query: [URLQueryItem] = [], headers: [String: String] = [:], body: Data? = nil) throws -> (Int, Data)
    {
        var request = request(path, query: query)
        request.httpMethod = method
        for (key, value) in headers { request.setValue(value, forHTTPHeaderField: key) }
        request.httpBody = body
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Data?, URLResponse?, (any Error)?) = (nil, nil, nil)
        URLSession.shared.dataTask(with: request) { data, response, error in
            result = (data, response, error)
            done.signal()
        }.resume()
        done.wait()
        if let error = result.2 { throw CLIError("cannot reach \(base): \(error.localizedDescription)") }
        return ((result.1 as? HTTPURLResponse)?.statusCode ?? 0, result.0 ?? Data())
    }

    /// Sends and requires a 2xx answer.
    func expect(_ method: String, _ path: String, query: [URLQueryItem] = [], headers: [String: String] = [:], body: Data? = nil) throws -> Data {
        let (status, data) = try send(method, path, query: query, headers: headers, body: body)
        return try Self.check(data, status: status, base: base)
    }

    func blob(_ digest: String, size: Int) throws(CofferRegistryError) -> any ByteSource {
        RangedDownload(client: self, path: "v1/blobs/\(digest)", size: size)
    }

    /// Starts `GET path` for bytes `range`; `wait()` returns exactly those bytes or throws.
    fileprivate func fetch(_ path: String, range: Range<Int>) -> PendingRange {
        var request = request(path)
        request.setValue("bytes=\(range.lowerBound)-\(range.upperBound - 1)", forHTTPHeaderField: "Range")
        let pending = PendingRange(label: base.appendingPathComponent(path).absoluteString, range: range)
        URLSession.shared.dataTask(with: request) { data, response, error in
            pending.complete(data: data, status: (response as? HTTPURLResponse)?.statusCode ?? 0, error: error)
        }.resume()
        return pending
    }

    static func check(_ data: Data, status: Int, base: URL) throws -> Data {
        guard (200..<300).contains(status) else { throw CLIError("\(base) answered \(status): \(serverMessage(data))") }
        return data
    }

    /// The one-line message of a server's JSON error body, or the start of whatever else it sent.
    static func serverMessage(_ body: Data) -> String {
        let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any]
        return (object?["error"] as? [String: Any])?["message"] as? String ?? String(decoding: body.prefix(200), as: UTF8.self)
    }
}

/// One ranged GET in flight.
private final class PendingRange: @unchecked Sendable {
    let label: String
    let range: Range<Int>
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<Data, CofferCryptoError> = .success(Data())

    init(label: String, range: Range<Int>) {
        self.label = label
        self.range = range
    }

    func complete(data: Data?, status: Int, error: (any Error)?) {
        defer { done.signal() }
        let body = data ?? Data()
        if let error {
            result = .failure(.io(path: label, reason: error.localizedDescription))
        } else if (200..<300).contains(status), status != 206 {
            result = .failure(.io(path: label, reason: "answered \(status) instead of 206 to a Range request"))
        } else if status != 206 {
            result = .failure(.io(path: label, reason: "answered \(status): \(RemoteClient.serverMessage(body))"))
        } else if body.count != range.count {
            result = .failure(.io(path: label, reason: "the server sent \(body.count) bytes for bytes \(range.lowerBound)-\(range.upperBound - 1)"))
        } else {
            result = .success(body)
        }
    }

    func wait() throws(CofferCryptoError) -> Data {
        done.wait()
        return try result.get()
    }
}

/// A blob read through consecutive `Range` requests of `window` bytes, the next one in flight while the current one
/// is consumed: the ciphertext streams into the decryptor with no scratch file and at most two windows in memory.
/// The size is the one the publisher signed, so the client never asks for, or accepts, a byte more.
final class RangedDownload: ByteSource {
    static let window = 8 << 20
    private let client: RemoteClient
    private let path: String
    private let size: Int
    private var requested = 0
    private var consumed = 0
    private var current = Data()
    private var position = 0
    private var pending: PendingRange?

    init(client: RemoteClient, path: String, size: Int) {
        self.client = client
        self.path = path
        self.size = size
        pending = nextRange()
    }

    private func nextRange() -> PendingRange? {
        guard requested < size else { return nil }
        let range = requested..<min(size, requested + Self.window)
        requested = range.upperBound
        return client.fetch(path, range: range)
    }

    var remainingHint: Int? { size - consumed }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        var filled = 0
        while filled < buffer.count {
            if position == current.count {
                guard let waiting = pending else { break }
                current = try waiting.wait()
                position = 0
                pending = nextRange()
            }
            let n = min(buffer.count - filled, current.count - position)
            current.withUnsafeBytes { bytes in
                (buffer.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + position, byteCount: n)
            }
            position += n
            filled += n
        }
        consumed += filled
        return filled
    }
}
