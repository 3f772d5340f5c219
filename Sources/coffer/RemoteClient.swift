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

    func fetchBlob(_ digest: String, to path: String) throws(CofferRegistryError) {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: CofferRegistryError? = nil
        URLSession.shared.downloadTask(with: request("v1/blobs/\(digest)")) { location, response, error in
            defer { done.signal() }
            do {
                let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                if let error { throw CLIError("cannot reach \(self.base): \(error.localizedDescription)") }
                guard let location, (200..<300).contains(status) else {
                    let body = location.flatMap { try? Data(contentsOf: $0) } ?? Data()
                    _ = try Self.check(body, status: status, base: self.base)
                    return
                }
                try FileManager.default.moveItem(at: location, to: URL(fileURLWithPath: path))
            } catch {
                failure = .io(path: "\(self.base)v1/blobs/\(digest)", reason: "\(error)")
            }
        }.resume()
        done.wait()
        if let failure { throw failure }
    }

    static func check(_ data: Data, status: Int, base: URL) throws -> Data {
        guard (200..<300).contains(status) else {
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            let message = (object?["error"] as? [String: Any])?["message"] as? String ?? String(decoding: data.prefix(200), as: UTF8.self)
            throw CLIError("\(base) answered \(status): \(message)")
        }
        return data
    }
}
