import CofferCrypto
import CofferRegistry
import Foundation
import HTTPTypes
import Hummingbird

/// `/v1`: versions, verification, ciphertext downloads with Range, budgets, audit, inference sessions.
struct RegistryController {
    let state: ServerState
    var registry: Registry { state.registry }

    /// Adds the routes under `/v1`, each behind the bearer authenticator of the role it needs.
    func addRoutes(to routes: some RouterMethods<CofferRequestContext>) {
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .reader))
            .get("versions", use: list)
            .get("version", use: show)
            .get("verify", use: verify)
            .get("package", use: package)
            .get("blobs/:digest", use: blob)
            .get("budgets/:dataset", use: budget)
            .get("sessions", use: listSessions)
            .get("ledger", use: ledger)
            .get("ledger/head", use: ledgerHead)
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .publisher))
            .put("alias", use: setAlias)
            .delete("alias", use: removeAlias)
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .inference))
            .post("sessions", use: openSession)
            .post("sessions/:id/predict", use: predict)
            .delete("sessions/:id", use: closeSession)
        routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .admin))
            .put("budgets/:dataset", use: setBudget)
            .get("audit", use: audit)
    }

    /// `GET /v1/versions?model=NAME&where=EXPR&limit=N`: as `coffer list --json`.
    func list(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let model = request.uri.queryParameters.get("model")
        try await registry.require(.reader, on: model, by: holder.principal, action: "list", target: model ?? "*")
        let filter = request.uri.queryParameters.get("where")
        let limit = try integer(request, "limit", default: 100, range: 1...100_000)
        let versions = try await registry.list(model: model, where: filter, limit: limit)
        return try Response.json(JSONValue.array(versions.map(\.json)))
    }

    /// `GET /v1/version?ref=NAME:VERSION`: as `coffer show --json`.
    func show(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let reference = try self.reference(request)
        // The state the token was checked against, a moment ago: one read of the ledger's end less per GET.
        let state = holder.ledgerState
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "show", target: reference.description, in: state)
        return try await Response.json(try registry.show(reference, in: state).json)
    }

    /// `GET /v1/verify?ref=...`: signature, trust, rows and blob digests, server-side (a client re-verifies what it pulls).
    /// It hashes every blob of the version: limited per principal with the web page's checks (``VersionChecks``).
    func verify(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let reference = try self.reference(request)
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "verify", target: reference.description)
        if let refusal = state.versionChecks.admit(holder.principal.name) { throw refusal }
        let report = try await registry.verify(reference)
        return try Response.json(VerifyAnswer(report, includeReadData: false))
    }

    /// `GET /v1/package?ref=...&key_id=...`: the signed documents of a version, and the caller's wrapped key when
    /// its principal holds the decrypt role (`stanza` is null otherwise). The client verifies everything itself.
    func package(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let reference = try self.reference(request)
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "package", target: reference.description)
        let mayDecrypt = try await registry.holds(.decrypt, on: reference.name, holder.principal)
        let keyID = request.uri.queryParameters.get("key_id")
        let package = try await registry.package(
            reference,
            keyID: keyID,
            includeKey: mayDecrypt,
            for: holder.principal.name,
            registryIdentity: mayDecrypt ? try await state.currentRegistryIdentity() : nil
        )
        return try Response.json(package)
    }

    /// Bytes per write of a blob download.
    static let blobPiece = 256 << 10

    /// `GET /v1/blobs/{sha256}`: a sealed blob, streamed in pieces of ``blobPiece``, with `Range: bytes=a-b` answered by 206.
    func blob(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let digest = try context.parameters.require("digest")
        guard digest.count == 64, digest.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw HTTPError(.badRequest, message: "a blob is named by 64 lower-case hex digits")
        }
        guard let model = try await registry.model(ofBlob: digest) else { throw HTTPError(.notFound, message: "no blob \(digest)") }
        try await registry.require(.reader, on: model, by: holder.principal, action: "blob", target: digest)
        guard let size = try await registry.blobSize(digest) else { throw HTTPError(.notFound, message: "blob \(digest) is missing from the store") }
        var range = 0..<size
        var status = HTTPResponse.Status.ok
        var headers: HTTPFields = [.contentType: "application/octet-stream", .acceptRanges: "bytes"]
        if let text = request.headers[.range] {
            guard let parsed = ByteRange.parse(text, size: size) else {
                throw HTTPError(.rangeNotSatisfiable, headers: [.contentRange: "bytes */\(size)"], message: "range \(text) is outside 0..\(size)")
            }
            range = parsed
            status = .partialContent
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound - 1)/\(size)"
        }
        let metrics = state.metrics
        let stream = try await registry.readBlob(digest, range: range)
        let pacing = await AnswerPacing.of(context.channel)
        let body = ResponseBody(contentLength: range.count) { writer in
            // Each piece is read only when the one before it reached the connection: a slow client holds back the reads.
            for try await piece in stream {
                try await writer.write(piece)
                await pacing?.hand(piece.readableBytes, ahead: Self.blobPiece)
                metrics.sent(bytes: piece.readableBytes)
            }
            try await writer.finish(nil)
        }
        return Response(status: status, headers: headers, body: body)
    }

    /// `GET /v1/budgets/{dataset}`: as `coffer budget show --json`.
    func budget(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let dataset = try datasetParameter(context)
        return try await Response.json(try registry.budget(dataset: dataset))
    }

    /// `PUT /v1/budgets/{dataset} {epsilon, delta}`: as `coffer budget set` (admins only).
    func setBudget(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let dataset = try datasetParameter(context)
        let body = try await request.decode(as: SetBudgetRequest.self, context: context)
        try await registry.setBudget(dataset: dataset, epsilon: body.epsilon, delta: body.delta, models: body.models, by: state.signer(for: holder))
        return try Response.json(try await registry.budget(dataset: dataset))
    }

    /// `GET /v1/audit?since=T`: admins only.
    func audit(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        try await registry.require(.admin, on: nil, by: holder.principal, action: "audit", target: "*")
        return try await Response.json(try registry.auditEntries(since: request.uri.queryParameters.get("since")))
    }

    /// `PUT /v1/alias?ref=NAME@ALIAS {version}`: as `coffer alias set` (publisher on the model; policies apply).
    func setAlias(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let (model, alias) = try aliasReference(request)
        let body = try await request.decode(as: SetAliasRequest.self, context: context)
        try await registry.setAlias(alias, model: model, version: body.version, by: state.signer(for: holder))
        return try Response.json(AliasAnswer(model: model, alias: alias, version: body.version))
    }

    /// `DELETE /v1/alias?ref=NAME@ALIAS`: as `coffer alias rm`.
    func removeAlias(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let (model, alias) = try aliasReference(request)
        try await registry.removeAlias(alias, model: model, by: state.signer(for: holder))
        return Response(status: .noContent)
    }

    /// `GET /v1/ledger?after=N&limit=M`: the signed records after `N` (at most `M`, 10000): a client replays them
    /// itself against the root it pinned, so nothing here needs trusting (docs/FORMAT.md, "Remote clients").
    func ledger(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let after = try integer(request, "after", default: 0, range: 0...Int(Int64.max))
        let limit = try integer(request, "limit", default: 1000, range: 1...10_000)
        let records = try await registry.ledgerRecords(after: Int64(after), limit: limit)
        return try Response.json(LedgerPage(records: records.map { .init(seq: $0.seq, envelope: Data($0.envelope).base64EncodedString()) }))
    }

    /// `GET /v1/ledger/head`: the newest state head the registry's key signed (the server re-signs it every few seconds).
    func ledgerHead(_ request: Request, context: CofferRequestContext) async throws -> Response {
        guard let head = try await registry.stateHead() else {
            throw HTTPError(.serviceUnavailable, message: "the registry has no signed state head yet")
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: head.jsonBytes)))
    }

    /// A whole-number query parameter within `range`, or `default` when absent; anything else is a 400 naming it.
    private func integer(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = request.uri.queryParameters.get(name) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw HTTPError(
                .badRequest,
                message: "\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound), got '\(text.prefix(40))'"
            )
        }
        return number
    }

    /// The `{dataset}` path segment, percent-decoded: an id such as `hf:org/name` travels as `hf:org%2Fname`.
    private func datasetParameter(_ context: CofferRequestContext) throws -> String {
        let raw = try context.parameters.require("dataset")
        guard let dataset = raw.removingPercentEncoding else {
            throw HTTPError(.badRequest, message: "dataset id '\(raw)' is not percent-encoded UTF-8")
        }
        return dataset
    }

    private func aliasReference(_ request: Request) throws -> (model: String, alias: String) {
        let reference = try self.reference(request)
        guard case .alias(let alias) = reference.selector else { throw HTTPError(.badRequest, message: "ref must be NAME@ALIAS") }
        return (reference.name, alias)
    }

    private func reference(_ request: Request) throws -> ModelReference {
        guard let text = request.uri.queryParameters.get("ref") else { throw HTTPError(.badRequest, message: "the ref query parameter is required") }
        return try ModelReference(parsing: text)
    }
}

extension ISO8601DateFormatter {
    static var fractional: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
