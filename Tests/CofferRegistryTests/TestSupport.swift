import CofferCrypto
import CofferRegistry
import Foundation
import Testing

/// A temporary registry and a workspace beside it, removed when the test ends.
final class RegistryFixture {
    let root: URL
    let registry: Registry
    var home: String { root.appendingPathComponent("home").path }

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let secret = passphrase("registry passphrase")
        registry = try Registry.create(
            at: root.appendingPathComponent("home").path,
            passphrase: secret,
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192)
        )
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// Writes `files` (relative path to bytes) under `directory` and returns the directory's path.
    @discardableResult
    func makeModel(_ directory: String, _ files: [String: [UInt8]]) throws -> String {
        for (relative, bytes) in files {
            let url = root.appendingPathComponent(directory).appendingPathComponent(relative)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
        return path(directory)
    }

    func read(_ relative: String) throws -> [UInt8] { Array(try Data(contentsOf: root.appendingPathComponent(relative))) }
    func exists(_ relative: String) -> Bool { FileManager.default.fileExists(atPath: path(relative)) }
}

func passphrase(_ text: String) -> SecureBytes {
    let bytes = Array(text.utf8)
    let secret = SecureBytes(count: bytes.count)
    secret.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
    return secret
}

func bytes(_ count: Int, seed: UInt8 = 1) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }
