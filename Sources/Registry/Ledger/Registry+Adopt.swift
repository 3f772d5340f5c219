public import CofferCrypto
import Foundation
import GRDB
import Synchronization

extension Registry {
    /// Gives a registry made before signed records (its tables full, its ledger empty) a ledger that restates what its
    /// tables hold, signed by its own key (`coffer migrate`): trusted signers, principals and grants, every version (each
    /// budget set just before the first version charged to it, so the charges come out as they were), erasures,
    /// re-encryptions, aliases, policies and live tokens. The genesis record names how many records restate the past,
    /// so that a reader accepts the registry key alone for them, and the keys retired before, whose audit heads then
    /// still verify. Whoever runs it vouches for the state the tables were in: check them with `fsck` first.
    ///
    /// - Returns: the number of records written.
    @discardableResult
    public func adoptLedger(registryKey: UnlockedIdentity) async throws(CofferRegistryError) -> Int {
        let root = registryKey.publicIdentity
        // Only SQLite registries predate signed records: every other store is created with its ledger.
        guard let database = metadata as? SQLiteMetadataStore else {
            throw .refused("this registry's \(metadata.name) was created with a ledger: there is nothing to migrate")
        }
        let records = try await database.write { db -> [LedgerRecord] in
            guard try Int64.fetchOne(db, sql: "SELECT count(*) FROM ledger") == 0 else {
                throw CofferRegistryError.refused("this registry already has a ledger: there is nothing to migrate")
            }
            guard try String.fetchOne(db, sql: "SELECT value FROM registry_meta WHERE key = 'identity_key_id'") == root.keyID else {
                throw CofferRegistryError.refused("migrating needs the registry's current key (registry.key)")
            }
            let changes = try Self.pastChanges(db)
            let legacy = try Data.fetchAll(
                db,
                sql: "SELECT public_identity FROM registry_keys WHERE key_id != ? AND retired_at IS NOT NULL",
                arguments: [root.keyID]
            )
            .compactMap { try? PublicIdentity(jsonBytes: Array($0)) }
            let at = Self.now()
            var state = LedgerState(registry: root.keyID)
            var written: [LedgerRecord] = []
            let genesis = LedgerChange.genesis(key: root, owner: nil, adoption: .init(records: Int64(changes.count), legacyKeys: legacy))
            for change in [genesis] + changes {
                let record = LedgerRecord.sign(
                    registry: root.keyID,
                    seq: state.seq + 1,
                    prev: state.hash,
                    at: at,
                    by: "registry",
                    change: change,
                    signer: registryKey.identity
                )
                do throws(LedgerError) { try state.apply(record) } catch {
                    throw CofferRegistryError.refused(
                        "the tables do not restate as a valid ledger (\(Self.refusal(error))): fix what fsck reports first"
                    )
                }
                try db.execute(
                    sql: "INSERT INTO ledger (seq, kind, object, envelope, hash) VALUES (?, ?, ?, ?, ?)",
                    arguments: [record.seq, change.kind, change.object, Data(record.envelope), record.hash]
                )
                written.append(record)
            }
            try db.execute(
                sql: "INSERT OR REPLACE INTO registry_keys (key_id, public_identity, created_at) VALUES (?, ?, ?)",
                arguments: [root.keyID, Data(root.jsonBytes), at]
            )
            try SQLiteMetadataStore.append(
                [
                    AuditDraft(
                        principal: "registry",
                        action: "migrate",
                        target: root.keyID,
                        outcome: .ok,
                        reason: "ledger of \(written.count) records restating the registry's past"
                    )
                ],
                db: db
            )
            return written
        }
        ledger.withLock { $0 = nil }
        try await memory?.setPin(root.keyID, for: ClientMemory.location(home: home))
        _ = try await ledgerState()
        return records.count
    }

    /// The changes that rebuild, from the tables, the state they hold.
    private static func pastChanges(_ db: Database) throws -> [LedgerChange] {
        var changes: [LedgerChange] = []
        func identity(_ data: Data?, _ what: String) throws -> PublicIdentity {
            guard let data, let identity = try? PublicIdentity(jsonBytes: Array(data)) else {
                throw CofferRegistryError.refused("\(what) has no readable public identity in the registry")
            }
            return identity
        }
        // Trusted signers, one key per name (a name held twice keeps its first key; the others get their key ID appended).
        var names = Set<String>()
        for row in try Row.fetchAll(db, sql: "SELECT key_id, name, public_identity FROM trusted_signers ORDER BY added_at, key_id") {
            var name: String = row["name"]
            if !names.insert(name).inserted {
                name = "\(name)-\((row["key_id"] as String).prefix(8))"
                try db.execute(sql: "UPDATE trusted_signers SET name = ? WHERE key_id = ?", arguments: [name, row["key_id"] as String])
                names.insert(name)
            }
            changes.append(.trustAdd(name: name, identity: try identity(row["public_identity"], "trusted signer \(name)")))
        }
        // Principals in the order they were added (the first becomes an admin, as it did), then every grant.
        for row in try Row.fetchAll(db, sql: "SELECT name, public_identity FROM principals ORDER BY added_at, name") {
            changes.append(
                .principalAdd(name: row["name"], identity: try identity(row["public_identity"], "principal \(row["name"] as String)"), roles: [])
            )
        }
        var seen = Set<Grant>()
        for row in try Row.fetchAll(db, sql: "SELECT principal, role, scope, alias FROM grants ORDER BY id") {
            guard let role = Role(rawValue: row["role"]) else { continue }
            let grant = Grant(principal: row["principal"], role: role, scope: row["scope"], alias: row["alias"])
            if seen.insert(grant).inserted { changes.append(.grant(grant)) }
        }
        // Versions in commit order; a budget is set just before the first version charged to it.
        let budgets = Dictionary(
            try Row.fetchAll(db, sql: "SELECT dataset_id, epsilon, delta FROM budgets").map { ($0[0] as String, ($0[1] as Double, $0[2] as Double)) },
            uniquingKeysWith: { a, _ in a }
        )
        var budgetSet = Set<String>()
        let versions = try Row.fetchAll(
            db,
            sql: """
                SELECT v.id, m.name, v.version, v.digest, v.publisher_key_id, v.dataset_id, v.mechanism, v.standardisation,
                    v.batch_sampling, vp.segments, c.dataset_id AS charged, c.override_by FROM versions v JOIN models m ON m.id = v.model_id LEFT JOIN version_privacy vp ON vp.version_id = v.id
                LEFT JOIN budget_charges c ON c.version_id = v.id ORDER BY v.id
                """
        )
        for row in versions {
            let publisherKey: String = row["publisher_key_id"]
            let publisher = try identity(
                try Data.fetchOne(
                    db,
                    sql: """
                        SELECT public_identity FROM recipient_identities WHERE key_id = ?1 UNION ALL SELECT public_identity FROM principals
                        WHERE key_id = ?1 UNION ALL SELECT public_identity FROM trusted_signers WHERE key_id = ?1 LIMIT 1
                        """,
                    arguments: [publisherKey]
                ),
                "the publisher \(publisherKey) of \(row["name"] as String):\(row["version"] as String)"
            )
            let charged: String? = row["charged"]
            if let dataset = charged, !budgetSet.contains(dataset), let (epsilon, delta) = budgets[dataset] {
                changes.append(.budgetSet(dataset: dataset, epsilon: epsilon, delta: delta, models: nil))
                budgetSet.insert(dataset)
            }
            changes.append(
                .version(
                    .init(
                        model: row["name"],
                        version: row["version"],
                        digest: row["digest"],
                        publisher: publisher,
                        dataset: row["dataset_id"],
                        mechanism: row["mechanism"],
                        segments: PrivacyMetadata.segments(fromJSON: (row["segments"] as String?) ?? "[]"),
                        charged: charged != nil,
                        overrideBy: row["override_by"],
                        standardisation: row["standardisation"],
                        batchSampling: row["batch_sampling"]
                    )
                )
            )
        }
        for (dataset, (epsilon, delta)) in budgets.sorted(by: { $0.key < $1.key }) where !budgetSet.contains(dataset) {
            changes.append(.budgetSet(dataset: dataset, epsilon: epsilon, delta: delta, models: nil))
        }
        for row in try Row.fetchAll(
            db,
            sql:
                "SELECT m.name, v.version, v.digest FROM erasures e JOIN versions v ON v.id = e.version_id JOIN models m ON m.id = v.model_id ORDER BY e.erased_at"
        ) {
            changes.append(.erase(model: row[0], version: row[1], digest: row[2]))
        }
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT m.name, v.version, v.digest, a.document FROM attestations a JOIN versions v ON v.id = a.version_id
                JOIN models m ON m.id = v.model_id WHERE a.kind = 'rekey' ORDER BY v.id
                """
        ) {
            changes.append(.rekey(model: row[0], version: row[1], digest: row[2], attestation: Digest.hex(Digest.sha256(Array(row[3] as Data)))))
        }
        // Aliases before policies: the past's aliases were set under the policies of their time.
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT m.name, a.alias, v.version, v.digest, v.epsilon, v.delta, v.pruning_ratio, v.publisher_key_id,
                    (SELECT 1 FROM budget_charges c WHERE c.version_id = v.id) AS charged
                FROM aliases a JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id ORDER BY m.name, a.alias
                """
        ) {
            let facts = LedgerChange.AliasFacts(
                epsilon: row["epsilon"],
                delta: row["delta"],
                pruningRatio: row["pruning_ratio"],
                signer: row["publisher_key_id"],
                charged: (row["charged"] as Int?) != nil
            )
            changes.append(.aliasSet(model: row["name"], alias: row["alias"], version: row["version"], digest: row["digest"], facts: facts))
        }
        for row in try Row.fetchAll(db, sql: "SELECT model, alias, rules FROM policies ORDER BY model, alias") {
            guard let rules = try? JSONDecoder().decode(PolicyRules.self, from: Data((row["rules"] as String).utf8)) else { continue }
            let alias: String = row["alias"]
            changes.append(.policySet(model: row["model"], alias: alias.isEmpty ? nil : alias, rules: rules))
        }
        for row in try Row.fetchAll(
            db,
            sql: "SELECT id, principal, scope, expires_at, token_hash FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at"
        ) {
            guard let scope = TokenScope(rawValue: row["scope"]) else { continue }
            changes.append(
                .tokenCreate(
                    .init(
                        id: row["id"],
                        principal: row["principal"],
                        scope: scope,
                        expires: row["expires_at"],
                        hash: Digest.hex(Array(row["token_hash"] as Data))
                    )
                )
            )
        }
        return changes
    }
}
