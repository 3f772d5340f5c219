/// What a server hands a client for one version: the publisher's signed documents, the registry's rekey record if
/// any, and the caller's own wrapped data key. A client trusts none of it until it has verified it itself.
/// (`GET /v1/package?ref=...&key_id=...`; documents base64.)
public struct VersionPackage: Sendable, Equatable, Codable {
    public var model: String
    public var version: String
    public var digest: String
    public var dsse: String
    public var modelSigning: String
    public var rekey: String?
    /// The stanza wrapped for `key_id`, when the caller may decrypt and a key was wrapped for it.
    public var stanza: String?
    /// The version's `version` record from the ledger (envelope, base64): where a client checks it was committed here.
    public var record: String?

    enum CodingKeys: String, CodingKey {
        case model, version, digest, dsse, rekey, stanza, record
        case modelSigning = "model_signing"
    }
}
