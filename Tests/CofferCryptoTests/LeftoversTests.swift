import Foundation
import Testing

@testable import CofferCrypto

/// What a killed writer recorded (its record's lock free) is removed by a later sweep; what a live writer holds, and
/// anything no writer recorded, stays.
struct LeftoversTests {
    /// A folder for the entries (`work`) and one for the records.
    struct Scratch {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("leftovers-\(UUID().uuidString)").path
        var work: String { "\(base)/work" }
        var records: String { "\(base)/records" }

        init() throws {
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: records, withIntermediateDirectories: true)
        }

        func remove() { try? FileManager.default.removeItem(atPath: base) }

        static func recordName() -> String { "record-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))" }

        /// The record a writer killed after making the entry at `path` leaves (nothing holds its lock), naming the entry
        /// `recorded` (default: `path`); a path not there is recorded on device 1, inode 1.
        func deadRecord(_ path: String, as recorded: String? = nil, named name: String = Scratch.recordName()) {
            var status = stat()
            let found = lstat(path, &status) == 0
            let line = "\(found ? status.st_dev : 1) \(found ? status.st_ino : 1) \(recorded ?? path)\n"
            #expect(FileManager.default.createFile(atPath: "\(records)/\(name)", contents: Data(line.utf8)))
        }
    }

    @Test func aSweepRemovesOnlyWhatDeadWritersRecorded() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (work, records) = (scratch.work, scratch.records)
        func make(_ name: String) { #expect(FileManager.default.createFile(atPath: "\(work)/\(name)", contents: Data("plaintext".utf8))) }
        func folder(_ name: String) throws {
            try FileManager.default.createDirectory(atPath: "\(work)/\(name)/sub", withIntermediateDirectories: true)
        }
        func exists(_ name: String) -> Bool { access("\(work)/\(name)", F_OK) == 0 }
        func deadRecord(_ name: String, as recorded: String? = nil) {
            scratch.deadRecord("\(work)/\(name)", as: recorded.map { "\(work)/\($0)" })
        }

        // Killed writers: a staging folder with a decrypted file, a temporary file, a folder its interrupt handler had
        // renamed, and a record written before its line.
        try folder(".coffer-pull-dead")
        make(".coffer-pull-dead/sub/weights.bin")
        deadRecord(".coffer-pull-dead")
        make(".out.coffer-tmp-dead")
        deadRecord(".out.coffer-tmp-dead")
        try folder(".coffer-pull-frozen.interrupted")
        make(".coffer-pull-frozen.interrupted/sub/weights.bin")
        deadRecord(".coffer-pull-frozen.interrupted", as: ".coffer-pull-frozen")
        #expect(FileManager.default.createFile(atPath: "\(records)/record-empty", contents: Data()))
        // A live writer's folder.
        try folder(".coffer-pull-live")
        let liveFD = open("\(work)/.coffer-pull-live", O_RDONLY | O_DIRECTORY)
        defer { close(liveFD) }
        let live = try #require(Leftovers.record(entry: "\(work)/.coffer-pull-live", fd: liveFD, in: records))
        // Not leftovers: the user's own look-alikes, and a folder of the user's renamed to a dead record's path after its
        // entry went (another user with write access to the parent could do that).
        try folder(".coffer-pull-mine")
        make(".notes.coffer-tmp-1")
        try folder("victim")
        make("victim/sub/notes.txt")
        try folder(".coffer-pull-gone")
        deadRecord(".coffer-pull-gone")
        #expect(rmdir("\(work)/.coffer-pull-gone/sub") == 0 && rmdir("\(work)/.coffer-pull-gone") == 0)
        #expect(rename("\(work)/victim", "\(work)/.coffer-pull-gone") == 0)

        #expect(Leftovers.sweep(records) == 3)
        #expect(!exists(".coffer-pull-dead") && !exists(".out.coffer-tmp-dead") && !exists(".coffer-pull-frozen.interrupted"))
        #expect(exists(".coffer-pull-live") && exists(".coffer-pull-mine/sub") && exists(".notes.coffer-tmp-1"))
        #expect(exists(".coffer-pull-gone/sub/notes.txt"), "a folder renamed to a recorded path keeps what is in it")
        #expect(try FileManager.default.contentsOfDirectory(atPath: records).count == 1, "only the live writer's record is left")
        live.drop()
        #expect(try FileManager.default.contentsOfDirectory(atPath: records).isEmpty)
    }

    /// A sweep trusts records only in a folder no one else may write, only its user's own files, and even then removes
    /// only entries named as Coffer names them: whoever could write a record would otherwise choose what is removed.
    /// A record whose folder is not there, perhaps on an unmounted disk, is kept for a later sweep, for 30 days; one whose
    /// folder was removed from a mounted file system for a day.
    @Test func aSweepTrustsOnlyPrivateRecordsOfTemporaryNames() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (base, work, records) = (scratch.base, scratch.work, scratch.records)
        func record(_ path: String, named name: String = Scratch.recordName()) { scratch.deadRecord(path, named: name) }
        #expect(FileManager.default.createFile(atPath: "\(work)/notes.txt", contents: Data("mine".utf8)))
        record("\(work)/notes.txt")
        #expect(FileManager.default.createFile(atPath: "\(work)/.out.coffer-tmp-x1", contents: Data("plaintext".utf8)))
        record("\(work)/.out.coffer-tmp-x1")
        record("\(base)/unmounted/.coffer-pull-abc", named: "record-unmounted")
        try FileManager.default.createDirectory(atPath: "\(work)/removed/deeper", withIntermediateDirectories: true)
        for name in ["record-removed", "record-removedold"] {
            #expect(FileManager.default.createFile(atPath: "\(work)/removed/deeper/.out.coffer-tmp-\(name.count)", contents: Data()))
            record("\(work)/removed/deeper/.out.coffer-tmp-\(name.count)", named: name)
        }
        try FileManager.default.removeItem(atPath: "\(work)/removed")
        // An entry still there that a sweep cannot remove (a FIFO; as well a folder that cannot be emptied) is tried again.
        #expect(mkfifo("\(work)/.out.coffer-tmp-fifo", 0o600) == 0)
        record("\(work)/.out.coffer-tmp-fifo", named: "record-fifo")
        // A folder that cannot be looked at for another reason than not being there (a loop of links here) may come back.
        var workStatus = stat()
        #expect(stat(work, &workStatus) == 0 && symlink("\(work)/loop", "\(work)/loop") == 0)
        let looped = "\(workStatus.st_dev) 12345 \(work)/loop/x/.coffer-pull-abc\n"
        #expect(FileManager.default.createFile(atPath: "\(records)/record-loop", contents: Data(looped.utf8)))
        var twoDaysAgo = [timespec(tv_sec: time(nil) - 2 * 86_400, tv_nsec: 0), timespec(tv_sec: time(nil) - 2 * 86_400, tv_nsec: 0)]
        for name in ["record-removedold", "record-fifo", "record-loop"] { #expect(utimensat(AT_FDCWD, "\(records)/\(name)", &twoDaysAgo, 0) == 0) }
        record("\(base)/gone-long-ago/.coffer-pull-abc", named: "record-old")
        var old = [timespec(tv_sec: time(nil) - 31 * 86_400, tv_nsec: 0), timespec(tv_sec: time(nil) - 31 * 86_400, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, "\(records)/record-old", &old, 0) == 0)

        #expect(chmod(records, 0o777) == 0)
        #expect(Leftovers.sweep(records) == 0, "a records folder others may write is not read")
        #expect(access("\(work)/.out.coffer-tmp-x1", F_OK) == 0)
        #expect(chmod(records, 0o700) == 0)
        #expect(Leftovers.sweep(records) == 1)
        #expect(access("\(work)/.out.coffer-tmp-x1", F_OK) != 0)
        #expect(access("\(work)/notes.txt", F_OK) == 0, "a recorded file not named as a temporary one stays")
        let left = try FileManager.default.contentsOfDirectory(atPath: records).sorted()
        #expect(left == ["record-fifo", "record-loop", "record-removed", "record-unmounted"], "\(left)")
    }

    /// Only files named as records are records: a `temporary` folder of the user's own that the state path leads to (a
    /// link someone else made on the way) keeps its files. A record of an earlier Coffer, named by its ID alone, is
    /// read if it holds a record. A `temporary/` that is a link is neither written nor read.
    @Test func aSweepLeavesWhatIsNotARecord() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (work, records) = (scratch.work, scratch.records)
        for (name, text) in [("thesis.tex", "precious"), ("notes", "k\n"), ("record-half", "1 2 /x/.coffer-pull-ab")] {
            #expect(FileManager.default.createFile(atPath: "\(records)/\(name)", contents: Data(text.utf8)))
        }
        #expect(FileManager.default.createFile(atPath: "\(work)/.out.coffer-tmp-x1", contents: Data("plaintext".utf8)))
        scratch.deadRecord("\(work)/.out.coffer-tmp-x1", named: "3k2j1")

        #expect(Leftovers.sweep(records) == 1)
        #expect(access("\(work)/.out.coffer-tmp-x1", F_OK) != 0)
        let left = try FileManager.default.contentsOfDirectory(atPath: records).sorted()
        #expect(left == ["notes", "thesis.tex"])

        let linked = "\(scratch.base)/linked"
        #expect(symlink(records, linked) == 0)
        let fd = open(work, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        #expect(Leftovers.record(entry: "\(work)/.coffer-pull-l1", fd: fd, in: linked) == nil)
        #expect(Leftovers.sweep(linked) == 0)
    }

    /// A record names its entry by its folder resolved, in the file system's bytes: a link on the way changed after the
    /// writer died, or a folder whose name is not UTF-8, does not hide the entry from the sweep.
    @Test func anEntryIsFoundThroughAChangedLinkAndANameNotUTF8() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (work, records) = (scratch.work, scratch.records)
        let latin1: [CChar] = (Array("\(work)/caf".utf8) + [0xE9, 0]).map { CChar(bitPattern: $0) }  // "café" in Latin-1
        #expect(mkdir(latin1, 0o700) == 0)
        #expect(mkdir("\(work)/v2", 0o700) == 0)
        #expect(symlink(latin1, "\(work)/current") == 0)
        let entry = "\(work)/current/.model.bin.coffer-tmp-k1"
        let fd = open(entry, O_RDWR | O_CREAT | O_EXCL, 0o600)
        defer { close(fd) }
        #expect(fd >= 0)
        let live = try #require(Leftovers.record(entry: entry, fd: fd, in: records))
        // The writer dies: its line stays, its lock goes.
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: records).first)
        let line = try #require(FileManager.default.contents(atPath: "\(records)/\(name)"))
        #expect(line.contains(0xE9), "the folder's own bytes are recorded")
        live.drop()
        #expect(FileManager.default.createFile(atPath: "\(records)/\(Scratch.recordName())", contents: line))
        #expect(unlink("\(work)/current") == 0 && symlink("\(work)/v2", "\(work)/current") == 0)

        #expect(Leftovers.sweep(records) == 1)
        #expect(access(latin1.dropLast() + Array("/.model.bin.coffer-tmp-k1".utf8CString), F_OK) != 0, "the entry went")
        #expect(try FileManager.default.contentsOfDirectory(atPath: records).isEmpty)
    }

    /// An entry whose folder path, with its name, is past PATH_MAX (the folder itself is not) is reached through the
    /// folder: a sweep that opened the whole path failed and dropped the record.
    @Test func anEntryWithALongNameInADeepFolderIsSwept() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var folder = scratch.work
        while folder.utf8.count < 3_900 {
            folder += "/" + String(repeating: "d", count: min(200, 3_900 - folder.utf8.count))
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        }
        let name = "." + String(repeating: "n", count: 200) + ".coffer-tmp-abc"
        let folderFD = open(folder, O_RDONLY | O_DIRECTORY)
        defer { close(folderFD) }
        let fd = openat(folderFD, name, O_RDWR | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0)
        var status = stat()
        #expect(fstat(fd, &status) == 0)
        close(fd)
        let line = "\(status.st_dev) \(status.st_ino) \(folder)/\(name)\n"
        #expect(FileManager.default.createFile(atPath: "\(scratch.records)/\(Scratch.recordName())", contents: Data(line.utf8)))

        #expect(Leftovers.sweep(scratch.records) == 1)
        #expect(faccessat(folderFD, name, F_OK, 0) != 0)
    }

    /// A temporary file its writer cannot remove by the path it knows (a link on the way changed while it wrote) keeps
    /// its record for the sweep, which finds it by the resolved path.
    @Test func aFileLeftByAChangedLinkIsLeftToTheSweep() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let work = scratch.work
        try FileManager.default.createDirectory(atPath: "\(work)/v1", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: "\(work)/v2", withIntermediateDirectories: false)
        #expect(symlink("\(work)/v1", "\(work)/current") == 0)
        do {
            let output = try AtomicOutputFile(destination: "\(work)/current/out.bin", durable: false)
            try Array("plaintext".utf8).withUnsafeBytes { try output.write($0) }
            #expect(unlink("\(work)/current") == 0 && symlink("\(work)/v2", "\(work)/current") == 0)
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: "\(work)/v1")
        #expect(left.count == 1, "the writer could not remove it: \(left)")
        Leftovers.sweep()
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(work)/v1").isEmpty, "the sweep did")
    }

    /// A record's time is compared, never subtracted from: tmpfs keeps any time, and the earliest one overflowed.
    @Test func aRecordOfAnyTimeIsSweptWithoutATrap() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let records = access("/dev/shm", W_OK) == 0 ? "/dev/shm/coffer-leftovers-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" : scratch.records
        defer { try? FileManager.default.removeItem(atPath: records) }
        try FileManager.default.createDirectory(atPath: records, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        #expect(FileManager.default.createFile(atPath: "\(records)/record-1", contents: Data("1 2 /nonexistent-dir/.x.coffer-tmp-abc\n".utf8)))
        var earliest = [timespec(tv_sec: Int.min, tv_nsec: 0), timespec(tv_sec: Int.min, tv_nsec: 0)]
        _ = utimensat(AT_FDCWD, "\(records)/record-1", &earliest, 0)
        #expect(Leftovers.sweep(records) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: records).isEmpty, "a record older than 30 days whose folder is gone goes")
    }

    /// A record names its entry from the root, so that a sweep from another working directory finds it.
    @Test func aRelativePathIsRecordedFromTheRoot() throws {
        let records = FileManager.default.temporaryDirectory.appendingPathComponent("relative-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: records) }
        let fd = open(FileManager.default.currentDirectoryPath, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        let record = try #require(Leftovers.record(entry: ".coffer-pull-rel", fd: fd, in: records))
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: records).first)
        let line = try String(contentsOfFile: "\(records)/\(name)", encoding: .utf8)
        let cwd = FileManager.default.currentDirectoryPath
        #expect(line.hasSuffix(" \(cwd == "/" ? "" : cwd)/.coffer-pull-rel\n"), "\(line)")
        record.drop()
    }

    @Test(arguments: [
        (".coffer-pull-3k2j1", true), (".coffer-pull-3k2j1.interrupted", true), ("coffer-fl-sim-a0", true),
        (".weights.bin.coffer-tmp-zz9", true), (".a.coffer-tmp-1.coffer-tmp-2", true),
        (".coffer-pull-report.bin.coffer-tmp-16tql3v0fzdz9", true), ("notes.txt", false), (".coffer-pull-", false), (".coffer-pull-ABC", false),
        (".coffer-pull-x/y", false),
        ("coffer-fl-sim-data.csv", false), (".coffer-tmp-1", false), ("a.coffer-tmp-1", false), (".coffer-pull-12345678901234", false),
    ])
    func temporaryNames(name: String, isTemporary: Bool) {
        #expect(Leftovers.isTemporaryName(name[...]) == isTemporary)
    }

    /// A temporary folder and file keep a record while they live, and drop it when they go (a file at its commit).
    @Test func temporaryEntriesAreRecordedWhileTheyLive() throws {
        let records = Leftovers.records
        func mine() -> Int {
            ((try? FileManager.default.contentsOfDirectory(atPath: records)) ?? []).filter { name in
                (try? String(contentsOfFile: "\(records)/\(name)", encoding: .utf8))?.contains("recorded-\(getpid())") == true
            }.count
        }
        let parent = FileManager.default.temporaryDirectory.path
        let folder = try TemporaryFolder(in: parent, prefix: "recorded-\(getpid())-")
        let file = try AtomicOutputFile(destination: "\(parent)/recorded-\(getpid()).bin", durable: false)
        #expect(mine() == 2)
        _ = consume folder
        #expect(mine() == 1)
        try file.commit()
        #expect(mine() == 0)
        unlink("\(parent)/recorded-\(getpid()).bin")
    }
}
