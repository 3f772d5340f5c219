import CofferCrypto
import Foundation

/// The versions a chain's `version` records named (``LedgerState/recordedVersions``), as every remembered state keeps
/// them: each `MODEL:VERSION` by the first 8 bytes of its SHA-256, written as one base64 string of the values sorted
/// (docs/FORMAT.md, "Remote registries"). Kept as a JSON array of the names, 100,000 versions made a remembered state
/// of 2.3 MB that took 138 ms to read and 117 ms to write (debug build), which every command that opens the registry
/// pays, and every commit; as 8-byte values, 1.1 MB. Telling two names apart by 64 bits of SHA-256: making a name
/// collide with a given one takes about 2^64 hashes; a chance collision among a million versions is about 1 in 10^7.
public struct RecordedVersions: Sendable, Equatable, Codable {
    private var keys: Set<UInt64> = []

    public init() {}

    public var count: Int { keys.count }

    public func contains(_ label: String) -> Bool { keys.contains(Self.key(label)) }

    /// Adds `label`; false when it was there already.
    @discardableResult
    public mutating func insert(_ label: String) -> Bool { keys.insert(Self.key(label)).inserted }

    static func key(_ label: String) -> UInt64 {
        Digest.sha256(label.utf8).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        // The names themselves, as states remembered on 2026-12-07 before this form have them.
        if let names = try? container.decode([String].self) {
            for name in names { insert(name) }
            return
        }
        guard let bytes = Data(base64Encoded: try container.decode(String.self)), bytes.count % 8 == 0 else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "recordedVersions is not base64 of 8-byte values")
        }
        keys.reserveCapacity(bytes.count / 8)
        bytes.withUnsafeBytes { raw in
            for offset in stride(from: 0, to: raw.count, by: 8) {
                keys.insert(UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
            }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        let sorted = keys.sorted()
        var bytes = Data(count: sorted.count * 8)
        bytes.withUnsafeMutableBytes { raw in
            for (index, key) in sorted.enumerated() { raw.storeBytes(of: key.bigEndian, toByteOffset: index * 8, as: UInt64.self) }
        }
        var container = encoder.singleValueContainer()
        try container.encode(bytes.base64EncodedString())
    }
}
