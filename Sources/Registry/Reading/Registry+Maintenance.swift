import CofferCrypto
import Foundation
import GRDB
import Synchronization

/// What `fsck` found. The registry is consistent when `problems` is empty; orphan blobs and
/// temporary files are the expected residue of interrupted pushes, reclaimed by `gc`.
public struct FsckReport: Sendable, Equatable {
    public var versions = 0
    public var ledgerRecords = 0
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
    /// Checks the whole registry: SQLite's integrity; the ledger replayed from its first record (every signature,
    /// link and authority) and every table that copies it; every version's signature and rows against its ledger
    /// record; every blob's digest. Versions whose signer is not trusted are reported, and their blobs still count as
    /// theirs (not as orphans).
    public func fsck() throws(CofferRegistryError) -> FsckReport {
        var report = FsckReport()
        let integrity = try database.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
        if integrity != ["ok"] { report.problems.append("SQLite integrity_check: \(integrity.joined(separator: "; "))") }
        // What this client remembers must still be there (this also verifies what was appended since).
        var wentBack = false
        do { _ = try ledgerState() } catch {
            report.problems.append(error.description)
            wentBack = true
        }
        let (state, versionRecords) = try replayWholeLedger(into: &report)
        guard let state else { return report }
        // A registry that went back is still checked, against its own ledger, so every other problem is named too.
        if wentBack { ledger.withLock { $0 = state } }
        try compareTables(with: state, versionRecords: versionRecords, into: &report)
        // The audit log: its chain, its signed heads, and the entries the ledger, the state head and this client name.
        do { _ = try verifyAudit() } catch { report.problems.append(error.description) }

        let versions = try database.read { db in
            try Row.fetchAll(db, sql: "SELECT v.id, m.name, v.version FROM versions v JOIN models m ON m.id = v.model_id ORDER BY v.id")
        }
        let referenced = try referencedBlobs()
        let registryKeyID = (try? identity.keyID) ?? ""
        for row in versions {
            report.versions += 1
            let id: Int64 = row["id"]
            let label = "\(row["name"] as String):\(row["version"] as String)"
            do {
                let stored = try loadVersion(id)
                let (statement, _) = try authenticate(stored)
                if let facts = versionRecords[label] {
                    let p = statement.privacy
                    if facts.dataset != statement.lineage.datasetID || facts.segments != p.segments || facts.mechanism != p.mechanism {
                        report.problems.append("\(label): its ledger record disagrees with its signed statement (dataset, history or mechanism)")
                    }
                }
                if stored.erased != nil { continue }  // a tombstone: its keys and blobs are gone on purpose
                let hasRegistryKey = try database.read { db in
                    try Bool.fetchOne(
                        db,
                        sql: "SELECT 1 FROM wrapped_keys WHERE version_id = ? AND recipient_key_id = ?",
                        arguments: [id, registryKeyID]
                    )
                }
                if hasRegistryKey == nil { report.problems.append("\(label): no data key wrapped for the registry") }
                for file in statement.files {
                    do {
                        let digest = Digest.hex(try Digest.sha256(file: blobs.path(of: file.sealedSHA256)))
                        if digest != file.sealedSHA256 { report.problems.append("\(label): blob of \(file.path) is corrupt") }
                    } catch {
                        report.problems.append("\(label): blob of \(file.path) is missing")
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

    /// Replays the ledger from record 1, ignoring what was remembered, so that a rewrite of records verified long
    /// ago is found too. Returns the state (nil when the chain breaks) and every version record by `model:version`.
    private func replayWholeLedger(into report: inout FsckReport) throws(CofferRegistryError) -> (LedgerState?, [String: LedgerChange.VersionFacts]) {
        let rows = try database.read { db in try Row.fetchAll(db, sql: "SELECT seq, envelope FROM ledger ORDER BY seq") }
        guard let first = rows.first else {
            report.problems.append("the registry has no ledger (run coffer migrate)")
            return (nil, [:])
        }
        var state = LedgerState(registry: (try? Self.parse(Array(first["envelope"] as Data)).registry) ?? "")
        var versions: [String: LedgerChange.VersionFacts] = [:]
        for row in rows {
            do throws(CofferRegistryError) {
                let record = try Self.parse(Array(row["envelope"] as Data))
                guard record.seq == row["seq"] as Int64 else {
                    throw CofferRegistryError.tampered("ledger row \(row["seq"] as Int64) holds record \(record.seq)")
                }
                do { try state.apply(record) } catch { throw CofferRegistryError.tampered(error.description) }
                if case .version(let facts) = record.change {
                    let label = "\(facts.model):\(facts.version)"
                    if versions[label] != nil { report.problems.append("ledger record \(record.seq) records \(label) a second time") }
                    versions[label] = facts
                }
            } catch {
                report.problems.append(error.description)
                return (nil, versions)
            }
        }
        report.ledgerRecords = rows.count
        return (state, versions)
    }

    /// Names every row of the copied tables that the replayed ledger does not hold, and every fact it holds that
    /// the tables lack.
    private func compareTables(
        with state: LedgerState,
        versionRecords: [String: LedgerChange.VersionFacts],
        into report: inout FsckReport
    ) throws(CofferRegistryError) {
        func compare<T: Hashable>(_ what: String, table: Set<T>, ledger: Set<T>, describe: (T) -> String) {
            for extra in table.subtracting(ledger).map(describe).sorted() {
                report.problems.append("\(what) \(extra) is in its table but not in the ledger")
            }
            for missing in ledger.subtracting(table).map(describe).sorted() {
                report.problems.append("\(what) \(missing) is in the ledger but not in its table")
            }
        }
        let tables = try database.read { db in
            (
                principals: try Row.fetchAll(db, sql: "SELECT name, key_id FROM principals").map { "\($0[0] as String) \($0[1] as String)" },
                grants: try Row.fetchAll(db, sql: "SELECT principal, role, scope, alias FROM grants").map {
                    "\($0[0] as String) \($0[1] as String) \($0[2] as String) \(($0[3] as String?) ?? "-")"
                },
                trusted: try Row.fetchAll(db, sql: "SELECT key_id, name FROM trusted_signers").map { "\($0[0] as String) \($0[1] as String)" },
                aliases: try Row.fetchAll(
                    db,
                    sql: "SELECT m.name, a.alias, v.version FROM aliases a JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id"
                ).map { "\($0[0] as String)@\($0[1] as String) \($0[2] as String)" },
                policies: try Row.fetchAll(db, sql: "SELECT model, alias, rules FROM policies").map { row -> String in
                    let rules = (try? JSONDecoder().decode(PolicyRules.self, from: Data((row[2] as String).utf8))).map {
                        String(decoding: $0.json.canonicalBytes, as: UTF8.self)
                    }
                    return "\(row[0] as String)@\(row[1] as String) \(rules ?? "unreadable")"
                },
                budgets: try Row.fetchAll(db, sql: "SELECT dataset_id, epsilon, delta FROM budgets").map {
                    "\($0[0] as String) \($0[1] as Double) \($0[2] as Double)"
                },
                charges: try Row.fetchAll(
                    db,
                    sql: """
                        SELECT c.dataset_id, m.name, v.version FROM budget_charges c JOIN versions v ON v.id = c.version_id
                        JOIN models m ON m.id = v.model_id
                        """
                ).map { "\($0[0] as String) \($0[1] as String):\($0[2] as String)" },
                erasures: try Row.fetchAll(
                    db,
                    sql: "SELECT m.name, v.version FROM erasures e JOIN versions v ON v.id = e.version_id JOIN models m ON m.id = v.model_id"
                ).map { "\($0[0] as String):\($0[1] as String)" },
                keys: try String.fetchAll(db, sql: "SELECT key_id FROM registry_keys"),
                tokens: try Row.fetchAll(db, sql: "SELECT id, principal, scope, hex(token_hash) FROM api_tokens WHERE revoked_at IS NULL").map {
                    "\($0[0] as String) \($0[1] as String) \($0[2] as String) \(($0[3] as String).lowercased())"
                },
                versions: try Row.fetchAll(db, sql: "SELECT m.name, v.version, v.digest FROM versions v JOIN models m ON m.id = v.model_id").map {
                    "\($0[0] as String):\($0[1] as String) \($0[2] as String)"
                }
            )
        }
        compare("principal", table: Set(tables.principals), ledger: Set(state.principals.map { "\($0.key) \($0.value.keyID)" }), describe: { $0 })
        compare(
            "grant",
            table: Set(tables.grants),
            ledger: Set(state.grants.map { "\($0.principal) \($0.role.rawValue) \($0.scope) \($0.alias ?? "-")" }),
            describe: { $0 }
        )
        compare("trusted signer", table: Set(tables.trusted), ledger: Set(state.trusted.map { "\($0.key) \($0.value.name)" }), describe: { $0 })
        compare("alias", table: Set(tables.aliases), ledger: Set(state.aliases.map { "\($0.key) \($0.value.version)" }), describe: { $0 })
        compare(
            "policy",
            table: Set(tables.policies),
            ledger: Set(state.policies.map { "\($0.key) \(String(decoding: $0.value.json.canonicalBytes, as: UTF8.self))" }),
            describe: { $0 }
        )
        compare(
            "budget",
            table: Set(tables.budgets),
            ledger: Set(state.budgets.map { "\($0.key) \($0.value.epsilon) \($0.value.delta)" }),
            describe: { $0 }
        )
        compare(
            "budget charge",
            table: Set(tables.charges),
            ledger: Set(state.budgets.flatMap { dataset, budget in budget.charges.map { "\(dataset) \($0.model):\($0.version)" } }),
            describe: { $0 }
        )
        compare("erasure of", table: Set(tables.erasures), ledger: Set(state.erased.values.map { "\($0.model):\($0.version)" }), describe: { $0 })
        compare("registry key", table: Set(tables.keys), ledger: Set(state.keys.map(\.identity.keyID)), describe: { $0 })
        compare(
            "bearer token",
            table: Set(tables.tokens),
            ledger: Set(
                state.tokens.values.filter { !$0.revoked }.map { "\($0.facts.id) \($0.facts.principal) \($0.facts.scope.rawValue) \($0.facts.hash)" }
            ),
            describe: { String($0.prefix(16)) }
        )
        compare("version", table: Set(tables.versions), ledger: Set(versionRecords.map { "\($0.key) \($0.value.digest)" }), describe: { $0 })
    }

    /// The blobs versions hold now (a rekeyed version's new ones, not its originals), erased versions excepted;
    /// a version whose signer is not trusted still holds its blobs.
    func referencedBlobs() throws(CofferRegistryError) -> Set<String> {
        let erased = Set(try ledgerState().erased.keys)
        let rows = try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT v.digest, f.sealed_sha256 FROM files f JOIN versions v ON v.id = f.version_id
                    WHERE v.id NOT IN (SELECT version_id FROM rekeyed_files)
                    UNION ALL SELECT v.digest, r.sealed_sha256 FROM rekeyed_files r JOIN versions v ON v.id = r.version_id
                    """
            )
        }
        return Set(rows.filter { !erased.contains($0[0] as String) }.map { $0[1] as String })
    }

    /// Removes blobs no version references and leftover temporary files, older than `grace` seconds
    /// (a push in progress writes its blobs before it commits its rows).
    public func gc(grace: Double = 900) throws(CofferRegistryError) -> GCReport {
        let referenced = try referencedBlobs()
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
