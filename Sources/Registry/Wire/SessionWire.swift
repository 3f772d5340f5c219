public import CofferCrypto

/// `POST /v1/sessions`'s body.
public struct OpenSessionRequest: Sendable, Equatable, Codable {
    /// `NAME`, `NAME:VERSION` or `NAME@ALIAS`.
    public var ref: String
    public var ttlSeconds: Double
    public var maxUses: Int?

    enum CodingKeys: String, CodingKey {
        case ref
        case ttlSeconds = "ttl_seconds"
        case maxUses = "max_uses"
    }

    public init(ref: String, ttlSeconds: Double, maxUses: Int?) {
        self.ref = ref
        self.ttlSeconds = ttlSeconds
        self.maxUses = maxUses
    }
}

/// `POST /v1/sessions`'s answer (201): the session, and its token (`cfs_...`), shown this once. A client sends the
/// token back in `Coffer-Session-Token` with its predictions, so that any server of the registry can open the session.
///
/// The token is a `String` only while the JSON is written or read: a client moves it into sodium memory at once
/// (``SessionOpened/takeToken()``).
public struct SessionOpened: Sendable, Equatable, Codable {
    public var id: String
    public var model: String
    public var version: String
    public var expiresAt: String
    public var maxUses: Int?
    /// Absent from servers before session tokens were sent with predictions.
    public var token: String?

    enum CodingKeys: String, CodingKey {
        case id, model, version, token
        case expiresAt = "expires_at"
        case maxUses = "max_uses"
    }

    public init(id: String, model: String, version: String, expiresAt: String, maxUses: Int?, token: String?) {
        self.id = id
        self.model = model
        self.version = version
        self.expiresAt = expiresAt
        self.maxUses = maxUses
        self.token = token
    }

    /// `max_uses` is written as `null` when unlimited, as the API has always answered.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(model, forKey: .model)
        try container.encode(version, forKey: .version)
        try container.encode(expiresAt, forKey: .expiresAt)
        try container.encode(maxUses, forKey: .maxUses)
        try container.encodeIfPresent(token, forKey: .token)
    }

    /// The token moved into sodium memory, and cleared here: the caller holds the only copy it controls.
    public mutating func takeToken() -> SecureBytes? {
        guard let text = token else { return nil }
        token = nil
        let secret = SecureBytes(count: text.utf8.count)
        secret.withUnsafeMutableBytes { $0.copyBytes(from: text.utf8) }
        return secret
    }
}

/// `POST /v1/sessions/{id}/predict`'s body: one object per row, feature name to value.
public struct PredictRequest: Sendable, Equatable, Codable {
    public var rows: [[String: Double]]

    public init(rows: [[String: Double]]) { self.rows = rows }
}

/// `POST /v1/sessions/{id}/predict`'s answer: one object per row, keyed by task, as `coffer infer --json` prints
/// (``predictionRows(_:tasks:preprocessing:rows:)``): the shape of each task's value depends on its kind.
public struct PredictAnswer: Sendable, Equatable, Codable {
    public var predictions: [JSONValue]

    public init(predictions: [JSONValue]) { self.predictions = predictions }
}
