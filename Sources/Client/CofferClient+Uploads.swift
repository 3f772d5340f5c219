import AsyncHTTPClient
public import CofferRegistry
import Foundation
public import NIOCore
import NIOHTTP1

extension CofferClient {
    /// `POST /v1/uploads`: starts a resumable upload of one sealed blob (publish scope).
    public func startUpload() async throws(CofferClientError) -> UploadStatus {
        try await call(.POST, "v1/uploads", as: UploadStatus.self)
    }

    /// `GET /v1/uploads/{id}`: where an upload stands, to resume it.
    public func upload(_ id: String) async throws(CofferClientError) -> UploadStatus {
        try await call(.GET, "v1/uploads/\(Self.pathSegment(id))", as: UploadStatus.self)
    }

    /// `PATCH /v1/uploads/{id}`: appends `bytes` at `offset`, which must be where the upload stands (else 409, whose
    /// message names the offset to resume from; ``upload(_:)`` tells it too).
    public func append(to id: String, at offset: Int, _ bytes: ByteBuffer) async throws(CofferClientError) -> UploadStatus {
        let (url, response) = try await exchange(
            .PATCH,
            "v1/uploads/\(Self.pathSegment(id))",
            headers: [(WireHeader.uploadOffset, String(offset)), ("Content-Type", "application/octet-stream")],
            body: .bytes(bytes),
            accepting: [200]
        )
        do {
            return try JSONDecoder().decode(UploadStatus.self, from: Data(try await response.body.collect(upTo: 1 << 16).readableBytesView))
        } catch {
            throw .badAnswer(url: url, reason: "its JSON is not an upload's status (\(error))")
        }
    }

    /// `PUT /v1/uploads/{id}?digest=`: the server checks the SHA-256 and stores the upload as that blob.
    @discardableResult
    public func finishUpload(_ id: String, digest: String) async throws(CofferClientError) -> UploadStored {
        try await call(.PUT, "v1/uploads/\(Self.pathSegment(id))", query: [URLQueryItem(name: "digest", value: digest)], as: UploadStored.self)
    }

    /// `POST /v1/versions`: commits a prepared push whose blobs are all uploaded. The answer is the server's word:
    /// ``push(_:publisher:registryKey:outbox:notice:)`` believes it only once the ledger holds the version.
    public func commit(_ prepared: PreparedPush) async throws(CofferClientError) -> CommitAnswer {
        try await call(.POST, "v1/versions", json: prepared, as: CommitAnswer.self)
    }
}
