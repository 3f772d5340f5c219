import AsyncHTTPClient
import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1

/// Blobs: their size, ranged reads, chunked and monolithic uploads, deletion.
extension OCIDistributionClient {
    /// The blob's size from `HEAD`, or nil when the repository does not hold it.
    public func blobSize(_ digest: String) async throws(CofferRegistryError) -> Int? {
        try Self.checkDigest(digest)
        let response = try await send(.HEAD, url("blobs/sha256:\(digest)"), access: .pull, what: "HEAD blob sha256:\(digest)")
        switch response.status.code {
        case 200:
            guard let length = response.headers.first(name: "Content-Length").flatMap(Int.init), length >= 0 else {
                throw .unavailable(engine: endpoint.name, reason: "HEAD blob sha256:\(digest) answered without a Content-Length")
            }
            return length
        case 404:
            return nil
        default:
            throw await failure(response, "HEAD blob sha256:\(digest)")
        }
    }

    /// `GET` of a blob or of bytes `range` of it; nil when the repository does not hold it. The answer's body is left to
    /// the caller; a registry that ignores `Range` answers 200 with the whole blob, which the caller must cut.
    func getBlob(_ digest: String, range: Range<Int>?) async throws(CofferRegistryError) -> HTTPClientResponse? {
        try Self.checkDigest(digest)
        var headers: [(String, String)] = []
        if let range { headers.append(("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")) }
        let response = try await send(.GET, url("blobs/sha256:\(digest)"), headers: headers, access: .pull, what: "GET blob sha256:\(digest)")
        switch response.status.code {
        case 200, 206:
            return response
        case 404:
            _ = try? await response.body.collect(upTo: 1 << 16)
            return nil
        case 416:
            let total = response.headers.first(name: "Content-Range").flatMap { $0.split(separator: "/").last.flatMap { Int($0) } }
            _ = try? await response.body.collect(upTo: 1 << 16)
            let bounds = range.map { "bytes \($0.lowerBound)-\($0.upperBound)" } ?? "the range"
            throw .invalidInput("\(bounds) lie outside blob sha256:\(digest)\(total.map { " (\($0) bytes)" } ?? "")")
        default:
            throw await failure(response, "GET blob sha256:\(digest)")
        }
    }

    /// Opens an upload session (`POST /v2/REPO/blobs/uploads/`); returns its absolute `Location`.
    public func startUpload() async throws(CofferRegistryError) -> String {
        let response = try await send(.POST, url("blobs/uploads/"), access: .push, what: "POST blobs/uploads/")
        guard response.status.code == 202, let location = response.headers.first(name: "Location") else {
            throw await failure(response, "POST blobs/uploads/")
        }
        _ = try? await response.body.collect(upTo: 1 << 16)
        return absolute(location)
    }

    /// Sends bytes `start..<start + body.count` of an upload (`PATCH` with `Content-Range`); returns the `Location` the
    /// next request must use.
    func patch(_ location: String, start: Int, _ body: Body) async throws(CofferRegistryError) -> String {
        let end = start + body.count - 1
        let headers = [("Content-Type", "application/octet-stream"), ("Content-Range", "\(start)-\(end)")]
        let response = try await send(.PATCH, location, headers: headers, body: body, access: .push, what: "PATCH upload bytes \(start)-\(end)")
        guard response.status.code == 202, let next = response.headers.first(name: "Location") else {
            if response.status.code == 404 || response.status.code == 416 {
                let status = response.status.code
                let code = Self.errorCode(try? await response.body.collect(upTo: 1 << 16)) ?? ""
                // distribution signs the offset into the Location: one that is stale (a PATCH whose answer was lost) or an
                // offset that is not where the upload stands is refused, and no older Location reaches the session again.
                throw .uploadSessionLost(
                    engine: endpoint.name,
                    reason:
                        "the upload session refused bytes \(start)-\(end) (\(status)\(code.isEmpty ? "" : " \(code)")): it is gone or stands at another offset"
                )
            }
            throw await failure(response, "PATCH upload bytes \(start)-\(end)")
        }
        if let range = response.headers.first(name: "Range"), range != "0-\(end)" {
            throw .unavailable(engine: endpoint.name, reason: "after bytes \(start)-\(end) the registry holds \(range) of the upload")
        }
        _ = try? await response.body.collect(upTo: 1 << 16)
        return absolute(next)
    }

    /// Closes an upload as blob `digest` (`PUT LOCATION?digest=sha256:D`), with the last bytes in `body` if any.
    func finishUpload(_ location: String, digest: String, start: Int, body: Body?) async throws(CofferRegistryError) {
        try Self.checkDigest(digest)
        var headers: [(String, String)] = []
        if let body {
            headers.append(("Content-Type", "application/octet-stream"))
            if start > 0 { headers.append(("Content-Range", "\(start)-\(start + body.count - 1)")) }
        }
        let separator = location.contains("?") ? "&" : "?"
        let what = "PUT blob sha256:\(digest)"
        let response = try await send(.PUT, "\(location)\(separator)digest=sha256:\(digest)", headers: headers, body: body, access: .push, what: what)
        switch response.status.code {
        case 201:
            _ = try? await response.body.collect(upTo: 1 << 16)
        case 400:
            let buffer = try? await response.body.collect(upTo: 1 << 16)
            let code = Self.errorCode(buffer)
            if code == "DIGEST_INVALID" || code == "SIZE_INVALID" {
                throw .invalidInput("the uploaded bytes do not hash to sha256:\(digest): \(endpoint.name) refused them (\(code!))")
            }
            throw .unavailable(engine: endpoint.name, reason: "\(what) answered 400\(code.map { ": \($0)" } ?? "")")
        default:
            throw await failure(response, what)
        }
    }

    /// Cancels an upload session; failures are ignored, as distribution-spec advises (the registry expires it anyway).
    func cancelUpload(_ location: String) async {
        if let response = try? await send(.DELETE, location, access: .push, what: "DELETE upload") {
            _ = try? await response.body.collect(upTo: 1 << 16)
        }
    }

    /// Deletes a blob from the repository. Returns false when the registry has deletion disabled (405, or 400
    /// `UNSUPPORTED`): the blob then stays, as docs/FORMAT.md says. A blob already gone is not an error.
    @discardableResult
    public func deleteBlob(_ digest: String) async throws(CofferRegistryError) -> Bool {
        try Self.checkDigest(digest)
        let what = "DELETE blob sha256:\(digest)"
        let response = try await send(.DELETE, url("blobs/sha256:\(digest)"), access: .delete, what: what)
        switch response.status.code {
        case 202, 200, 204, 404:
            _ = try? await response.body.collect(upTo: 1 << 16)
            return true
        case 405:
            _ = try? await response.body.collect(upTo: 1 << 16)
            return false
        case 400:
            let buffer = try? await response.body.collect(upTo: 1 << 16)
            if Self.errorCode(buffer) == "UNSUPPORTED" { return false }
            throw .unavailable(engine: endpoint.name, reason: "\(what) answered 400\(Self.errorCode(buffer).map { ": \($0)" } ?? "")")
        default:
            throw await failure(response, what)
        }
    }

    /// Uploads small bytes as a blob unless the repository already holds it (configs, envelopes, bundles).
    func putSmallBlob(_ bytes: [UInt8]) async throws(CofferRegistryError) -> String {
        let digest = Digest.hex(Digest.sha256(bytes))
        if try await blobSize(digest) == bytes.count { return digest }
        let location = try await startUpload()
        try await finishUpload(location, digest: digest, start: 0, body: .bytes(bytes))
        return digest
    }

    /// Reads a small blob whole (at most `limit` bytes) and checks it hashes to `digest`.
    func getSmallBlob(_ digest: String, limit: Int) async throws(CofferRegistryError) -> [UInt8]? {
        guard let response = try await getBlob(digest, range: nil) else { return nil }
        let buffer: ByteBuffer
        do {
            buffer = try await response.body.collect(upTo: limit)
        } catch {
            throw .unavailable(engine: endpoint.name, reason: "blob sha256:\(digest) is larger than \(limit) bytes or could not be read")
        }
        let bytes = Array(buffer.readableBytesView)
        guard Digest.hex(Digest.sha256(bytes)) == digest else {
            throw .tampered("\(endpoint.name) returned a blob whose SHA-256 is not sha256:\(digest)")
        }
        return bytes
    }
}
