public import CofferCrypto
public import CofferRegistry
import Foundation
import NIOHTTP1

/// An inference session a server opened: its description, and its token (`cfs_...`) in sodium memory, which
/// ``CofferClient/predict(session:rows:)`` sends so that any server of the registry can answer.
public struct RemoteSession: Sendable {
    public let id: String
    public let model: String
    public let version: String
    public let expiresAt: String
    public let maxUses: Int?
    /// Nil from a server that does not hand session tokens out.
    public let token: Secret?

    public init(id: String, model: String, version: String, expiresAt: String, maxUses: Int?, token: Secret?) {
        self.id = id
        self.model = model
        self.version = version
        self.expiresAt = expiresAt
        self.maxUses = maxUses
        self.token = token
    }
}

extension CofferClient {
    /// `GET /v1/sessions`: the token principal's sessions (every session for an admin), never their tokens.
    public func sessions() async throws(CofferClientError) -> [SessionInfo] {
        try await call(.GET, "v1/sessions", as: [SessionInfo].self)
    }

    /// `POST /v1/sessions`: opens a session on `reference` (inference role); the server loads the model into its
    /// locked memory.
    ///
    /// - Parameters:
    ///   - ttl: seconds, 1 to a year.
    ///   - maxUses: predictions allowed, or nil for as many as the TTL allows.
    public func openSession(_ reference: String, ttl: Double, maxUses: Int? = nil) async throws(CofferClientError) -> RemoteSession {
        var opened = try await call(
            .POST,
            "v1/sessions",
            json: OpenSessionRequest(ref: reference, ttlSeconds: ttl, maxUses: maxUses),
            as: SessionOpened.self
        )
        var token: Secret?
        if let bytes = opened.takeToken() { token = Secret(bytes) }
        return RemoteSession(
            id: opened.id,
            model: opened.model,
            version: opened.version,
            expiresAt: opened.expiresAt,
            maxUses: opened.maxUses,
            token: token
        )
    }

    /// `POST /v1/sessions/{id}/predict`: one use of the session. With the session's token, a server that did not open
    /// the session (another replica) opens it from its key copy.
    public func predict(session id: String, rows: [[String: Double]], token: Secret? = nil) async throws(CofferClientError) -> [JSONValue] {
        let headers = token.map { [(WireHeader.sessionToken, $0.text())] } ?? []
        return try await call(
            .POST,
            "v1/sessions/\(Self.pathSegment(id))/predict",
            json: PredictRequest(rows: rows),
            headers: headers,
            as: PredictAnswer.self
        ).predictions
    }

    /// ``predict(session:rows:token:)`` for a session this client opened.
    public func predict(session: RemoteSession, rows: [[String: Double]]) async throws(CofferClientError) -> [JSONValue] {
        try await predict(session: session.id, rows: rows, token: session.token)
    }

    /// `DELETE /v1/sessions/{id}`: revokes the session; the server wipes its model.
    public func closeSession(_ id: String) async throws(CofferClientError) {
        _ = try await raw(.DELETE, "v1/sessions/\(Self.pathSegment(id))")
    }
}
