import CofferCrypto
import Foundation
import GRDB

/// What `fsck` found. The registry is consistent when `problems` is empty; orphan blobs and
/// temporary files are the expected residue of interrupted pushes, reclaimed by `gc`.
public struct FsckReport: Sendable, Equatable {
    public var versions = 0
    public var blobs = 0
    public var problems: [String] = []
    public var orphanBlobs: [String] = []
    public var temporaryFiles: [String] = []
    public var isClean: Bool { problems.isEmpty }
}

/// What `gc` removed.
public struct GCReport: Sendable, Equatable {
    public var removedBlobs = 0
    public var removedTemporaryFiles = 0
    public var reclaimedBytes = 0
}

extension Registry {
    /// Checks the whole registry: SQLite's integrity, every version's signature and rows, every blob's digest
    /// (and, with `identity`, every plaintext digest).
    public func fsck() throws(CofferRegistryError) -> FsckReport {
        var report = FsckReport()
        let integrity = try database.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
        if integrity != ["ok"] { report.problems.append("SQLite integrity_check: \(integrity.joined(separator: "; "))") }
        let versionIDs = try database.read { db in try Int64.fetchAll(db, sql: "SELECT id FROM versions ORDER BY id") }
        var referenced = Set<String>()
        for id in versionIDs {
            report.versions += 1
            do {
                let stored = try loadVersion(id)
                let (statement, _) = try authenticate(stored)
                if stored.erased != nil { continue }  // a tombstone: its keys and blobs are gone on purpose
                for file in statement.files { referenced.insert(file.sealedSHA256) }
                let hasRegistryKey = try database.read { db in
                    try Bool.fetchOne(
                        db,
                        sql: "SELECT 1 FROM wrapped_keys WHERE version_id = ? AND recipient_key_id = ?",
                        arguments: [id, identity.keyID]
                    )
                }
                if hasRegistryKey == nil { report.problems.append("\(stored.model):\(stored.version): no data key wrapped for the registry") }
                for file in statement.files {
                    do {
                        let digest = Digest.hex(try Digest.sha256(file: blobs.path(of: file.sealedSHA256)))
                        if digest != file.sealedSHA256 {
                            report.problems.append("\(stored.model):\(stored.version): blob of \(file.path) is corrupt")
                        }
                    } catch {
                        report.problems.append("\(stored.model):\(stored.version): blob of \(file.path) is missing")
                    }
                }
            } catch {
                report.problems.append(error.description)
            }
        }
        let onDisk = blobs.allDigests()
        report.blobs = onDisk.count
        report.orphanBlobs = onDisk.filter { !referenced.contains($0) }.sorted()
        report.temporaryFiles = ((try? FileManager.default.contentsOfDirectory(atPath: blobs.temporaryDirectory)) ?? []).sorted()
        return report
    }

    /// Removes blobs no version references and leftover temporary files, older than `grace` seconds
    /// (a push in progress writes its blobs before it commits its rows).
    public func gc(grace: Double = 900) throws(CofferRegistryError) -> GCReport {
        let referenced = Set(
            try database.read { db in
                try String.fetchAll(db, sql: "SELECT sealed_sha256 FROM files UNION SELECT sealed_sha256 FROM rekeyed_files")
            }
        )
        let cutoff = Date().addingTimeInterval(-grace)
        var report = GCReport()
        func removeIfOld(_ path: String) -> Int? {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                let modified = attributes[.modificationDate] as? Date, modified <= cutoff
            else { return nil }
            let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
            return (try? FileManager.default.removeItem(atPath: path)) != nil ? size : nil
        }
        for digest in blobs.allDigests() where !referenced.contains(digest) {
            if let size = removeIfOld(blobs.path(of: digest)) {
                report.removedBlobs += 1
                report.reclaimedBytes += size
            }
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: blobs.temporaryDirectory)) ?? [] {
            if let size = removeIfOld("\(blobs.temporaryDirectory)/\(name)") {
                report.removedTemporaryFiles += 1
                report.reclaimedBytes += size
            }
        }
        return report
    }
}
