import CFiles
import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// How a pull puts decrypted files at their destination (``Registry/place(_:into:modelSignature:write:)``) and what
/// its interrupt handler removes a staging folder with.
struct PlaceTests {
    /// A model file entry whose contents are its own path.
    private func file(_ path: String) -> ModelStatement.File {
        .init(path: path, size: path.utf8.count, plaintextSHA256: "", sealedSHA256: "", sealedSize: 0)
    }

    /// A pull into a directory that does not exist yet appears by one rename of a staging folder made beside it; into
    /// an existing directory, file by file. Either way a failure leaves nothing, and no staging folder stays. A folder
    /// `model.sig/` in a version (an older Coffer pushed one) keeps the bundle out rather than failing the pull.
    @Test func placeMakesANewDirectoryAtOnceAndFillsAnExistingOne() throws {
        let f = try FileManager.default.url(
            for: .itemReplacementDirectory,
            in: .userDomainMask,
            appropriateFor: URL(fileURLWithPath: "/tmp"),
            create: true
        ).path
        defer { try? FileManager.default.removeItem(atPath: f) }
        func writing(failingAt failing: String? = nil) -> (ModelStatement.File, AtomicOutputFile, Int) throws(CofferRegistryError) -> Void {
            { (file: ModelStatement.File, output: AtomicOutputFile, _: Int) throws(CofferRegistryError) in
                if file.path == failing { throw .tampered("\(file.path) failed its check") }
                do { try Array(file.path.utf8).withUnsafeBytes { try output.write($0) } } catch {
                    throw .io(path: file.path, reason: "\(error)")
                }
            }
        }
        func tree(_ path: String) -> [String] { ((try? FileManager.default.subpathsOfDirectory(atPath: path)) ?? []).sorted() }
        let bundle = Data("{}".utf8)
        let files = [file("a.bin"), file("deep/er/b.bin")]

        #expect(try Registry.place(files, into: "\(f)/new/out", modelSignature: bundle, write: writing()) == 18)
        #expect(tree("\(f)/new") == ["out", "out/a.bin", "out/deep", "out/deep/er", "out/deep/er/b.bin", "out/model.sig"])
        #expect(FileManager.default.contents(atPath: "\(f)/new/out/deep/er/b.bin") == Data("deep/er/b.bin".utf8))
        #expect(throws: CofferRegistryError.self) {
            try Registry.place(files, into: "\(f)/failed", modelSignature: bundle, write: writing(failingAt: "deep/er/b.bin"))
        }
        #expect(tree(f) == tree(f).filter { $0.hasPrefix("new") }, "nothing of the failed pull, not even its staging folder")

        try FileManager.default.createDirectory(atPath: "\(f)/kept", withIntermediateDirectories: false)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: "\(f)/kept/notes.txt"))
        #expect(throws: CofferRegistryError.self) {
            try Registry.place(files, into: "\(f)/kept", modelSignature: bundle, write: writing(failingAt: "deep/er/b.bin"))
        }
        #expect(tree("\(f)/kept") == ["notes.txt"])
        _ = try Registry.place(files + [file("model.sig/c.bin")], into: "\(f)/kept", modelSignature: bundle, write: writing())
        #expect(tree("\(f)/kept") == ["a.bin", "deep", "deep/er", "deep/er/b.bin", "model.sig", "model.sig/c.bin", "notes.txt"])
        #expect(throws: CofferRegistryError.destinationExists("\(f)/kept/a.bin")) {
            try Registry.place(files, into: "\(f)/kept", modelSignature: nil, write: writing())
        }
    }

    /// What appears at a pull's destination while the pull decrypts (after its check for existing files) is neither
    /// replaced nor removed: a folder of the output directory's name, a file of a model file's name.
    @Test func placeReplacesNothingThatAppearedWhileItDecrypted() throws {
        let f = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-place-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: "\(f)/existing", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: f) }
        let files = [file("a.bin"), file("b.bin")]
        func writing(andMeanwhile appear: @escaping () -> Void) -> (ModelStatement.File, AtomicOutputFile, Int) throws(CofferRegistryError) -> Void {
            { (file: ModelStatement.File, output: AtomicOutputFile, _: Int) throws(CofferRegistryError) in
                if file.path == "b.bin" { appear() }
                do { try Array(file.path.utf8).withUnsafeBytes { try output.write($0) } } catch {
                    throw .io(path: file.path, reason: "\(error)")
                }
            }
        }
        let manager = FileManager.default
        #expect(throws: CofferRegistryError.destinationExists("\(f)/out")) {
            try Registry.place(
                files,
                into: "\(f)/out",
                modelSignature: nil,
                write: writing { try? manager.createDirectory(atPath: "\(f)/out", withIntermediateDirectories: false) }
            )
        }
        #expect(try manager.contentsOfDirectory(atPath: "\(f)/out").isEmpty, "the empty folder that appeared is not replaced")
        #expect(throws: CofferRegistryError.destinationExists("\(f)/existing/b.bin")) {
            try Registry.place(
                files,
                into: "\(f)/existing",
                modelSignature: nil,
                write: writing { _ = manager.createFile(atPath: "\(f)/existing/b.bin", contents: Data("mine".utf8)) }
            )
        }
        #expect(try manager.contentsOfDirectory(atPath: "\(f)/existing") == ["b.bin"], "a.bin, placed first, went again")
        #expect(manager.contents(atPath: "\(f)/existing/b.bin") == Data("mine".utf8))
        #expect(try manager.contentsOfDirectory(atPath: f).sorted() == ["existing", "out"], "no staging folder stays")
    }

    /// An interrupt's handler renames the staging folder away and empties it while the pull's thread goes on (the
    /// signal is handled on another thread). The pull must not make the folder again by its name for its next file:
    /// what it wrote there would outlive the interrupt (CI saw the folder stay, from a `mkdir -p` of the next file's
    /// folder). The folders of a file are made inside the staging folder, never the staging folder itself.
    @Test func aFileFolderIsMadeInsideTheStagingFolderAndNeverMakesItAgain() throws {
        let manager = FileManager.default
        let root = manager.temporaryDirectory.appendingPathComponent("coffer-staging-\(UUID().uuidString)").path
        try manager.createDirectory(atPath: root, withIntermediateDirectories: false)
        defer { try? manager.removeItem(atPath: root) }
        try Directories.make("deep/er", inside: root)
        try Directories.make(".", inside: root)
        #expect(manager.fileExists(atPath: "\(root)/deep/er"))
        #expect(throws: CofferRegistryError.io(path: "\(root)/deep/er/b.bin", reason: "exists and is not a directory")) {
            _ = manager.createFile(atPath: "\(root)/deep/er/b.bin", contents: Data())
            try Directories.make("deep/er/b.bin", inside: root)
        }
        try manager.removeItem(atPath: root)
        #expect(throws: CofferRegistryError.io(path: "\(root)/deep", reason: "cannot create directory: No such file or directory")) {
            try Directories.make("deep/er", inside: root)
        }
        #expect(throws: CofferRegistryError.io(path: root, reason: "No such file or directory")) { try Directories.make(".", inside: root) }
        #expect(!manager.fileExists(atPath: root))
    }

    /// The interrupt table (``TemporaryFiles``) holds 4,096 paths. A pull that cannot register what an interrupt would
    /// have to remove, its staging folder or a file it places into an existing directory, is refused before anything
    /// decrypted lies on the disk unregistered, and leaves nothing. With one slot free, a pull into a new directory
    /// takes it for its staging folder; one into an existing directory still needs a slot per file. In a child
    /// process: the table is the process's own.
    @Test func aFullInterruptTableRefusesThePullAndLeavesNothing() async {
        await #expect(processExitsWith: .success) {
            let f = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-full-\(UUID().uuidString)").path
            try? FileManager.default.createDirectory(atPath: "\(f)/existing", withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: f) }
            let files = ["a.bin", "b.bin"].map { ModelStatement.File(path: $0, size: 1, plaintextSHA256: "", sealedSHA256: "", sealedSize: 0) }
            let write = { (_: ModelStatement.File, output: AtomicOutputFile, _: Int) throws(CofferRegistryError) in
                do { try [UInt8(1)].withUnsafeBytes { try output.write($0) } } catch { throw .io(path: "a", reason: "\(error)") }
            }
            /// Whether the pull went through; a refusal for any reason but the full table fails the test.
            func pulls(into directory: String) -> Bool {
                do { _ = try Registry.place(files, into: directory, modelSignature: nil, write: write) } catch {
                    guard "\(error)".contains("than an interrupt could remove") else { exit(5) }
                    return false
                }
                return true
            }
            func entries(_ path: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
            var filled = 0
            while TemporaryFiles.register("\(f)/unused-\(filled)") { filled += 1 }
            guard filled == 4096, !pulls(into: "\(f)/new"), !pulls(into: "\(f)/existing") else { exit(1) }
            guard entries(f) == ["existing"], entries("\(f)/existing").isEmpty else { exit(2) }
            TemporaryFiles.unregister("\(f)/unused-0")
            guard !pulls(into: "\(f)/existing"), entries("\(f)/existing").isEmpty, pulls(into: "\(f)/new") else { exit(3) }
            guard entries(f) == ["existing", "new"], entries("\(f)/new") == ["a.bin", "b.bin"] else { exit(4) }
        }
    }

    /// What an interrupted pull's signal handler removes its staging folder with (``TemporaryFiles``): everything in
    /// it, folders with more entries than one read returns, never what a symbolic link points to.
    @Test func theSignalSafeTreeRemovalTakesAllAndFollowsNoLink() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-tree-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = FileManager.default
        try manager.createDirectory(atPath: "\(root)/outside", withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: "\(root)/outside/kept"))
        let tree = "\(root)/staging"
        try manager.createDirectory(atPath: "\(tree)/many", withIntermediateDirectories: true)
        for i in 0..<300 { try Data([UInt8(i & 0xff)]).write(to: URL(fileURLWithPath: "\(tree)/many/file-with-a-longer-name-\(i)")) }
        var deep = tree
        for level in 0..<31 { deep += "/\(level)" }
        try manager.createDirectory(atPath: deep, withIntermediateDirectories: true)
        try Data("deep".utf8).write(to: URL(fileURLWithPath: "\(deep)/f"))
        try manager.createSymbolicLink(atPath: "\(tree)/link", withDestinationPath: "\(root)/outside")
        try manager.createSymbolicLink(atPath: "\(deep)/link", withDestinationPath: "\(root)/outside")
        #expect(coffer_remove_tree(tree) == 0)
        #expect(!manager.fileExists(atPath: tree))
        #expect(try manager.contentsOfDirectory(atPath: "\(root)/outside") == ["kept"])
        #expect(coffer_remove_tree(tree) == 0, "a tree already gone is no error")
        // A single file, and a chain deeper than the walk goes (33 levels below the top): that chain is left, and said
        // so, and everything beside it at every level goes, at once (the walk does not go down the chain again and again).
        try Data("one".utf8).write(to: URL(fileURLWithPath: tree))
        #expect(coffer_remove_tree(tree) == 0 && !manager.fileExists(atPath: tree))
        var deeper = tree
        for level in 0..<34 {
            deeper += "/\(level)"
            guard level < 30 else { continue }  // each one two folders deep: within the walk's 32 levels
            try manager.createDirectory(atPath: "\(deeper)-beside/more", withIntermediateDirectories: true)
            try Data("beside".utf8).write(to: URL(fileURLWithPath: "\(deeper)-beside/more/f"))
        }
        try manager.createDirectory(atPath: deeper, withIntermediateDirectories: true)
        let started = Date()
        #expect(coffer_remove_tree(tree) != 0)
        #expect(Date().timeIntervalSince(started) < 5, "at most a few passes per folder")
        var chain = tree
        for level in 0..<34 {
            #expect(try manager.contentsOfDirectory(atPath: chain) == ["\(level)"], "level \(level)")
            chain += "/\(level)"
        }
    }
}
