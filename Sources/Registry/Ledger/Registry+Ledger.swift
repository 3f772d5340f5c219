public import CofferCrypto
import Foundation
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
    public func ledgerState() async throws(CofferRegistryError) -> LedgerState {
        let cached = ledger.withLock { $0 }
        let state = try await refreshed(cached)
        if state != cached { try await adopt(state) }
        return state
    }

    /// Brings `state` (or, when nil, what this user remembers, else nothing) up to the last record in the store.
    func refreshed(_ cached: LedgerState?) async throws(CofferRegistryError) -> LedgerState {
        var state: LedgerState
        if let cached {
            state = cached
        } else {
            guard let first = try await metadata.ledgerRecords(after: 0, limit: 1).first else {
                throw CofferRegistryError.notARegistry("\(home) has no signed ledger: it predates signed records (run coffer migrate)")
            }
            let genesis = try Self.parse(Array(first.envelope))
            let root = genesis.registry
            let location = ClientMemory.location(home: home)
            let pinned = memory?.pin(for: location)
            if let pinned, pinned != root {
                throw CofferRegistryError.tampered(
                    "the registry at \(home) has root key \(root), but this client pinned \(pinned): it was replaced (or re-created)"
                )
            }
            let remembered = try memory?.remembered(root)?.state
            if pinned != nil, let remembered { rememberedHere.withLock { $0 = remembered } }
            state = remembered ?? LedgerState(registry: root)
        }
        // What was verified before must still be there, unchanged: otherwise the registry went back. The same read
        // brings the records appended since.
        let rows = try await metadata.ledgerRecords(after: max(0, state.seq - 1), limit: nil)
        if state.seq > 0 {
            let stored = rows.first { $0.seq == state.seq }
            let (seq, hash) = (state.seq, state.hash)
            let sameBytes =
                stored.map { stored in verifiedTail.withLock { $0?.seq == seq && $0?.hash == hash && $0?.envelope == stored.envelope } } ?? false
            guard let stored, sameBytes || (try? LedgerRecord.hash(envelope: Array(stored.envelope))) == state.hash else {
                var last = rows.last?.seq ?? 0
                if rows.isEmpty { last = try await metadata.ledgerEnd() }
                throw CofferRegistryError.tampered(
                    last < state.seq
                        ? "the ledger went back from record \(state.seq), verified before, to record \(last): the registry was rolled back"
                        : "ledger record \(state.seq), verified before, was rewritten"
                )
            }
        }
        // A state remembered before waypoints gets them once, from this registry's own chain: without them, each
        // sync of a served registry by the same user would read its whole chain again (helper-39).
        if state.lacksIndexes, state.seq > 0 {
            state = try await RemoteLedger.filledIndexes(state, from: StoredLedger(registry: self), location: home)
        }
        // Signature checks are CPU work: a long catch-up (a new client, a million records) runs on a thread of its own.
        let pending = rows.filter { $0.seq > state.seq }
        guard let last = pending.last else {
            if let stored = rows.first(where: { $0.seq == state.seq }) {
                verifiedTail.withLock { $0 = (stored.seq, state.hash, stored.envelope) }
            }
            return state
        }
        let start = state
        let verified = try await Offload.run { () throws(CofferRegistryError) -> LedgerState in
            var state = start
            for row in pending {
                let record = try Self.parse(Array(row.envelope))
                guard record.seq == row.seq else { throw CofferRegistryError.tampered("ledger row \(row.seq) holds record \(record.seq)") }
                do throws(LedgerError) { try state.apply(record) } catch { throw CofferRegistryError.tampered(error.description) }
            }
            return state
        }
        verifiedTail.withLock { $0 = (last.seq, verified.hash, last.envelope) }
        return verified
    }

    static func parse(_ envelope: [UInt8]) throws(CofferRegistryError) -> LedgerRecord {
        do { return try LedgerRecord(envelope: envelope) } catch { throw .tampered(error.description) }
    }

    /// Keeps `state` as this process's verified state and, when it moved forward, as this user's. The first time this
    /// user's client verifies the registry at this path, it pins its root there (trust on first use, as SSH does): a
    /// registry later replaced wholesale at the same path, with another root, is refused.
    func adopt(_ state: LedgerState) async throws(CofferRegistryError) {
        let first = ledger.withLock { current in
            defer { if current == nil || current!.seq <= state.seq { current = state } }
            return current == nil
        }
        if rememberedHere.withLock({ $0 == state }) { return }
        if first, let memory {
            let location = ClientMemory.location(home: home)
            if memory.pin(for: location) == nil { try await memory.setPin(state.registry, for: location) }
        }
        try await memory?.remember(state.registry) { remembered in
            if remembered == nil {
                remembered = .init(state: state, audit: nil, head: nil)
            } else if state.supersedes(remembered!.state) {
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

    /// Signs `change` as the next record after `state`, judges it by ``LedgerState/apply(_:)`` exactly as every reader
    /// will, and adds it with the rows it implies to `work`. Returns the state with it and the acting principal's name.
    func append(
        _ change: LedgerChange,
        signer: Signer,
        to state: LedgerState,
        work: inout UnitOfWork
    ) throws(CofferRegistryError) -> (
        state: LedgerState, actor: String
    ) {
        var state = state
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
        // Applied as its readers will parse it (helper-61: `apply` takes a few values the parser refuses): the state a
        // commit adopts without reading its records back is the one a replay of them gives.
        do throws(LedgerError) { try state.apply(try LedgerRecord(envelope: record.envelope)) } catch { throw .refused(Self.refusal(error)) }
        work.records.append(LedgerRow(record))
        work.changes += Self.changes(for: record, state: state)
        work.ledgerAfter = state
        return (state, principal.name)
    }

    /// Prepares a change on the current ledger state (first on `held`, a state the caller read, when given) and commits
    /// it; when another writer (a process, a replica) appended first, prepares it again on the new state, which
    /// re-judges it (a budget spent meanwhile is seen). `prepare` fills the unit of work and returns what the caller
    /// gets; the unit must be built on `state`.
    func commitOnLedger<T: Sendable>(
        startingFrom held: LedgerState? = nil,
        _ prepare: (LedgerState, inout UnitOfWork) async throws(CofferRegistryError) -> T
    ) async throws(CofferRegistryError) -> T {
        var held = held
        for _ in 0..<50 {
            let state: LedgerState
            if let first = held {
                state = first
                held = nil
            } else {
                state = try await ledgerState()
            }
            var work = UnitOfWork(ledgerEnd: state.seq)
            let result = try await prepare(state, &work)
            do {
                try await metadata.commit(work)
            } catch .ledgerMoved {
                continue
            }
            // Committed: the change is made whatever happens next. Its records are the ledger's end, on the state they
            // were judged on: that is the state now, adopted without reading them back. Without records, reading keeps
            // this process's view current; if the database went away just now, the next call reads it instead.
            if let after = work.ledgerAfter, let last = work.records.last {
                verifiedTail.withLock { if ($0?.seq ?? 0) <= last.seq { $0 = (last.seq, after.hash, last.envelope) } }
                try? await adopt(after)
            } else {
                _ = try? await ledgerState()
            }
            return result
        }
        throw .databaseBusy
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
        also: @Sendable (LedgerState, inout UnitOfWork) async throws(CofferRegistryError) -> Void = { _, _ in }
    ) async throws(CofferRegistryError) -> LedgerState {
        try await commitOnLedger { (state, work) async throws(CofferRegistryError) -> LedgerState in
            let (next, actor) = try append(change, signer: signer, to: state, work: &work)
            try await also(next, &work)
            work.audit.append(AuditDraft(principal: actor, action: action, target: target, outcome: .ok, reason: reason))
            return next
        }
    }

    /// The rows a record implies in the queryable tables (docs/FORMAT.md: they are a copy, never the authority).
    static func changes(for record: LedgerRecord, state: LedgerState) -> [MetadataChange] {
        let now = record.at
        switch record.change {
        case .genesis(let key, let owner, _):
            var changes: [MetadataChange] = [
                .registryKey(RegistryKeyRecord(keyID: key.keyID, publicIdentity: Data(key.jsonBytes), createdAt: now), retireOthers: false)
            ]
            if let owner {
                let identity = Data(owner.identity.jsonBytes)
                changes.append(.addPrincipal(PrincipalRecord(name: owner.name, keyID: owner.identity.keyID, publicIdentity: identity, addedAt: now)))
                changes.append(.addGrant(GrantRecord(Grant(principal: owner.name, role: .admin), by: nil, at: now)))
                changes.append(
                    .trustSigner(TrustedSignerRecord(keyID: owner.identity.keyID, name: owner.name, publicIdentity: identity, addedAt: now))
                )
            }
            return changes
        case .keyRotate(let key, _, _):
            return [
                .registryKey(RegistryKeyRecord(keyID: key.keyID, publicIdentity: Data(key.jsonBytes), createdAt: now), retireOthers: true),
                .setMeta(key: "identity_key_id", value: key.keyID),
            ]
        case .principalAdd(let name, let identity, _):
            let principal = PrincipalRecord(
                name: name,
                keyID: identity.keyID,
                publicIdentity: Data(identity.jsonBytes),
                addedAt: now,
                addedBy: record.by
            )
            return [.addPrincipal(principal)]
                + state.grants.filter { $0.principal == name }.map { .addGrant(GrantRecord($0, by: record.by, at: now)) }
        case .principalRemove(let name):
            return [.removePrincipal(name: name, at: now)]
        case .grant(let grant):
            return [.addGrant(GrantRecord(grant, by: record.by, at: now))]
        case .revoke(let grant):
            return [.removeGrant(principal: grant.principal, role: grant.role.rawValue, scope: grant.scope, alias: grant.alias)]
        case .trustAdd(let name, let identity):
            return [.trustSigner(TrustedSignerRecord(keyID: identity.keyID, name: name, publicIdentity: Data(identity.jsonBytes), addedAt: now))]
        case .trustRemove(let keyID):
            return [.untrustSigner(keyID: keyID)]
        case .policySet(let model, let alias, let rules):
            if rules.isEmpty { return [.removePolicy(model: model, alias: alias ?? "")] }
            let text = String(decoding: rules.json.canonicalBytes, as: UTF8.self)
            return [.setPolicy(PolicyRecord(model: model, alias: alias ?? "", rules: text, setAt: now, setBy: record.by))]
        case .budgetSet(let dataset, let epsilon, let delta, _):
            return [.setBudget(BudgetRecord(datasetID: dataset, epsilon: epsilon, delta: delta, setAt: now, setBy: record.by))]
        case .version, .erase, .rekey, .auditHead:
            return []  // their rows are written by the push, erase and rekey that record them
        case .tokenCreate(let facts):
            let token = APITokenRecord(
                id: facts.id,
                tokenHash: Data(Digest.bytes(fromHex: facts.hash) ?? []),
                principal: facts.principal,
                scope: facts.scope.rawValue,
                createdAt: now,
                expiresAt: facts.expires,
                createdBy: record.by
            )
            return [.addToken(token)]
        case .tokenRevoke(let id):
            return [.revokeToken(id: id, at: now)]
        case .aliasSet(let model, let alias, let version, _, _):
            return [.setAlias(model: model, alias: alias, version: version, at: now)]
        case .aliasRemove(let model, let alias):
            return [.removeAlias(model: model, alias: alias)]
        }
    }
}

extension LedgerRow {
    init(_ record: LedgerRecord) {
        self.init(seq: record.seq, kind: record.change.kind, object: record.change.object, envelope: Data(record.envelope), hash: record.hash)
    }
}

extension GrantRecord {
    init(_ grant: Grant, by: String?, at: String) {
        self.init(principal: grant.principal, role: grant.role.rawValue, scope: grant.scope, alias: grant.alias, grantedAt: at, grantedBy: by)
    }
}
