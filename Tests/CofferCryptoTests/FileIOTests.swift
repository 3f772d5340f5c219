import Foundation
import Synchronization
import Testing

@testable import CofferCrypto

struct FileIOTests {
    /// What offloaded work holds is released by the time its caller resumes: a temporary file a failed push held
    /// (deleted when released) outlived the process once, which exited right after the error, when the thread that
    /// ran the work released it late.
    @Test func offloadedWorkReleasesWhatItHeldBeforeItsCallerResumes() async throws {
        // Busy threads on every core, as in CI under load, so that the work's thread is preempted as soon as it wakes
        // its caller.
        let spinning = Mutex(true)
        let spinners = (0..<(2 * ProcessInfoCores.count)).map { _ in
            Thread { while spinning.withLock({ $0 }) {} }
        }
        for spinner in spinners { spinner.start() }
        defer { spinning.withLock { $0 = false } }
        for round in 0..<200 {
            let directory = FileManager.default.temporaryDirectory.path
            let held = HeldFile(try AtomicOutputFile(destination: "\(directory)/offload-\(UUID().uuidString)", durable: false))
            let path = held.path
            await #expect(throws: CofferCryptoError.self) {
                try await Offload.run { () throws(CofferCryptoError) -> Int in
                    let file = held.take()  // the work's reference is now the only one
                    throw .io(path: file?.destination ?? path, reason: "failed")
                }
            }
            #expect(access(path, F_OK) != 0, "round \(round): the temporary file is still there")
        }
    }

    /// Foundation's `deletingLastPathComponent` traps on `o`, `.` and `o/` (Swift 6.3.1 on Linux): `coffer pull --out o`
    /// crashed once the pull asked for the parent of its output directory.
    @Test(arguments: [
        ("o", "."), (".", "."), ("o/", "."), ("./o", "."), ("a/b", "a"), ("a//b/", "a"), ("/tmp/o", "/tmp"), ("/o", "/"), ("/", "/"),
        ("x/\u{301}y", "x"),
    ])
    func parentDirectory(path: String, parent: String) {
        #expect(FileBytes.parentDirectory(of: path) == parent)
    }

    /// A durable file goes to the disk in O_DIRECT blocks plus a buffered tail; on a file system that refuses
    /// O_DIRECT it falls back to ordinary writes. Either way the bytes are exactly the ones written, in pieces of
    /// any size, and nothing is at the destination before commit. A file started with small pieces begins in a small
    /// buffer and moves to a whole block past 64 KiB: the sizes around both. Sealed-only files (blobs) take the same
    /// path with an ordinary buffer in place of locked memory.
    @Test(arguments: [FileManager.default.temporaryDirectory.path, "/dev/shm"], [false, true])
    func durableFilesHoldExactlyWhatWasWritten(directory: String, sealedOnly: Bool) throws {
        guard FileManager.default.fileExists(atPath: directory) else { return }
        let sizes = [0, 1000, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 1 << 20, (1 << 20) + 1, 4 << 20, (9 << 20) + 123]
        for size in sizes {
            for firstPiece in [1, 70_000, size] {
                let destination = "\(directory)/coffer-direct-\(UUID().uuidString)"
                defer { unlink(destination) }
                let bytes = testBytes(size, seed: UInt64(size) + 7)
                let file = try AtomicOutputFile(destination: destination, mode: 0o600, durable: true, sealedOnly: sealedOnly)
                var offset = 0
                var piece = max(1, firstPiece)
                while offset < size {
                    let n = min(size - offset, piece)
                    try bytes[offset..<(offset + n)].withUnsafeBytes { try file.write($0) }
                    offset += n
                    piece = piece * 7 % 1_048_573 + 1
                }
                #expect(!FileManager.default.fileExists(atPath: destination))
                try file.commit()
                #expect(
                    Array(try Data(contentsOf: URL(fileURLWithPath: destination))) == bytes,
                    "\(size) bytes in \(directory), first piece \(firstPiece), sealed only: \(sealedOnly)"
                )
            }
        }
    }

    /// Page-aligned pieces of a block or more (a pull's batches of plaintext) go to the disk from where they are, their
    /// whole pages, and what is left of each through the buffer; a piece that starts where one left bytes buffered takes
    /// the buffer. The file holds exactly the bytes written.
    @Test(arguments: [FileManager.default.temporaryDirectory.path, "/dev/shm"], [false, true])
    func pageAlignedPiecesAreWrittenFromWhereTheyAre(directory: String, sealedOnly: Bool) throws {
        guard FileManager.default.fileExists(atPath: directory) else { return }
        let cases = [(17 << 16, 17 << 16), (3 * (17 << 16) + 4097, 17 << 16), (2 << 20 + 10, (1 << 20) + 5), (5 << 20, 3 << 20)]
        for (size, piece) in cases {
            let bytes = testBytes(size, seed: UInt64(size))
            let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
            defer { aligned.deallocate() }
            aligned.copyBytes(from: bytes)
            let destination = "\(directory)/coffer-aligned-\(UUID().uuidString)"
            defer { unlink(destination) }
            let file = try AtomicOutputFile(destination: destination, mode: 0o600, durable: true, sealedOnly: sealedOnly)
            var offset = 0
            while offset < size {
                let n = min(piece, size - offset)
                try file.write(UnsafeRawBufferPointer(rebasing: aligned[offset..<(offset + n)]))
                offset += n
            }
            try file.commit()
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: destination))) == bytes, "\(size) bytes in pieces of \(piece), \(directory)")
        }
    }

    /// A temporary file takes an entry in the interrupt handler's table before it exists, and is refused, leaving
    /// nothing, when the table is full: a file the handler does not know of would outlive Ctrl-C (for `unseal -o`, with
    /// plaintext in it). One inside a registered folder needs no entry of its own. In a child process: the table is the
    /// process's own.
    @Test func aFullInterruptTableRefusesATemporaryFileAndLeavesNothing() async {
        await #expect(processExitsWith: .success) {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-table-\(UUID().uuidString)").path
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            func entries() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() }
            /// Whether a temporary file could be made; a refusal for any reason but the full table fails the test.
            func made(_ name: String, insideRegisteredFolder: Bool = false, then body: () -> Void = {}) -> Bool {
                do {
                    let file = try AtomicOutputFile(
                        destination: "\(directory)/\(name)",
                        durable: false,
                        insideRegisteredFolder: insideRegisteredFolder
                    )
                    withExtendedLifetime(file) { body() }  // the file, and its entry, exist while `body` runs
                    return true
                } catch {
                    guard "\(error)".contains("than an interrupt could remove") else { exit(5) }
                    return false
                }
            }
            var filled = 0
            while TemporaryFiles.register("\(directory)/unused-\(filled)") { filled += 1 }
            guard filled == 4096, !made("a"), entries().isEmpty else { exit(1) }
            guard made("b", insideRegisteredFolder: true), entries().isEmpty else { exit(2) }
            TemporaryFiles.unregister("\(directory)/unused-0")
            // The one free entry goes to the first file while it exists, and comes back when it goes.
            var second = true
            guard made("c", then: { second = made("d") }), !second, entries().isEmpty, made("e") else { exit(3) }
        }
    }

    /// A signal during a held section does not stop it: the section goes on (and here ends the process itself)...
    @Test func anInterruptDuringAHeldSectionLetsItFinish() async {
        await #expect(processExitsWith: .success) {
            TemporaryFiles.removeOnInterrupt()
            TemporaryFiles.holdingInterrupts {
                raise(SIGTERM)
                exit(0)
            }
        }
    }

    /// ...and takes effect when it ends.
    @Test func anInterruptDuringAHeldSectionTakesEffectWhenItEnds() async {
        await #expect(processExitsWith: .exitCode(128 + SIGTERM)) {
            TemporaryFiles.removeOnInterrupt()
            TemporaryFiles.holdingInterrupts { raise(SIGTERM) }
            exit(0)
        }
    }

    /// Files written together: refused whole when one exists (and nothing of them, not even a temporary file, is
    /// left), else all in place.
    @Test func filesWrittenTogetherAreAllWrittenOrNone() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("together-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func entries() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() }
        let files = ["a.key", "a.pub", "a.pem"].map { ("\(directory)/\($0)", Array($0.utf8), UInt32(0o600)) }
        #expect(FileManager.default.createFile(atPath: "\(directory)/a.pem", contents: Data("old".utf8)))
        #expect(throws: CofferCryptoError.io(path: "\(directory)/a.pem", reason: "already exists")) {
            try FileBytes.writeTogether(files, overwrite: false)
        }
        #expect(entries() == ["a.pem"])
        try FileBytes.writeTogether(files, overwrite: true)
        #expect(entries() == ["a.key", "a.pem", "a.pub"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: "\(directory)/a.pem")) == Data("a.pem".utf8))
    }
}

/// Hands a temporary file to offloaded work, which takes the only reference.
private final class HeldFile: @unchecked Sendable {
    private var file: AtomicOutputFile?
    let path: String
    init(_ file: AtomicOutputFile) {
        self.file = file
        path = file.temporaryPath
    }
    func take() -> AtomicOutputFile? {
        defer { file = nil }
        return file
    }
}
