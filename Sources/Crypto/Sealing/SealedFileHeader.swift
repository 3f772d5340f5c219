/// The header of a sealed file, v1 (docs/FORMAT.md, "Sealed file").
///
/// `magic(8) version(1) suite(1) chunk_shift(1) reserved(1) nonce_prefix(16) stanza_count(u16)
/// stanzas... header_mac(32)`. The MAC is keyed BLAKE2b-256 under a key derived from the data key,
/// and every chunk's associated data is that MAC: the chunks are bound to this exact header.
public struct SealedFileHeader: Sendable, Equatable {
    static let magic: [UInt8] = [0x89, 0x43, 0x46, 0x53, 0x0D, 0x0A, 0x1A, 0x0A]  // "\x89CFS\r\n\x1a\n"
    public static let version: UInt8 = 1
    static let suiteXChaCha20Poly1305Blake2b: UInt8 = 1
    static let fixedLength = 30
    static let macLength = 32
    static let maximumStanzas = 1024
    /// Chunk sizes allowed: 2^12 (4 KiB) to 2^24 (16 MiB).
    static let chunkShiftRange: ClosedRange<UInt8> = 12...24

    public let chunkShift: UInt8
    public let noncePrefix: [UInt8]
    public let stanzas: [WrappedKey]
    public let mac: [UInt8]

    /// Plaintext bytes per chunk.
    public var chunkSize: Int { 1 << Int(chunkShift) }

    /// The complete header bytes, MAC included.
    public var encoded: [UInt8] { Self.encodeUnauthenticated(chunkShift: chunkShift, noncePrefix: noncePrefix, stanzas: stanzas) + mac }

    /// Builds a header for a new file and computes its MAC under `dataKey`.
    init(
        dataKey: borrowing SecretKey,
        chunkSize: Int,
        stanzas: [WrappedKey],
        noncePrefix: [UInt8] = Sodium.randomPublicBytes(16)
    )
        throws(CofferCryptoError)
    {
        guard chunkSize > 0, chunkSize & (chunkSize - 1) == 0,
            let shift = UInt8(exactly: chunkSize.trailingZeroBitCount), Self.chunkShiftRange.contains(shift)
        else { throw .invalidChunkSize(chunkSize) }
        guard stanzas.count <= Self.maximumStanzas else { throw .malformedHeader("more than \(Self.maximumStanzas) recipients") }
        precondition(noncePrefix.count == 16, "the nonce prefix is 16 bytes")
        self.chunkShift = shift
        self.noncePrefix = noncePrefix
        self.stanzas = stanzas
        let body = Self.encodeUnauthenticated(chunkShift: shift, noncePrefix: noncePrefix, stanzas: stanzas)
        self.mac = Self.macKey(dataKey: dataKey, noncePrefix: noncePrefix).mac(body)
    }

    private init(chunkShift: UInt8, noncePrefix: [UInt8], stanzas: [WrappedKey], mac: [UInt8]) {
        self.chunkShift = chunkShift
        self.noncePrefix = noncePrefix
        self.stanzas = stanzas
        self.mac = mac
    }

    /// Checks the header MAC under `dataKey`, in constant time.
    public func authenticate(dataKey: borrowing SecretKey) throws(CofferCryptoError) {
        let body = Self.encodeUnauthenticated(chunkShift: chunkShift, noncePrefix: noncePrefix, stanzas: stanzas)
        let expected = Self.macKey(dataKey: dataKey, noncePrefix: noncePrefix).mac(body)
        var difference: UInt8 = 0
        for (a, b) in zip(expected, mac) { difference |= a ^ b }
        guard difference == 0 else { throw .headerAuthenticationFailed }
    }

    /// The key that authenticates the header: BLAKE2b-256(key: dataKey, "coffer/v1/header-mac" || nonce_prefix).
    static func macKey(dataKey: borrowing SecretKey, noncePrefix: [UInt8]) -> SecretKey {
        dataKey.derive(label: "coffer/v1/header-mac", context: noncePrefix)
    }

    /// The key that encrypts the chunks: BLAKE2b-256(key: dataKey, "coffer/v1/payload" || nonce_prefix).
    static func payloadKey(dataKey: borrowing SecretKey, noncePrefix: [UInt8]) -> SecretKey {
        dataKey.derive(label: "coffer/v1/payload", context: noncePrefix)
    }

    private static func encodeUnauthenticated(chunkShift: UInt8, noncePrefix: [UInt8], stanzas: [WrappedKey]) -> [UInt8] {
        var writer = ByteWriter()
        writer.append(magic)
        writer.append(version)
        writer.append(suiteXChaCha20Poly1305Blake2b)
        writer.append(chunkShift)
        writer.append(UInt8(0))
        writer.append(noncePrefix)
        writer.append(UInt16(stanzas.count))
        for stanza in stanzas { writer.append(stanza.encoded) }
        return writer.bytes
    }

    /// Reads a header from the start of `source`, consuming exactly its bytes.
    ///
    /// - Returns: the header and its length in bytes.
    public static func read(from source: any ByteSource) throws(CofferCryptoError) -> (SealedFileHeader, Int) {
        func readExactly(_ count: Int, _ what: String) throws(CofferCryptoError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            let n = try bytes.withMutableBytes { buffer throws(CofferCryptoError) in try source.read(into: buffer) }
            guard n == count else {
                if what == "magic" { throw .notACofferFile }
                throw .truncated("the header ends inside its \(what)")
            }
            return bytes
        }
        let magicBytes = try readExactly(8, "magic")
        guard magicBytes == magic else { throw .notACofferFile }
        let fixed = try readExactly(fixedLength - 8, "fixed fields")
        let version = fixed[0]
        guard version == Self.version else { throw .unsupportedVersion(Int(version)) }
        guard fixed[1] == suiteXChaCha20Poly1305Blake2b else { throw .unsupportedSuite(Int(fixed[1])) }
        let shift = fixed[2]
        guard chunkShiftRange.contains(shift) else { throw .malformedHeader("chunk size 2^\(shift) outside 2^12...2^24") }
        guard fixed[3] == 0 else { throw .malformedHeader("reserved byte is not zero") }
        let prefix = Array(fixed[4..<20])
        let count = Int(fixed[20]) | Int(fixed[21]) << 8
        guard count <= maximumStanzas else { throw .malformedHeader("\(count) stanzas (at most \(maximumStanzas))") }
        var stanzaBytes: [UInt8] = []
        for _ in 0..<count {
            let head = try readExactly(4, "stanzas")
            stanzaBytes += head
            stanzaBytes += try readExactly(Int(head[2]) | Int(head[3]) << 8, "stanzas")
        }
        var reader = ByteReader(stanzaBytes, shortInput: .malformedHeader("stanza truncated"))
        var stanzas: [WrappedKey] = []
        for _ in 0..<count { stanzas.append(try WrappedKey.read(from: &reader)) }
        let mac = try readExactly(macLength, "MAC")
        let header = SealedFileHeader(chunkShift: shift, noncePrefix: prefix, stanzas: stanzas, mac: mac)
        return (header, fixedLength + stanzaBytes.count + macLength)
    }
}
