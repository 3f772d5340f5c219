import CofferCrypto
import Foundation
import NIOCore
import Testing

@testable import CofferRegistry

/// Throughput of the OCI store against a loopback docker-registry, beside reading the same file from local disk. Run on
/// demand (`COFFER_OCI_BENCH=1 swift test -c release --filter OCIBenchmark`); it prints its figures and checks only
/// that the bytes came back whole, so that it never fails for a slow machine.
@Suite("OCI benchmark", .enabled(if: ProcessInfo.processInfo.environment["COFFER_OCI_BENCH"] != nil, "set COFFER_OCI_BENCH=1 to run"))
struct OCIBenchmarkTests {
    @Test("store and read a 256 MiB blob through docker-registry on loopback, against hashing the local file")
    func throughput() async throws {
        let fixture = try OCIFixture()
        defer { fixture.remove() }
        let size = 256 << 20
        let bytes = pattern(size, seed: 71)
        let digest = Digest.hex(Digest.sha256(bytes))
        let local = fixture.temporary + "/local.bin"
        try FileManager.default.createDirectory(atPath: fixture.temporary, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: local))
        let mib = Double(size) / 1_048_576
        let clock = ContinuousClock()

        let fileRead = try await clock.measure {
            let hashed = try await Offload.run { () throws(CofferCryptoError) in try Digest.sha256(file: local) }
            #expect(Digest.hex(hashed) == digest)
        }
        let file = try fixture.store.makeTemporary()
        try bytes.withUnsafeBytes { try file.write($0) }
        let store = try await clock.measure { try await fixture.store.store(file, digest: digest, size: size) }
        let read = try await clock.measure {
            var count = 0
            for try await buffer in try await fixture.store.read(digest, range: nil) { count += buffer.readableBytes }
            #expect(count == size)
        }
        let blocking = try await clock.measure {
            let source = BlockingByteSource(try await fixture.store.read(digest, range: nil), name: fixture.store.name)
            let hashed = try await Offload.run { () throws(CofferCryptoError) in try Digest.sha256(of: source) }
            #expect(hashed.length == size)
        }
        func rate(_ duration: Duration) -> String {
            let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
            return String(format: "%.2f s, %.0f MiB/s", seconds, mib / seconds)
        }
        print("OCI benchmark, 256 MiB: local file read+SHA-256 \(rate(fileRead)); store (upload, 4 PATCHes) \(rate(store)); ")
        print("  read whole (hashed as it streams) \(rate(read)); read through BlockingByteSource + SHA-256 on a thread \(rate(blocking))")
    }
}
