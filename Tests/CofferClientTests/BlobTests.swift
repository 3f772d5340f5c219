import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation
import HummingbirdTesting
import Testing

/// `GET /v1/blobs/{digest}` whole and by range, checked against the blob's signed digest.
struct BlobTests {
    @Test func rangedReadsAreTheBytesOfTheWholeBlob() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "bob-read")
            let shown = try await client.version("m/risk:1")
            guard case .array(let files)? = shown["files"], let file = files.first,
                let digest = file["sealed_sha256"]?.stringValue, let size = file["sealed_size"]?.integerValue
            else { throw CofferClientError.invalidInput("m/risk:1 has no files: \(shown)") }

            let whole = try await client.blobBytes(digest)
            #expect(whole.count == size)
            #expect(Digest.hex(Digest.sha256(whole)) == digest, "the ciphertext is the blob the version names")
            #expect(size > 200, "a blob to cut in ranges")
            for range in [0..<64, 64..<(size / 2), (size - 10)..<size, 0..<size] {
                let part = try await client.blobBytes(digest, range: range)
                #expect(part == Array(whole[range]), "bytes \(range)")
            }
            let outside = await #expect(throws: CofferClientError.self) { try await client.blobBytes(digest, range: size..<(size + 5)) }
            #expect(outside?.status == 416, "\(String(describing: outside))")
            let unknown = await #expect(throws: CofferClientError.self) { try await client.blobBytes(String(repeating: "a", count: 64)) }
            #expect(unknown?.status == 404)
        }
    }
}
