public import CofferCrypto
import Foundation
import GRDB
import Synchronization

/// Who signs the record of a change: an unlocked identity acting as its own principal, or the registry's own key
/// acting for someone it authenticated by other means (a server, for the holder of a bearer token).
public struct Signer: Sendable {
    public let key: UnlockedIdentity
    public let onBehalfOf: Principal?

    public init(_ key: UnlockedIdentity) {
        self.key = key
        self.onBehalfOf = nil
    }

    private init(key: UnlockedIdentity, onBehalfOf: Principal) {
        self.key = key
        self.onBehalfOf = onBehalfOf
    }

    /// The registry's key, signing for `principal` (whose roles are checked as if they signed).
    public static func registry(_ key: UnlockedIdentity, for principal: Principal) -> Signer { Signer(key: key, onBehalfOf: principal) }
}

extension Registry {
    /// The registry's governance state, replayed from its ledger and checked record by record: the records this
    /// process (or, through ``ClientMemory``, this user) has not verified yet are read and applied; a ledger that
    /// went back from what was verified before is refused.
    public func ledgerState() throws(CofferRegistryError) -> LedgerState {
        let cached = ledger.withLock { $0 }
        let state = try database.read { db in try self.refreshed(cached, db: db) }
        if state != cached { try adopt(state) }
        return state
    }

    /// Brings `state` (or, when nil, what this user remembers, else nothing) up to the last record in `db`.
    func refreshed(_ cached: LedgerState?, db: Database) throws -> LedgerState {
        var state: LedgerState
        if let cached {
            state = cached
        } else {
            guard let first = try Data.fetchOne(db.cachedStatement(sql: "SELECT envelope FROM ledger WHERE seq = 1")) else {
                throw CofferRegistryError.notARegistry("\(home) has no signed ledger: it predates signed records (run coffer migrate)")
            }
            let genesis = try Self.parse(Array(first))
            let root = genesis.registry
            let location = ClientMemory.location(home: home)
            if let memory, let pinned = memory.pin(for: location), pinned != root {
                throw CofferRegistryError.tampered(
                    "the registry at \(home) has root key \(root), but this client pinned \(pinned): it was replaced (or re-created)"
                )
            }
            state = memory?.remembered(root)?.state ?? LedgerState(registry: root)
        }
        if state.seq > 0 {
            // What was verified before must still be there, unchanged: otherwise the registry went back.
            let stored = try Data.fetchOne(db.cachedStatement(sql: "SELECT envelope FROM ledger WHERE seq = ?"), arguments: [state.seq])
            guard let stored, (try? Self.parse(Array(stored)).hash) == state.hash else {
                let last = try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(seq) FROM ledger")) ?? 0
                throw CofferRegistryError.tampered(
                    last < state.seq
                        ? "the ledger went back from record \(state.seq), verified before, to record \(last): the registry was rolled back"
                        : "ledger record \(state.seq), verified before, was rewritten"
                )
            }
        }
        let rows = try Row.fetchAll(db.cachedStatement(sql: "SELECT seq, envelope FROM ledger WHERE seq > ? ORDER BY seq"), arguments: [state.seq])
        for row in rows {
            let record = try Self.parse(Array(row["envelope"] as Data))
            guard record.seq == row["seq"] as Int64 else {
                throw CofferRegistryError.tampered("ledger row \(row["seq"] as Int64) holds record \(record.seq)")
            }
            do { try state.apply(record) } catch { throw CofferRegistryError.tampered(error.description) }
        }
        return state
    }

    static func parse(_ envelope: [UInt8]) throws(CofferRegistryError) -> LedgerRecord {
        do { return try LedgerRecord(envelope: envelope) } catch { throw .tampered(error.description) }
    }

    /// Keeps `state` as this process's verified state and, when it moved forward, as this user's. The first time this
    /// user's client verifies the registry at this path, it pins its root there (trust on first use, as SSH does): a
    /// registry later replaced wholesale at the same path, with another root, is refused.
    func adopt(_ state: LedgerState) throws(CofferRegistryError) {
        let first = ledger.withLock { current in
            defer { if current == nil || current!.seq <= state.seq { current = state } }
            return current == nil
        }
        if first, let memory {
            let location = ClientMemory.location(home: home)
            if memory.pin(for: location) == nil { try memory.setPin(state.registry, for: location) }
        }
        try memory?.remember(state.registry) { remembered in
            if remembered == nil {
                remembered = .init(state: state, audit: nil, head: nil)
            } else if remembered!.state.seq < state.seq {
                remembered!.state = state
            }
        }
    }

    /// The principal a signer acts as, and the `by` its record names.
    func acting(_ signer: Signer, in state: LedgerState) throws(CofferRegistryError) -> (principal: Principal, by: String) {
        let keyID = signer.key.publicIdentity.keyID
        if let principal = signer.onBehalfOf {
            guard keyID == state.currentKey?.keyID else { throw .refused("only the registry's current key signs for another principal") }
            return (principal, principal.name)
        }
        if keyID == state.currentKey?.keyID { return (Principal(name: "registry", keyID: keyID), "registry") }
        if state.checksPrincipals {
            guard let name = state.principal(keyID: keyID) else {
                let declared = signer.key.publicIdentity.name
                throw .refused("identity \(declared) (\(keyID)) is not a principal of this registry")
            }
            return (Principal(name: name, keyID: keyID), name)
        }
        return (Principal(name: signer.key.publicIdentity.name, keyID: keyID), keyID)
    }

    /// Appends `change`, signed by `signer`, inside the caller's write transaction: first the records other writers
    /// appended meanwhile are applied, then the new record is judged by ``LedgerState/apply(_:)`` exactly as every
    /// reader will judge it, then stored and copied into the tables. Returns the state with it.
    func append(_ change: LedgerChange, signer: Signer, db: Database) throws -> (state: LedgerState, record: LedgerRecord, actor: String) {
        var state = try refreshed(ledger.withLock { $0 }, db: db)
        let (principal, by) = try acting(signer, in: state)
        let record = LedgerRecord.sign(
            registry: state.registry,
            seq: state.seq + 1,
            prev: state.hash,
            at: Self.now(),
            by: by,
            change: change,
            signer: signer.key.identity
        )
        do { try state.apply(record) } catch { throw CofferRegistryError.refused(Self.refusal(error)) }
        try db.cachedStatement(sql: "INSERT INTO ledger (seq, kind, object, envelope, hash) VALUES (?, ?, ?, ?, ?)").execute(
            arguments: [record.seq, change.kind, change.object, Data(record.envelope), record.hash]
        )
        try Self.materialize(record, state: state, db: db)
        return (state, record, principal.name)
    }

    /// A rejected record as the one who tried to make it should read it: what the rule said, without the record number.
    static func refusal(_ error: LedgerError) -> String {
        switch error {
        case .broken(_, let why), .malformed(let why): why
        }
    }

    /// Records one change on its own: the record, its copy in the tables and its audit entry commit together.
    @discardableResult
    func record(
        _ change: LedgerChange,
        signer: Signer,
        action: String,
        target: String,
        reason: String,
        also: (Database, LedgerState) throws -> Void = { _, _ in }
    ) throws(CofferRegistryError) -> LedgerState {
        let state = try database.write { db in
            let (state, _, actor) = try append(change, signer: signer, db: db)
            try also(db, state)
            try Self.appendAudit(db, principal: actor, action: action, target: target, outcome: .ok, reason: reason)
            return state
        }
        try adopt(state)
        return state
    }

    /// Copies a record's effect into the queryable tables (docs/FORMAT.md: they are a copy, never the authority).
    static func materialize(_ record: LedgerRecord, state: LedgerState, db: Database) throws {
        let now = record.at
        switch record.change {
        case .genesis(let key, let owner, _):
            try db.execute(
                sql: "INSERT OR REPLACE INTO registry_keys (key_id, public_identity, created_at) VALUES (?, ?, ?)",
                arguments: [key.keyID, Data(key.jsonBytes), now]
            )
            if let owner {
                try db.execute(
                    sql: "INSERT INTO principals (name, key_id, public_identity, added_at, added_by) VALUES (?, ?, ?, ?, NULL)",
                    arguments: [owner.name, owner.identity.keyID, Data(owner.identity.jsonBytes), now]
                )
                try insertGrant(Grant(principal: owner.name, role: .admin), by: nil, at: now, db: db)
                try db.execute(
                    sql: "INSERT OR REPLACE INTO trusted_signers (key_id, name, public_identity, added_at) VALUES (?, ?, ?, ?)",
                    arguments: [owner.identity.keyID, owner.name, Data(owner.identity.jsonBytes), now]
                )
            }
        case .keyRotate(let key, _, _):
            try db.execute(sql: "UPDATE registry_keys SET retired_at = ? WHERE retired_at IS NULL", arguments: [now])
            try db.execute(
                sql: "INSERT INTO registry_keys (key_id, public_identity, created_at) VALUES (?, ?, ?)",
                arguments: [key.keyID, Data(key.jsonBytes), now]
            )
            try db.execute(sql: "INSERT OR REPLACE INTO registry_meta (key, value) VALUES ('identity_key_id', ?)", arguments: [key.keyID])
        case .principalAdd(let name, let identity, _):
            try db.execute(
                sql: "INSERT INTO principals (name, key_id, public_identity, added_at, added_by) VALUES (?, ?, ?, ?, ?)",
                arguments: [name, identity.keyID, Data(identity.jsonBytes), now, record.by]
            )
            for grant in state.grants where grant.principal == name { try insertGrant(grant, by: record.by, at: now, db: db) }
        case .principalRemove(let name):
            try db.execute(sql: "DELETE FROM grants WHERE principal = ?", arguments: [name])
            try db.execute(sql: "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE principal = ?", arguments: [now, name])
            try db.execute(
                sql: "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE principal = ?",
                arguments: [now, name]
            )
            try db.execute(sql: "DELETE FROM principals WHERE name = ?", arguments: [name])
        case .grant(let grant):
            try insertGrant(grant, by: record.by, at: now, db: db)
        case .revoke(let grant):
            try db.execute(
                sql: "DELETE FROM grants WHERE principal = ? AND role = ? AND scope = ? AND alias IS ?",
                arguments: [grant.principal, grant.role.rawValue, grant.scope, grant.alias]
            )
        case .trustAdd(let name, let identity):
            try db.execute(
                sql: "INSERT OR REPLACE INTO trusted_signers (key_id, name, public_identity, added_at) VALUES (?, ?, ?, ?)",
                arguments: [identity.keyID, name, Data(identity.jsonBytes), now]
            )
        case .trustRemove(let keyID):
            try db.execute(sql: "DELETE FROM trusted_signers WHERE key_id = ?", arguments: [keyID])
        case .policySet(let model, let alias, let rules):
            if rules.isEmpty {
                try db.execute(sql: "DELETE FROM policies WHERE model = ? AND alias = ?", arguments: [model, alias ?? ""])
            } else {
                try db.execute(
                    sql: "INSERT OR REPLACE INTO policies (model, alias, rules, set_at, set_by) VALUES (?, ?, ?, ?, ?)",
                    arguments: [model, alias ?? "", String(decoding: rules.json.canonicalBytes, as: UTF8.self), now, record.by]
                )
            }
        case .budgetSet(let dataset, let epsilon, let delta):
            try db.execute(
                sql: "INSERT OR REPLACE INTO budgets (dataset_id, epsilon, delta, set_at, set_by) VALUES (?, ?, ?, ?, ?)",
                arguments: [dataset, epsilon, delta, now, record.by]
            )
        case .version, .erase, .rekey, .auditHead:
            break  // their rows are written by the push, erase and rekey that record them
        case .tokenCreate(let facts):
            try db.execute(
                sql: "INSERT INTO api_tokens (id, token_hash, principal, scope, created_at, expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    facts.id, Data(Digest.bytes(fromHex: facts.hash) ?? []), facts.principal, facts.scope.rawValue, now, facts.expires, record.by,
                ]
            )
        case .tokenRevoke(let id):
            try db.execute(sql: "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?", arguments: [now, id])
        case .aliasSet(let model, let alias, let version, _, _):
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO aliases (model_id, alias, version_id, updated_at)
                    SELECT v.model_id, ?, v.id, ? FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?
                    """,
                arguments: [alias, now, model, version]
            )
        case .aliasRemove(let model, let alias):
            try db.execute(
                sql: "DELETE FROM aliases WHERE alias = ? AND model_id = (SELECT id FROM models WHERE name = ?)",
                arguments: [alias, model]
            )
        }
    }

    /// One grant row; a grant already held is not written twice (SQLite's UNIQUE lets NULL aliases repeat).
    private static func insertGrant(_ grant: Grant, by: String?, at: String, db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO grants (principal, role, scope, alias, granted_at, granted_by)
                SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS
                    (SELECT 1 FROM grants WHERE principal = ?1 AND role = ?2 AND scope = ?3 AND alias IS ?4)
                """,
            arguments: [grant.principal, grant.role.rawValue, grant.scope, grant.alias, at, by]
        )
    }
}
