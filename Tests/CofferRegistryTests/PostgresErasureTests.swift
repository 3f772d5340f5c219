import CofferCrypto
import CofferRegistry
import Foundation
import PostgresNIO
import Testing

@testable import CofferRegistry

/// Crypto-shredding on PostgreSQL, proven on the server's own files: after an erasure and a rotation, PostgreSQL still
/// holds copies of the erased wrapped key (dead tuples, and the write-ahead log until its segment is recycled), and none
/// of them opens with any key file that exists.
@Suite(.serialized, .enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct PostgresErasureTests {
    /// What a scan read (paths relative to the data directory) and found.
    struct Scan {
        var found: [Found] = []
        var files: Set<String> = []
        var bytes = 0
    }

    /// Sealed values found in PostgreSQL's files: where, and the bytes from the magic on.
    struct Found: Sendable {
        let file: String
        let offset: Int
        let bytes: [UInt8]
    }

    /// Every occurrence of the sealed-value magic in the files of the folders named (relative to the data directory),
    /// with the `length` bytes from it; on a thread of its own (reading hundreds of MiB would hold one of the test
    /// runner's two pool threads for seconds).
    static func scan(_ dataDirectory: String, folders: [String], length: Int) async throws -> Scan {
        try await Offload.run { try scanNow(dataDirectory, folders: folders, length: length) }
    }

    /// The folders that can hold this database's bytes: its own under base/, the shared catalogs, the write-ahead log.
    /// Not the whole data directory, where other tests create and drop their databases meanwhile: on CI a recursive
    /// listing of it (FileManager's enumerator, 46,412 files) once found the deleted row in the WAL but not in the heap
    /// file, which a DELETE and a CHECKPOINT leave in place; the scan now also says whether it read that file at all.
    static func folders(holding relation: String) -> [String] {
        [String(relation[..<(relation.lastIndex(of: "/") ?? relation.endIndex)]), "global", "pg_wal"]
    }

    private static func scanNow(_ dataDirectory: String, folders: [String], length: Int) throws -> Scan {
        var scan = Scan()
        for folder in folders {
            for name in try FileManager.default.contentsOfDirectory(atPath: "\(dataDirectory)/\(folder)").sorted() {
                let relative = "\(folder)/\(name)"
                let path = "\(dataDirectory)/\(relative)"
                var status = stat()
                guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else { continue }
                // The server may remove a file (a recycled WAL segment) while we list.
                guard let data = FileManager.default.contents(atPath: path) else { continue }
                scan.files.insert(relative)
                scan.bytes += data.count
                data.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress else { return }
                    let magic = EpochSeal.magic
                    var offset = 0
                    while offset + length <= raw.count, let hit = memchr(base + offset, Int32(magic[0]), raw.count - offset) {
                        let at = base.distance(to: UnsafeRawPointer(hit))
                        if at + length <= raw.count && Array(raw[at..<(at + magic.count)]) == magic {
                            scan.found.append(Found(file: relative, offset: at, bytes: Array(raw[at..<(at + length)])))
                        }
                        offset = at + 1
                    }
                }
            }
        }
        return scan
    }

    /// Where the copies are, in words: "base/16384/16421 (heap) x2, pg_wal/000000010000000000000001 x1".
    static func places(_ found: [Found]) -> String {
        Dictionary(grouping: found, by: \.file).map { "\($0.key) x\($0.value.count)" }.sorted().joined(separator: ", ")
    }

    @Test func afterEraseAndRotationNoCopyOfTheErasedKeyOpens() async throws {
        let fixture = try EpochFixture()
        let cluster = try PostgresTestSupport.cluster
        let test = try await PostgresTestSupport.database()
        let stanzaLength = 80
        let length = stanzaLength + EpochSeal.overhead
        try await test.withDatabase { database in
            let keys = try await EpochKeys.open(home: fixture.home, database: database)
            let stanzas = try await fixture.insertWrappedKeys(20, keys: keys, database: database)
            let victim = try #require(stanzas.keys.sorted().first)
            let victimRecipient = String(victim.split(separator: "\n")[1])
            let sealedBefore = try await fixture.sealedValues(database)
            let victimSealed = try #require(sealedBefore[EpochFixture.Row(column: .wrappedKeyStanza, key: victim)])
            let relation = try #require(try await database.scalar(String.self, "SELECT pg_relation_filepath('wrapped_keys')"))
            let folders = Self.folders(holding: relation)

            // Erase: the row goes, in the transaction that marks a rotation due; the server writes its buffers.
            try await database.transaction { connection in
                try await connection.rows("DELETE FROM wrapped_keys WHERE recipient_key_id = \(victimRecipient)")
                try await EpochKeys.markRotationDue(on: connection)
            }
            try await database.query("CHECKPOINT")

            // Before the rotation the threat is real: the deleted row's sealed bytes are on disk, and open.
            let before = try await Self.scan(cluster.dataDirectory, folders: folders, length: length)
            try #require(before.files.contains(relation), "the scan read the table's heap file")
            let victimCopiesBefore = before.found.filter { $0.bytes == victimSealed }
            #expect(!victimCopiesBefore.isEmpty, "the deleted row is still in PostgreSQL's files")
            #expect(try keys.open(victimSealed, column: .wrappedKeyStanza, rowKey: victim) == stanzas[victim])

            try await keys.rotate(database)
            try await database.query("CHECKPOINT")

            let after = try await Self.scan(cluster.dataDirectory, folders: folders, length: length)
            let victimCopies = after.found.filter { $0.bytes == victimSealed }
            // (a) The scan looks in the right place: the erased value is still physically there.
            #expect(!victimCopies.isEmpty, "dead tuples or WAL still hold the erased value")
            #expect(victimCopies.contains { $0.file == relation }, "the heap file keeps the dead tuple")
            // The WAL segment holding the insert is reported, not required: a CHECKPOINT from any other test on this
            // shared cluster can recycle that segment before the scan (CI saw exactly that).

            // (b) No candidate anywhere opens for the erased row with any key file that exists.
            let existing = try keys.keyFileEpochs()
            #expect(existing == [2])
            var opened = 0
            for epoch in existing {
                let key = try SecretKey(
                    copying: Array(try Data(contentsOf: URL(fileURLWithPath: "\(fixture.home)/epochs/\(epoch).key"))).withUnsafeBytes { $0 }
                )
                for candidate in after.found {
                    var relabelled = candidate.bytes
                    // Whatever epoch it names, try it as if it named this one too.
                    relabelled.replaceSubrange(
                        4..<8,
                        with: [UInt8(epoch >> 24), UInt8(epoch >> 16 & 0xff), UInt8(epoch >> 8 & 0xff), UInt8(epoch & 0xff)]
                    )
                    for bytes in [candidate.bytes, relabelled] where EpochSeal.open(bytes, key: key, column: .wrappedKeyStanza, rowKey: victim) != nil
                    {
                        opened += 1
                    }
                }
            }
            #expect(opened == 0, "a copy of the erased key opened")

            // Positive control: the same scan finds the surviving rows' current values, and they open.
            let survivors = try await fixture.sealedValues(database)
            let survivorsFound = survivors.filter { entry in after.found.contains { $0.bytes == entry.value } }
            #expect(!survivorsFound.isEmpty)
            for (row, sealed) in survivorsFound { #expect(try keys.open(sealed, column: row.column, rowKey: row.key) == stanzas[row.key]) }

            print(
                """
                Erasure scan: \(after.files.count) files, \(after.bytes / 1_048_576) MiB (\(folders.joined(separator: ", "))); \
                \(after.found.count) sealed-looking values; the erased value's sealed bytes before the rotation at \
                \(Self.places(victimCopiesBefore)), after it at \(Self.places(victimCopies)) (heap file of wrapped_keys: \(relation)); \
                copies opening with a key file that exists: \(opened)
                """
            )

            // VACUUM FULL rewrites the table and CHECKPOINT lets the old file go: the dead tuple leaves the heap; what
            // the WAL may still hold is sealed under the destroyed key.
            try await database.query("VACUUM FULL wrapped_keys")
            try await database.query("CHECKPOINT")
            let vacuumed = try await Self.scan(cluster.dataDirectory, folders: folders, length: length)
            let afterVacuum = vacuumed.found.filter { $0.bytes == victimSealed }
            #expect(!afterVacuum.contains { $0.file == relation }, "VACUUM FULL's new file holds no dead tuple")
            print("Erasure scan after VACUUM FULL and CHECKPOINT: the erased value's sealed bytes at \(Self.places(afterVacuum))")
        }
    }
}
