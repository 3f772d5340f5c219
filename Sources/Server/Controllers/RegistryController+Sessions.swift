import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation
import HTTPTypes
import Hummingbird

/// `/v1/sessions`: inference sessions, each model held decrypted in this server's locked memory, and predictions.
extension RegistryController {
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
        // A principal that may not open it hears so (403), whether or not it is at its limit (helper-48: 429 first).
        try await registry.requireInference(reference, by: holder.principal)
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
        state.refusals.add(RefusalKey(principal: principal, action: "session.open", target: target, reason: reason))
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
            state.refusals.add(RefusalKey(principal: holder.principal.name, action: "predict", target: id, reason: reason))
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
            state.refusals.add(RefusalKey(principal: holder.principal.name, action: "predict", target: id, reason: reason))
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

    /// `DELETE /v1/sessions/{id}`: revokes the session and wipes its model from the server's memory.
    func closeSession(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let id = try context.parameters.require("id")
        try await registry.revokeSession(id: id, principal: holder.principal, asAdmin: holder.scope == .admin)
        state.sessions.remove(id)
        return Response(status: .noContent)
    }

    /// Runs the training module's parsing of request input: its errors are the client's (400).
    private func parse<T>(_ body: () throws(CofferTrainingError) -> T) throws -> T {
        do { return try body() } catch { throw HTTPError(.badRequest, message: error.description) }
    }
}
