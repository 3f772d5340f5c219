import CofferCrypto
import CofferRegistry
import CofferTraining
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
    func verify(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let reference = try self.reference(request)
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "verify", target: reference.description)
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
        let body = ResponseBody(contentLength: range.count) { writer in
            // Each piece is read only when the last one was written: a slow client holds back the reads.
            for try await piece in stream {
                try await writer.write(piece)
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
        try await registry.setBudget(dataset: dataset, epsilon: body.epsilon, delta: body.delta, by: state.signer(for: holder))
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

    /// `GET /v1/sessions`: the caller's sessions (every session for an admin token), never their tokens.
    func listSessions(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let all = try await registry.sessions()
        var isAdmin = false
        if holder.scope == .admin { isAdmin = (try? await registry.holds(.admin, on: nil, holder.principal)) == true }
        return try Response.json(isAdmin ? all : all.filter { $0.principal == holder.principal.name })
    }

    /// `POST /v1/sessions {ref, ttl_seconds, max_uses?}`: opens a session for the token's principal and loads the
    /// model into the server's locked memory; returns `{id, model, version, expires_at, max_uses}`.
    func openSession(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let body = try await request.decode(as: OpenSessionRequest.self, context: context)
        guard body.ttlSeconds >= 1, body.ttlSeconds <= Registry.maximumLifetime else {
            throw HTTPError(.badRequest, message: "ttl_seconds must be from 1 to \(Int(Registry.maximumLifetime)) (a year)")
        }
        if let uses = body.maxUses, !(1...1_000_000_000).contains(uses) {
            throw HTTPError(.badRequest, message: "max_uses must be from 1 to 1000000000")
        }
        let reference = try ModelReference(parsing: body.ref)
        // Before the registry records the session: one refused here holds no predictions.
        try await reserveSessionSlot(holder.principal.name, target: body.ref)
        defer { state.sessions.release(for: holder.principal.name) }
        let opened = try await registry.openSession(
            reference,
            principal: holder.principal,
            unwrappingWith: try await state.currentRegistryIdentity(),
            ttl: body.ttlSeconds,
            maxUses: body.maxUses
        )
        let info = opened.info
        do { try await load(opened.token, id: info.id, principal: holder.principal.name) } catch {
            // Recorded but not loaded: revoked, so that it holds no predictions of a limited grant for its lifetime.
            try? await registry.revokeSession(id: info.id, principal: holder.principal, asAdmin: false)
            throw error
        }
        // The session token is shown once: a client sends it with its predictions, so that any server of this
        // registry (a replica that did not open the session) can open the session's key copy.
        let token = opened.token.text()
        let tokenText = token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        return try Response.json(
            SessionOpened(id: info.id, model: info.model, version: info.version, expiresAt: info.expiresAt, maxUses: info.maxUses, token: tokenText),
            status: .created
        )
    }

    /// Takes a slot for a model of `principal`'s (give it back with `state.sessions.release(for:)`), or refuses (429,
    /// audited) a principal that holds ``PredictLimits/sessionsPerPrincipal`` models here already, or is loading them.
    private func reserveSessionSlot(_ principal: String, target: String) async throws {
        let limit = state.predictLimits.sessionsPerPrincipal
        guard !state.sessions.reserve(for: principal, limit: limit) else { return }
        let reason = "\(principal) holds \(limit) sessions open on this server, its limit"
        try? await registry.recordRefusal(action: "session.open", target: target, reason: reason, principal: principal)
        state.metrics.refusal()
        throw HTTPError(.tooManyRequests, message: "\(reason): revoke one (DELETE /v1/sessions/ID) or wait for one to end")
    }

    /// Opens the session's model into this server's locked memory, from its key copy (no use is taken).
    private func load(_ token: borrowing SessionToken, id: String, principal: String) async throws {
        let session = try await InferenceSession(registry: registry, token: token, countingUse: false)
        guard session.info.id == id, session.info.principal == principal else {
            throw HTTPError(.forbidden, message: "the session token given is not session \(id)'s")
        }
        let expires = ISO8601DateFormatter.fractional.date(from: session.info.expiresAt) ?? Date()
        state.sessions.insert(.init(session, principal: principal, expires: expires), id: id)
    }

    /// Runs a session check; when the registry refuses the session (revoked elsewhere, expired, used up, grant lost),
    /// this server wipes the model it holds for it at once instead of at the session's expiry.
    private func dropOnRefusal(
        _ id: String,
        asking principal: String,
        _ check: () async throws(CofferRegistryError) -> Void
    ) async throws(CofferRegistryError) {
        do { try await check() } catch {
            // Only its own principal's refusal: anyone else is told "unknown session" too, and would have evicted it
            // (helper-46).
            switch error {
            case .sessionRefused, .unknownSession:
                if state.sessions.get(id)?.principal == principal { state.sessions.remove(id) }
            default: break
            }
            throw error
        }
    }

    static let sessionTokenHeader = HTTPField.Name(WireHeader.sessionToken)!

    /// `POST /v1/sessions/{id}/predict {rows: [{feature: value}]}`: per-task predictions, one use of the session.
    func predict(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let id = try context.parameters.require("id")
        let body = try await request.decode(as: PredictRequest.self, context: context)
        guard let first = body.rows.first else { throw HTTPError(.badRequest, message: "rows is empty") }
        let limits = state.predictLimits
        if body.rows.count > limits.maxRows {
            let reason = "\(body.rows.count) rows, over the \(limits.maxRows) a request may hold"
            try? await registry.recordRefusal(action: "predict", target: id, reason: reason, principal: holder.principal.name)
            state.metrics.refusal()
            throw HTTPError(.contentTooLarge, message: "\(body.rows.count) rows: a predict request holds at most \(limits.maxRows)")
        }
        // The registry says first why a session is refused (revoked, expired, unknown, someone else's): waiting out the
        // rate limit would not help those.
        try await dropOnRefusal(id, asking: holder.principal.name) { () async throws(CofferRegistryError) in
            try await registry.checkSession(id: id, principal: holder.principal.name)
        }
        // The rate limit comes before the use is counted, so a refused request does not spend one; its bucket is
        // shared by every server over this registry's metadata store.
        if let wait = try await registry.takeRateToken(session: id, rate: limits.rate, burst: limits.burst) {
            let reason = "rate limit of \(limits.rate) per second"
            try? await registry.recordRefusal(action: "predict", target: id, reason: reason, principal: holder.principal.name)
            state.metrics.refusal()
            let seconds = max(1, Int(wait.rounded(.up)))
            throw HTTPError(
                .tooManyRequests,
                headers: [.retryAfter: "\(seconds)"],
                message: "session \(id) is limited to \(limits.rate) predictions per second: retry in \(seconds) s"
            )
        }
        if state.sessions.get(id) == nil {
            // Another server opened it: this one opens it too, from the session's key copy and the token sent with it.
            guard let text = request.headers[Self.sessionTokenHeader] else {
                throw HTTPError(.notFound, message: "session \(id) is not open on this server: send its token in Coffer-Session-Token")
            }
            let secret = SecureBytes(isolatedCount: text.utf8.count)
            secret.withUnsafeMutableBytes { $0.copyBytes(from: text.utf8) }
            let token: SessionToken
            do { token = try SessionToken(text: secret) } catch {
                throw HTTPError(.badRequest, message: "Coffer-Session-Token is not a session token")
            }
            // Another server's session loaded here takes one of the principal's slots on this server too.
            try await reserveSessionSlot(holder.principal.name, target: id)
            defer { state.sessions.release(for: holder.principal.name) }
            try await load(token, id: id, principal: holder.principal.name)
        }
        guard let loaded = state.sessions.get(id).flatMap({ $0.principal == holder.principal.name ? $0 : nil }) else {
            throw HTTPError(.notFound, message: "session \(id) is not open on this server")
        }
        // The table is built from the values, not through CSV text: a feature named "x\n0,1" made 400,000 rows of one
        // (helper-46), past the row limit above.
        let columns = first.keys.sorted()
        var values: [[Double]] = []
        values.reserveCapacity(body.rows.count)
        for (i, row) in body.rows.enumerated() {
            guard Set(row.keys) == Set(columns) else { throw HTTPError(.badRequest, message: "row \(i + 1) has other columns than row 1") }
            values.append(columns.map { row[$0]! })
        }
        // A request that cannot be answered (bad rows, features the model lacks) spends no use: the prediction runs
        // first, and only a successful one takes its use (and is released only if the use was granted).
        let table = try parse { () throws(CofferTrainingError) in try CSVTable(columns: columns, rows: values, source: "rows") }
        try await dropOnRefusal(id, asking: holder.principal.name) { () async throws(CofferRegistryError) in
            try await registry.checkSession(id: id, principal: holder.principal.name)
        }
        let view: CheckpointView
        let predictions: [[Float]]
        do { (view, predictions) = try loaded.session.predict(table) } catch {
            // A model that cannot answer spends nothing, and the log says the call failed rather than nothing at all.
            try? await registry.recordFailedPrediction(session: id, principal: holder.principal.name, reason: error.description)
            throw error
        }
        // The registry counts the uses, one per row answered, and says why it refuses them. Not through dropOnRefusal:
        // "3 uses left, this call needs 5" ends nothing (a smaller call still fits), and a final refusal (revoked,
        // expired, used up, grant lost) is found by the check before the next prediction, which drops the model then.
        try await registry.useSession(id: id, principal: holder.principal.name, uses: table.rowCount)
        let rows = predictionRows(predictions, tasks: view.architecture.tasks, preprocessing: view.preprocessing, rows: table.rowCount)
        return try Response.json(PredictAnswer(predictions: rows))
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

    /// `DELETE /v1/sessions/{id}`: revokes the session and wipes its model from the server's memory.
    func closeSession(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let id = try context.parameters.require("id")
        try await registry.revokeSession(id: id, principal: holder.principal, asAdmin: holder.scope == .admin)
        state.sessions.remove(id)
        return Response(status: .noContent)
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

    /// Runs library code, turning its errors into HTTP errors with the same one-line message.

    /// Runs the training module's parsing of request input: its errors are the client's (400).
    private func parse<T>(_ body: () throws(CofferTrainingError) -> T) throws -> T {
        do { return try body() } catch { throw HTTPError(.badRequest, message: error.description) }
    }
}

extension ISO8601DateFormatter {
    static var fractional: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
