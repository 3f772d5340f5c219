/// `GET /v1/verify`'s answer, and `coffer verify --json`'s (which adds `read_data`): a version checked end to end.
public struct VerifyAnswer: Sendable, Equatable, Codable {
    public var model: String
    public var version: String
    public var digest: String
    public var signer: String
    public var signerKeyID: String
    public var files: Int
    /// Whether plaintext digests were checked too; the server never says (it never decrypts), the CLI always does.
    public var readData: Bool?
    public var ok: Bool

    enum CodingKeys: String, CodingKey {
        case model, version, digest, signer, files, ok
        case signerKeyID = "signer_key_id"
        case readData = "read_data"
    }

    /// - Parameter includeReadData: whether the answer says if plaintext was read (the CLI's shape) or not (the server's).
    public init(_ report: VerifyReport, includeReadData: Bool) {
        model = report.model
        version = report.version
        digest = report.digest
        signer = report.signer
        signerKeyID = report.signerKeyID
        files = report.files
        readData = includeReadData ? report.readData : nil
        ok = true
    }
}
