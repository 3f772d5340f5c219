import CofferCrypto
import CofferRegistry
import Foundation
import HTTPTypes
import Hummingbird

/// Pushes over HTTP: the client seals locally and uploads ciphertext in resumable uploads (in the manner of the
/// OCI distribution protocol), then commits the version.
///
/// `POST /v1/uploads` starts one; `PATCH /v1/uploads/{id}` with `Upload-Offset: N` appends the body at N (a
/// different offset gets 409 with the current one); `GET /v1/uploads/{id}` tells the offset to resume from;
/// `PUT /v1/uploads/{id}?digest=HEX` checks the SHA-256 and makes it a blob of the store; `POST /v1/versions`
/// commits a `PreparedPush`. Upload state lives in the registry's metadata store, so replicas share it.
struct UploadController {
    let state: ServerState
    var registry: Registry { state.registry }

    /// Adds `/v1/registry` (reader) and the upload and commit routes (publisher).
    func addRoutes(to routes: some RouterMethods<CofferRequestContext>) {
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .reader))
            .get("registry", use: registryIdentity)
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .publisher))
            .post("uploads", use: start)
            .get("uploads/:id", use: status)
            .patch("uploads/:id", use: append)
            .put("uploads/:id", use: finish)
            .post("versions", use: commit)
    }

    static let uploadOffset = HTTPField.Name(WireHeader.uploadOffset)!

    /// `GET /v1/registry`: the registry's public identity. Clients pin it (`--registry-key`) rather than trust this.
    func registryIdentity(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let current = try await registry.identity
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: current.jsonBytes))
        )
    }

    /// `POST /v1/uploads`: a new upload, which any server over this registry continues (its state is a row).
    func start(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let upload = try await registry.startUpload(by: holder.principal)
        return try Response.json(UploadStatus(id: upload.id, offset: 0), status: .created)
    }

    func status(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let upload = try await registry.upload(try context.parameters.require("id"), of: holder.principal)
        return try Response.json(UploadStatus(id: upload.id, offset: upload.offset))
    }

    func append(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let id = try context.parameters.require("id")
        guard let text = request.headers[Self.uploadOffset], let start = Int(text), start >= 0 else {
            throw HTTPError(.badRequest, message: "PATCH needs an Upload-Offset header")
        }
        let body = BlobStream(length: request.headers[.contentLength].flatMap { Int($0) }, ClientBody(base: request.body))
        let upload = try await registry.appendUpload(id, at: start, body, limit: state.maxUploadSize, by: holder.principal)
        return try Response.json(UploadStatus(id: id, offset: upload.offset))
    }

    func finish(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let id = try context.parameters.require("id")
        guard let digest = request.uri.queryParameters.get("digest"), digest.count == 64 else {
            throw HTTPError(.badRequest, message: "PUT needs ?digest= the blob's SHA-256 (64 hex digits)")
        }
        try await registry.finishUpload(id, digest: String(digest), by: holder.principal)
        return try Response.json(UploadStored(digest: String(digest)), status: .created)
    }

    /// `POST /v1/versions` with a `PreparedPush`: the version is checked and committed as a local push would be.
    func commit(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let prepared = try await request.decode(as: PreparedPush.self, context: context)
        let result = try await registry.commitPushed(
            prepared,
            principal: holder.principal,
            registryIdentity: try await state.currentRegistryIdentity()
        )
        return try Response.json(CommitAnswer(model: result.model, version: result.version, digest: result.digest), status: .created)
    }
}

/// A request body whose failure is the client's (it went away, or was cut for sending too slowly: ClientDeadlineHandler):
/// a 400 in the log and the metrics, not a 500 that would page an operator for every slow client an attack sends.
private struct ClientBody<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    let base: Base

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator

        mutating func next() async throws -> ByteBuffer? {
            do {
                return try await base.next()
            } catch {
                throw CofferRegistryError.invalidInput("the request body ended before its end (the client went away or was too slow)")
            }
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator()) }
}
