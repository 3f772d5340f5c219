import CofferCrypto
import Foundation

/// The versions a chain's `version` records named (``LedgerState/recordedVersionKeys``), as every remembered state keeps
/// them: each `MODEL:VERSION` by the first 16 bytes of the SHA-256 of its UTF-8 bytes, written as one base64 string of
/// the values sorted (docs/FORMAT.md, "Remote registries"). Kept as a JSON array of the names, 100,000 versions took
/// 138 ms to read back (debug build), which every command that opens the registry pays; as 16-byte values, 31-38 ms
/// for about the same 2.2 MB (the names' strings, not their bytes, were the cost). At 128 bits, two names that collide
/// take about 2^64 hashes to find (8 bytes took 2^32: a publisher could have made two version names that one Coffer
/// tells apart and this one does not, helper-76), so the set answers as the names would.
public struct RecordedVersions: Sendable, Equatable, Codable {
    private var keys: Set<UInt128> = []

    public init() {}

    public var count: Int { keys.count }

    public func contains(_ label: String) -> Bool { keys.contains(Self.key(label)) }

    /// Adds `label`; false when it was there already.
    @discardableResult
    public mutating func insert(_ label: String) -> Bool { keys.insert(Self.key(label)).inserted }

    static func key(_ label: String) -> UInt128 {
        Digest.sha256(label.utf8).prefix(16).reduce(0) { $0 << 8 | UInt128($1) }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        guard let bytes = Data(base64Encoded: try container.decode(String.self)), bytes.count % 16 == 0 else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not base64 of 16-byte values")
        }
        keys.reserveCapacity(bytes.count / 16)
        bytes.withUnsafeBytes { raw in
            for offset in stride(from: 0, to: raw.count, by: 16) {
                keys.insert(UInt128(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt128.self)))
            }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        let sorted = keys.sorted()
        var bytes = Data(count: sorted.count * 16)
        bytes.withUnsafeMutableBytes { raw in
            for (index, key) in sorted.enumerated() { raw.storeBytes(of: key.bigEndian, toByteOffset: index * 16, as: UInt128.self) }
        }
        var container = encoder.singleValueContainer()
        try container.encode(bytes.base64EncodedString())
    }
}
