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
/// `PUT /v1/uploads/{id}?digest=HEX` checks the SHA-256 and moves the blob into the store; `POST /v1/versions`
/// commits a `PreparedPush`.
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
    /// Unfinished uploads one principal may hold at once.
    static let maximumOpenUploads = 64

    /// An upload's file, named by its id and its owner: another principal's request finds no such upload, so an
    /// upload id alone does not let a second publisher append to (or finish) someone else's blob.
    private func path(_ id: String, of holder: TokenHolder) throws -> String {
        guard id.count == 32, id.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { throw HTTPError(.badRequest, message: "not an upload id") }
        let owner = Digest.hex(Digest.sha256(Array("coffer/v1/upload-owner\u{0}\(holder.principal.name)".utf8)).prefix(8))
        return "\(registry.home)/tmp/upload-\(id)-\(owner)"
    }

    private func offset(_ path: String) throws -> Int {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue else {
            throw HTTPError(.notFound, message: "no such upload (finished, or collected by gc)")
        }
        return size
    }

    /// `GET /v1/registry`: the registry's public identity. Clients pin it (`--registry-key`) rather than trust this.
    func registryIdentity(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        _ = try authenticate(request, &context, state: state, role: .reader)
        let current = try { () throws(CofferRegistryError) in try registry.identity }()
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: current.jsonBytes))
        )
    }

    func start(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try authenticate(request, &context, state: state, role: .publisher)
        do { try registry.requirePublisherSomewhere(holder.principal, action: "upload", target: "-") } catch { throw httpError(error) }
        // Unfinished uploads take disk until gc: a principal holds a bounded number at once.
        let suffix = String(try path(String(repeating: "0", count: 32), of: holder).split(separator: "-").last!)
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "\(registry.home)/tmp")) ?? []).filter {
            $0.hasPrefix("upload-") && $0.hasSuffix("-\(suffix)")
        }
        guard open.count < Self.maximumOpenUploads else {
            throw HTTPError(
                .tooManyRequests,
                message: "\(holder.principal.name) has \(open.count) unfinished uploads, the most one may hold: finish them, or wait for gc"
            )
        }
        let id = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        guard FileManager.default.createFile(atPath: try path(id, of: holder), contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw HTTPError(.internalServerError, message: "cannot create the upload")
        }
        return try json(["id": .string(id), "offset": .number(0)], status: .created)
    }

    func status(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try authenticate(request, &context, state: state, role: .publisher)
        let id = try context.parameters.require("id")
        return try json(["id": .string(id), "offset": .number(Double(try offset(try path(id, of: holder))))])
    }

    func append(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try authenticate(request, &context, state: state, role: .publisher)
        let id = try context.parameters.require("id")
        let file = try path(id, of: holder)
        let current = try offset(file)
        guard let text = request.headers[Self.uploadOffset], let start = Int(text) else {
            throw HTTPError(.badRequest, message: "PATCH needs an Upload-Offset header")
        }
        guard start == current else {
            throw HTTPError(.conflict, message: "the upload is at offset \(current), not \(start): resume from \(current)")
        }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        defer { try? handle.close() }
        try handle.seekToEnd()
        var written = current
        for try await buffer in request.body {
            written += buffer.readableBytes
            guard written <= state.maxUploadSize else {
                throw HTTPError(.contentTooLarge, message: "an upload may not exceed \(state.maxUploadSize) bytes")
            }
            try handle.write(contentsOf: Data(buffer.readableBytesView))
        }
        return try json(["id": .string(id), "offset": .number(Double(written))])
    }

    func finish(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try authenticate(request, &context, state: state, role: .publisher)
        let id = try context.parameters.require("id")
        let file = try path(id, of: holder)
        _ = try offset(file)
        guard let digest = request.uri.queryParameters.get("digest"), digest.count == 64 else {
            throw HTTPError(.badRequest, message: "PUT needs ?digest= the blob's SHA-256 (64 hex digits)")
        }
        do {
            try registry.adoptBlob(at: file, digest: digest, by: holder.principal)
        } catch {
            unlink(file)
            throw httpError(error)
        }
        return try json(["digest": .string(digest)], status: .created)
    }

    /// `POST /v1/versions` with a `PreparedPush`: the version is checked and committed as a local push would be.
    func commit(_ request: Request, context: CofferRequestContext) async throws -> Response {
        var context = context
        let holder = try authenticate(request, &context, state: state, role: .publisher)
        let prepared = try await request.decode(as: PreparedPush.self, context: context)
        let result: PushResult
        do throws(CofferRegistryError) {
            result = try registry.commitPushed(prepared, principal: holder.principal, registryIdentity: try state.currentRegistryIdentity())
        } catch {
            if case .refused = error { state.metrics.refusal() }
            throw httpError(error)
        }
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
