import Foundation

/// The shareable half of an identity: three public keys under one name (`NAME.pub`, docs/FORMAT.md).
///
/// ```swift
/// let alice = try PublicIdentity(jsonBytes: Array(try Data(contentsOf: url)))
/// let wrapped = dataKey.wrap(for: alice)
/// ```
public struct PublicIdentity: Sendable, Hashable {
    /// The `type` field of a public identity file.
    public static let fileType = "coffer.identity.v1"

    public let name: String
    /// Ed25519 public key (32 bytes): signs DSSE envelopes.
    public let ed25519: [UInt8]
    /// X25519 public key (32 bytes): receives wrapped data keys.
    public let x25519: [UInt8]
    /// ECDSA P-256 public key, SEC1 uncompressed (65 bytes): signs OpenSSF model-signing bundles.
    public let p256: [UInt8]

    public init(name: String, ed25519: [UInt8], x25519: [UInt8], p256: [UInt8]) throws(CofferCryptoError) {
        try Self.validate(name: name)
        guard ed25519.count == 32 else { throw .malformedIdentity("ed25519 key must be 32 bytes") }
        guard x25519.count == 32 else { throw .malformedIdentity("x25519 key must be 32 bytes") }
        guard p256.count == 65, p256[0] == 0x04 else { throw .malformedIdentity("p256 key must be 65 bytes, SEC1 uncompressed") }
        self.name = name
        self.ed25519 = ed25519
        self.x25519 = x25519
        self.p256 = p256
    }

    /// The key identifier: hex of the first 16 bytes of SHA-256("coffer/v1/identity" || ed25519 || x25519 || p256).
    public var keyID: String {
        Digest.hex(Digest.sha256(Array("coffer/v1/identity".utf8) + ed25519 + x25519 + p256).prefix(16))
    }

    /// The 8-byte hint that names this identity's X25519 key in a sealed-file stanza.
    var recipientHint: [UInt8] { Array(Digest.sha256(x25519).prefix(8)) }

    /// Checks a name against `[A-Za-z0-9._-]{1,64}`.
    public static func validate(name: String) throws(CofferCryptoError) {
        let allowed = name.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 46 || c == 95 || c == 45
        }
        guard !name.isEmpty, name.utf8.count <= 64, allowed, name != ".", name != ".." else { throw .invalidName(name) }
    }
}

// MARK: - File encoding

extension PublicIdentity {
    fileprivate struct File: Codable {
        var type: String
        var name: String
        var id: String
        var ed25519: String
        var x25519: String
        var p256: String
    }

    /// The `NAME.pub` bytes: one JSON object, keys sorted, newline-terminated.
    public var jsonBytes: [UInt8] {
        let file = File(
            type: Self.fileType,
            name: name,
            id: keyID,
            ed25519: Data(ed25519).base64EncodedString(),
            x25519: Data(x25519).base64EncodedString(),
            p256: Data(p256).base64EncodedString()
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        // Encoding a struct of strings cannot fail.
        return Array(try! encoder.encode(file)) + [0x0a]
    }

    /// Parses a `NAME.pub` file, checking that its `id` matches its keys.
    public init(jsonBytes: [UInt8]) throws(CofferCryptoError) {
        if let reason = AmbiguousJSON.reason(in: jsonBytes) { throw .malformedIdentity(reason) }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: Data(jsonBytes))
        } catch {
            throw .malformedIdentity("not a Coffer public identity (expected JSON with type \(Self.fileType))")
        }
        guard file.type == Self.fileType else { throw .malformedIdentity("unknown identity type '\(file.type)'") }
        func decode(_ field: String, _ value: String) throws(CofferCryptoError) -> [UInt8] {
            guard let data = Data(base64Encoded: value) else { throw .malformedIdentity("\(field) is not base64") }
            return Array(data)
        }
        try self.init(
            name: file.name,
            ed25519: try decode("ed25519", file.ed25519),
            x25519: try decode("x25519", file.x25519),
            p256: try decode("p256", file.p256)
        )
        guard file.id == keyID else { throw .malformedIdentity("id \(file.id) does not match the keys (expected \(keyID))") }
    }

    /// Reads and parses a public identity file.
    public init(contentsOf path: String) throws(CofferCryptoError) {
        try self.init(jsonBytes: try FileBytes.read(path))
    }
}

// MARK: - Codable

/// Encoded as the `NAME.pub` object, so a public identity embedded in a larger document reads like the file.
extension PublicIdentity: Codable {
    public init(from decoder: any Decoder) throws {
        let file = try File(from: decoder)
        let encoder = JSONEncoder()
        self = try PublicIdentity(jsonBytes: Array(try encoder.encode(file)))
    }

    public func encode(to encoder: any Encoder) throws {
        try File(
            type: Self.fileType,
            name: name,
            id: keyID,
            ed25519: Data(ed25519).base64EncodedString(),
            x25519: Data(x25519).base64EncodedString(),
            p256: Data(p256).base64EncodedString()
        ).encode(to: encoder)
    }
}
