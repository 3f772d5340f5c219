import Foundation
import Testing

@testable import CofferCrypto

/// What a killed writer leaves (no lock held on it) goes at the next write into the same folder; what a live writer
/// holds, and anything else, stays.
struct LeftoversTests {
    @Test func theNextWriteRemovesWhatKilledWritersLeftAndNothingElse() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("leftovers-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func entries() -> Set<String> { Set((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []) }
        func make(_ name: String) { #expect(FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data("plaintext".utf8))) }

        // Live writers: a file not yet committed and a staging folder with a file in it.
        let live = try AtomicOutputFile(destination: "\(directory)/live", durable: false)
        let liveFolder = try TemporaryFolder(in: directory, prefix: ".coffer-pull-")
        make("\(URL(fileURLWithPath: liveFolder.path).lastPathComponent)/weights.bin")
        // What killed writers left: nothing holds their lock.
        make(".killed.coffer-tmp-1x2y3z")
        try FileManager.default.createDirectory(atPath: "\(directory)/.coffer-pull-killed/tokenizer", withIntermediateDirectories: true)
        make(".coffer-pull-killed/tokenizer/vocab.json")
        // Not leftovers: a user's file, and a link named like a leftover to a file outside.
        make("notes.txt")
        let outside = "\(directory)-outside"
        #expect(FileManager.default.createFile(atPath: outside, contents: Data("keep".utf8)))
        defer { unlink(outside) }
        #expect(symlink(outside, "\(directory)/.link.coffer-tmp-1") == 0)
        let before = entries()

        let next = try AtomicOutputFile(destination: "\(directory)/next", durable: false)
        #expect(before.subtracting(entries()) == [".killed.coffer-tmp-1x2y3z"])
        #expect(entries().contains(live.temporaryPath.split(separator: "/").last.map(String.init)!))
        var folder = try TemporaryFolder(in: directory, prefix: ".coffer-pull-")
        #expect(!entries().contains(".coffer-pull-killed"))
        #expect(access("\(liveFolder.path)/weights.bin", F_OK) == 0, "a live pull's folder stays")
        #expect(entries().isSuperset(of: ["notes.txt", ".link.coffer-tmp-1"]) && access(outside, F_OK) == 0)

        // Gone with their values, and a leftover of another user stays (as root, which can make one).
        let livePath = liveFolder.path
        _ = consume liveFolder
        #expect(access(livePath, F_OK) != 0)
        withExtendedLifetime((live, next)) {}
        if geteuid() == 0 {
            make(".others.coffer-tmp-1")
            #expect(chown("\(directory)/.others.coffer-tmp-1", 65534, 65534) == 0)
            folder = try TemporaryFolder(in: directory, prefix: ".coffer-pull-")
            _ = try AtomicOutputFile(destination: "\(directory)/third", durable: false)
            #expect(entries().contains(".others.coffer-tmp-1"))
        }
        _ = consume folder
    }

    /// A sweep that locks a file a writer has just made, before the writer does, wins: the writer must make another.
    @Test func aNewEntryWhoseLockASweepTookIsGivenUp() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("claim-\(UUID().uuidString)").path
        let writer = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        let sweeper = open(path, O_RDONLY | O_CLOEXEC)
        defer {
            close(writer)
            close(sweeper)
        }
        #expect(flock(sweeper, LOCK_EX | LOCK_NB) == 0)
        #expect(!Leftovers.claim(writer), "the lock is the sweeper's")
        #expect(unlink(path) == 0)
        flock(sweeper, LOCK_UN)
        #expect(!Leftovers.claim(writer), "the entry is gone")
    }
}
