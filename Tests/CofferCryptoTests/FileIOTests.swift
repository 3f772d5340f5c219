import Foundation
import Testing

@testable import CofferCrypto

struct FileIOTests {
    /// Foundation's `deletingLastPathComponent` traps on `o`, `.` and `o/` (Swift 6.3.1 on Linux): `coffer pull --out o`
    /// crashed once the pull asked for the parent of its output directory.
    @Test(arguments: [
        ("o", "."), (".", "."), ("o/", "."), ("./o", "."), ("a/b", "a"), ("a//b/", "a"), ("/tmp/o", "/tmp"), ("/o", "/"), ("/", "/"),
    ])
    func parentDirectory(path: String, parent: String) {
        #expect(FileBytes.parentDirectory(of: path) == parent)
    }

    /// A durable file goes to the disk in O_DIRECT blocks plus a buffered tail; on a file system that refuses
    /// O_DIRECT it falls back to ordinary writes. Either way the bytes are exactly the ones written, in pieces of
    /// any size, and nothing is at the destination before commit.
    @Test(arguments: [FileManager.default.temporaryDirectory.path, "/dev/shm"])
    func durableFilesHoldExactlyWhatWasWritten(directory: String) throws {
        guard FileManager.default.fileExists(atPath: directory) else { return }
        for size in [0, 1000, 4 << 20, (9 << 20) + 123] {
            let destination = "\(directory)/coffer-direct-\(UUID().uuidString)"
            defer { unlink(destination) }
            let bytes = testBytes(size, seed: UInt64(size) + 7)
            let file = try AtomicOutputFile(destination: destination, mode: 0o600, durable: true)
            var offset = 0
            var piece = 1
            while offset < size {
                let n = min(size - offset, piece)
                try bytes[offset..<(offset + n)].withUnsafeBytes { try file.write($0) }
                offset += n
                piece = piece * 7 % 1_048_573 + 1
            }
            #expect(!FileManager.default.fileExists(atPath: destination))
            try file.commit()
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: destination))) == bytes, "\(size) bytes in \(directory)")
        }
    }
}
