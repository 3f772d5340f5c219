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

    var endpoints: [Endpoint] {
        [
            Endpoint(.get, "/v1/registry", registryIdentity), Endpoint(.post, "/v1/uploads", start), Endpoint(.get, "/v1/uploads/:id", status),
            Endpoint(.patch, "/v1/uploads/:id", append), Endpoint(.put, "/v1/uploads/:id", finish), Endpoint(.post, "/v1/versions", commit),
        ]
    }

    static let uploadOffset = HTTPField.Name("Upload-Offset")!

    /// `GET /v1/registry`: the registry's public identity. Clients pin it (`--registry-key`) rather than trust this.
    func registryIdentity(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        _ = try await authenticate(request, &context, state: state, role: .reader)
        let current = try await registry.identity
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: current.jsonBytes))
        )
    }

    /// `POST /v1/uploads`: a new upload, which any server over this registry continues (its state is a row).
    func start(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try await authenticate(request, &context, state: state, role: .publisher)
        let upload = try await registry.startUpload(by: holder.principal)
        return try json(["id": .string(upload.id), "offset": .number(0)], status: .created)
    }

    func status(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try await authenticate(request, &context, state: state, role: .publisher)
        let upload = try await registry.upload(try context.parameters.require("id"), of: holder.principal)
        return try json(["id": .string(upload.id), "offset": .number(Double(upload.offset))])
    }

    func append(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try await authenticate(request, &context, state: state, role: .publisher)
        let id = try context.parameters.require("id")
        guard let text = request.headers[Self.uploadOffset], let start = Int(text), start >= 0 else {
            throw HTTPError(.badRequest, message: "PATCH needs an Upload-Offset header")
        }
        let body = BlobStream(length: request.headers[.contentLength].flatMap { Int($0) }, request.body)
        let upload = try await registry.appendUpload(id, at: start, body, limit: state.maxUploadSize, by: holder.principal)
        return try json(["id": .string(id), "offset": .number(Double(upload.offset))])
    }

    func finish(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try await authenticate(request, &context, state: state, role: .publisher)
        let id = try context.parameters.require("id")
        guard let digest = request.uri.queryParameters.get("digest"), digest.count == 64 else {
            throw HTTPError(.badRequest, message: "PUT needs ?digest= the blob's SHA-256 (64 hex digits)")
        }
        try await registry.finishUpload(id, digest: String(digest), by: holder.principal)
        return try json(["digest": .string(String(digest))], status: .created)
    }

    /// `POST /v1/versions` with a `PreparedPush`: the version is checked and committed as a local push would be.
    func commit(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try await authenticate(request, &context, state: state, role: .publisher)
        let prepared = try await request.decode(as: PreparedPush.self, context: context)
        let result = try await registry.commitPushed(
            prepared,
            principal: holder.principal,
            registryIdentity: try await state.currentRegistryIdentity()
        )
        return try json(["model": .string(result.model), "version": .string(result.version), "digest": .string(result.digest)], status: .created)
    }

    private func json(_ fields: [String: JSONValue], status: HTTPResponse.Status = .ok) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(JSONValue.object(fields))))
        )
    }
}
