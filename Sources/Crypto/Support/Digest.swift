import Crypto

/// Hex and digest helpers shared by the formats.
public enum Digest {
    /// SHA-256 of `bytes` (swift-crypto: BoringSSL uses the CPU's SHA extensions).
    public static func sha256(_ bytes: some Sequence<UInt8>) -> [UInt8] {
        Array(SHA256.hash(data: Array(bytes)))
    }

    /// SHA-256 of a file's contents, streamed in 1 MiB blocks.
    public static func sha256(file path: String) throws(CofferCryptoError) -> [UInt8] {
        try sha256(of: try FileDescriptorStream(readingFrom: path)).digest
    }

    /// SHA-256 and length of everything `source` yields, read in 1 MiB blocks.
    public static func sha256(of source: any ByteSource) throws(CofferCryptoError) -> (digest: [UInt8], length: Int) {
        var hasher = StreamingSHA256()
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var length = 0
        while true {
            let n = try block.withMutableBytes { buffer throws(CofferCryptoError) in try source.read(into: buffer) }
            block.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            length += n
            if n < block.count { return (hasher.finalize(), length) }
        }
    }

    /// Lower-case hex of `bytes`.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses lower- or upper-case hex; `nil` when `text` is not hex of whole bytes.
    public static func bytes(fromHex text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// A SHA-256 computed incrementally over a stream, in the same pass that seals or opens it.
public struct StreamingSHA256: Sendable {
    private var hasher = SHA256()

    public init() {}

    /// A hash that has already absorbed `seed` (e.g. a header written before the streamed part).
    public init(seed: [UInt8]) {
        seed.withUnsafeBytes { hasher.update(bufferPointer: $0) }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        hasher.update(bufferPointer: bytes)
    }

    public func finalize() -> [UInt8] {
        Array(hasher.finalize())
    }
}
