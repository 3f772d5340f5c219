import Foundation
import Testing

@testable import CofferCrypto

/// The worked example of docs/FORMAT.md, byte for byte. tools/interop/test_interop.py builds the same
/// bytes from the specification with PyNaCl and checks them against the same vector file.
struct FormatVectorTests {
    static let vectorPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("tools/interop/vectors/sealed-v1-worked-example.json").path

    struct Vector: Decodable {
        var data_key: String
        var nonce_prefix: String
        var chunk_shift: Int
        var plaintext: String
        var header_mac: String
        var payload_key: String
        var sealed: String
    }

    @Test func workedExampleMatchesTheVector() throws {
        let vector = try JSONDecoder().decode(Vector.self, from: Data(try FileBytes.read(Self.vectorPath)))
        let keyBytes = hex(vector.data_key)
        let secret = SecureBytes(count: 32)
        secret.withUnsafeMutableBytes { $0.copyBytes(from: keyBytes) }
        let dataKey = SecretKey(bytes: secret)
        let header = try SealedFileHeader(
            dataKey: dataKey,
            chunkSize: 1 << vector.chunk_shift,
            stanzas: [],
            noncePrefix: hex(vector.nonce_prefix)
        )
        #expect(Digest.hex(header.mac) == vector.header_mac)
        let payloadKey = SealedFileHeader.payloadKey(dataKey: dataKey, noncePrefix: header.noncePrefix)
        let payloadHex = payloadKey.withUnsafeBytes { Digest.hex($0) }
        #expect(payloadHex == vector.payload_key)
        let sink = MemorySink()
        _ = try SealedFile.seal(
            from: MemorySource(hex(vector.plaintext)),
            to: sink,
            header: header,
            dataKey: dataKey,
            digests: false,
            progress: nil
        )
        #expect(Digest.hex(sink.bytes) == vector.sealed)
    }
}
