/// The answer of `POST /v1/uploads`, `GET /v1/uploads/{id}` and `PATCH /v1/uploads/{id}`: where an upload stands.
public struct UploadStatus: Sendable, Equatable, Codable {
    public var id: String
    /// Bytes received: the offset the next `PATCH` must send.
    public var offset: Int

    public init(id: String, offset: Int) {
        self.id = id
        self.offset = offset
    }
}

/// `PUT /v1/uploads/{id}?digest=HEX`'s answer: the upload is now the blob with this SHA-256.
public struct UploadStored: Sendable, Equatable, Codable {
    public var digest: String

    public init(digest: String) { self.digest = digest }
}

/// `POST /v1/versions`'s answer: the version committed (the client checks it in the ledger before believing it).
public struct CommitAnswer: Sendable, Equatable, Codable {
    public var model: String
    public var version: String
    public var digest: String

    public init(model: String, version: String, digest: String) {
        self.model = model
        self.version = version
        self.digest = digest
    }
}
