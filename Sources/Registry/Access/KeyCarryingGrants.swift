public import CofferCrypto
import Foundation

/// What `share` gives: pulling (reader and decrypt) or inference only.
public enum ShareMode: String, Sendable, Codable {
    case pull
    case infer
}

/// What ``Registry/share(_:with:mode:maxSessionSeconds:maxPredictions:registryIdentity:by:)`` did.
public struct ShareResult: Sendable, Equatable {
    public var principal: String
    public var scope: String
    /// The grants recorded now (a grant already held is not recorded again).
    public var granted: [Grant]
    /// The versions whose data key was wrapped for the principal now (`NAME:VERSION`).
    public var wrapped: [String]
    /// Versions in scope still without a key for the principal: no registry key was given, so a server wraps them
    /// when the principal pulls (an embedded pull needs `share` again with the registry key).
    public var pending: [String]
    /// Open sessions that were opened under an inference grant whose limits this share replaced: ended, so that no
    /// session outlives or outspends the limits the grant has now (the principal opens new ones under them).
    public var endedSessions: [String] = []
}

/// What ``Registry/unshare(_:model:rekeyWith:by:)`` ended.
public struct UnshareResult: Sendable, Equatable {
    public var principal: String
    public var revoked: [Grant]
    /// Grants on a wider scope that still cover the model (`unshare` of one model never widens into them).
    public var kept: [Grant]
    /// Bearer token ids revoked (only when the principal was unshared from everything).
    public var tokens: [String]
    /// Session ids that no longer open anything.
    public var sessions: [String]
    /// Versions whose wrapped key for the principal was deleted.
    public var removedKeys: [String]
    /// Of those, versions the principal could have decrypted: whoever kept the data key is locked out only by a
    /// rekey. Empty once ``rekeyed`` covers them.
    public var toRekey: [String]
    public var rekeyed: [String]
}

extension Registry {
    // MARK: - Who holds keys

    /// The public identities of the principals holding `decrypt` on `model` in `state` (admins included: admin
    /// implies every role), by name. Nobody in a registry without principals, where keys follow `recipient add`.
    static func decryptHolders(of model: String, in state: LedgerState) -> [PublicIdentity] {
        guard state.checksPrincipals else { return [] }
        let names = Set(state.grants.filter { $0.allows(.decrypt, on: model, alias: nil) }.map(\.principal))
        return names.sorted().compactMap { state.principals[$0] }
    }

    /// Every version not erased of every model `scope` covers (`*`, `NS/`, or one model), by row id.
    func versions(in scope: String, state: LedgerState) async throws(CofferRegistryError) -> [VersionHead] {
        let models = state.latest.keys.filter { scope == "*" || scope == $0 || (scope.hasSuffix("/") && $0.hasPrefix(scope)) }
        var heads: [VersionHead] = []
        for model in models.sorted() {
            heads += try await metadata.versionHeads(model: model).filter { state.erased[$0.digest] == nil }
        }
        return heads
    }

    /// The data keys of `versions` wrapped for `recipient`, each unwrapped with the registry's key (every version's
    /// key is wrapped for it); versions whose registry stanza is gone (erased meanwhile) are skipped.
    func wrapWithRegistryKey(
        _ versions: [VersionHead],
        for recipient: PublicIdentity,
        registryIdentity: UnlockedIdentity
    ) async throws(CofferRegistryError) -> [WrappedKeyRecord] {
        guard !versions.isEmpty else { return [] }
        let registryKeyID = registryIdentity.publicIdentity.keyID
        let labels = Dictionary(versions.map { ($0.id, "\($0.model):\($0.version)") }, uniquingKeysWith: { a, _ in a })
        var records: [WrappedKeyRecord] = []
        // One read for every version (a round trip each costs seconds per thousand versions on PostgreSQL).
        for held in try await metadata.wrappedKeys(recipient: registryKeyID, versions: versions.map(\.id)) {
            let dataKey: SecretKey
            do { dataKey = try WrappedKey(encoded: Array(held.stanza)).unwrap(with: registryIdentity.identity) } catch {
                throw .tampered("\(labels[held.versionID] ?? "a version"): the data key wrapped for the registry does not open: \(error)")
            }
            records.append(
                WrappedKeyRecord(versionID: held.versionID, recipientKeyID: recipient.keyID, stanza: Data(dataKey.wrap(for: recipient).encoded))
            )
        }
        return records
    }

    /// Checks that `unlocked` is the registry's current key (the one every version's data key is wrapped for).
    func requireCurrentRegistryKey(_ unlocked: UnlockedIdentity) async throws(CofferRegistryError) {
        let current = try await identity
        guard unlocked.publicIdentity.keyID == current.keyID else {
            throw .refused("wrapping keys needs the registry's own identity (\(Self.identityName).key, \(current.keyID))")
        }
    }

    // MARK: - Share

    /// Grants `principal` pulling (`reader` and `decrypt`) or inference on `scope` (`*`, `NS/` or a model), in one
    /// command; an inference share may bound every session its holder opens (`maxSessionSeconds`) and the predictions
    /// (rows) they make in all (`maxPredictions`). For pulling, the data key of every version in scope is wrapped for the principal in the same
    /// transaction as the `decrypt` grant when `registryIdentity` (the registry's own key) is given; every version
    /// pushed later is wrapped for it at push. An admin's act.
    ///
    /// ```swift
    /// let shared = try await registry.share("icu/", with: "bob", mode: .pull, registryIdentity: registryKey, by: Signer(alice))
    /// ```
    public func share(
        _ scope: String,
        with principal: String,
        mode: ShareMode,
        maxSessionSeconds: Int? = nil,
        maxPredictions: Int? = nil,
        registryIdentity: UnlockedIdentity?,
        by signer: Signer
    ) async throws(CofferRegistryError) -> ShareResult {
        if mode == .pull, maxSessionSeconds != nil || maxPredictions != nil {
            throw .refused("session and prediction limits apply to inference: share with --infer")
        }
        let roles: [Role] = mode == .pull ? [.reader, .decrypt] : [.inference]
        var granted: [Grant] = []
        var wrapped: [String] = []
        var ended: [String] = []
        for role in roles {
            let grant = Grant(
                principal: principal,
                role: role,
                scope: scope,
                maxSessionSeconds: role == .inference ? maxSessionSeconds : nil,
                maxPredictions: role == .inference ? maxPredictions : nil
            )
            let (recorded, labels, endedSessions) = try await grantWrapping(grant, registryIdentity: registryIdentity, by: signer)
            if recorded { granted.append(grant) }
            wrapped += labels
            ended += endedSessions
        }
        var pending: [String] = []
        if mode == .pull {
            let state = try await ledgerState()
            if let key = state.principals[principal] {
                let held = Set(try await metadata.wrappedKeys(recipient: key.keyID).map(\.versionID))
                pending = try await versions(in: scope, state: state).filter { !held.contains($0.id) }.map { "\($0.model):\($0.version)" }
            }
        }
        return ShareResult(principal: principal, scope: scope, granted: granted, wrapped: wrapped, pending: pending, endedSessions: ended)
    }

    /// Records `grant` and, when it gives `decrypt` (or `admin`) and `registryIdentity` is given, wraps in the same
    /// transaction the data key of every version in its scope the principal holds no key for. An inference grant that
    /// replaces another's limits ends, in the same transaction, the open sessions opened under the old ones. Returns
    /// whether a record was made, the versions wrapped and the sessions ended.
    func grantWrapping(
        _ grant: Grant,
        registryIdentity: UnlockedIdentity?,
        by signer: Signer
    ) async throws(CofferRegistryError) -> (recorded: Bool, wrapped: [String], endedSessions: [String]) {
        try await require(signer, .admin, on: nil, action: "grant", target: grant.principal)
        if grant.scope != "*" { try ModelReference.validate(name: grant.scope.hasSuffix("/") ? String(grant.scope.dropLast()) : grant.scope) }
        if let alias = grant.alias { try ModelReference.validate(version: alias) }
        if grant.hasLimits {
            guard grant.role == .inference else { throw .refused("session and prediction limits apply to inference grants only") }
            guard (1...Self.maximumLifetime).contains(TimeInterval(grant.maxSessionSeconds ?? 1)) else {
                throw .refused("a grant's session lifetime must be more than 0 and at most 365 days (31536000 s)")
            }
            guard (1...1_000_000_000).contains(grant.maxPredictions ?? 1) else {
                throw .refused("a grant's predictions must be from 1 to 1000000000")
            }
        }
        if let registryIdentity { try await requireCurrentRegistryKey(registryIdentity) }
        let state = try await ledgerState()
        guard let grantee = state.principals[grant.principal] else { throw .unknownPrincipal(grant.principal) }
        let carriesKeys = (grant.role == .decrypt || grant.role == .admin) && grant.alias == nil
        let alreadyHeld = state.grants.contains(grant)
        guard !alreadyHeld || (carriesKeys && registryIdentity != nil) else { return (false, [], []) }

        final class Wrapped: @unchecked Sendable {
            var labels: [String] = []
            var endedSessions: [String] = []
        }
        let wrapped = Wrapped()
        // The inference grant whose limits this one replaces (the record's state, in `wrap`, has it gone already).
        let replaced = grant.role == .inference ? state.grants.first { $0.names(grant) && $0 != grant } : nil
        let wrap: @Sendable (LedgerState, inout UnitOfWork) async throws(CofferRegistryError) -> Void = { state, work in
            wrapped.labels = []
            wrapped.endedSessions = []
            if let replaced {
                // Revoked (session list says so) and their key copies destroyed.
                wrapped.endedSessions = try await self.metadata.sessions().filter { row in
                    row.session.principal == grant.principal && row.session.wrappedKey != nil && row.session.revokedAt == nil
                        && replaced.covers(model: row.model, alias: row.session.alias)
                }.map(\.session.id)
                if !wrapped.endedSessions.isEmpty {
                    let now = Registry.timestamp(Date())
                    work.changes += wrapped.endedSessions.map { .revokeSession(id: $0, at: now) }
                    work.changes.append(.dropSessionKeys(ids: wrapped.endedSessions))
                }
            }
            guard carriesKeys, let registryIdentity else { return }
            let held = Set(try await self.metadata.wrappedKeys(recipient: grantee.keyID).map(\.versionID))
            let missing = try await self.versions(in: grant.scope, state: state).filter { !held.contains($0.id) }
            let records = try await self.wrapWithRegistryKey(missing, for: grantee, registryIdentity: registryIdentity)
            if !records.isEmpty { work.changes.append(.putWrappedKeys(records)) }
            let labels = Dictionary(uniqueKeysWithValues: missing.map { ($0.id, "\($0.model):\($0.version)") })
            wrapped.labels = records.compactMap { labels[$0.versionID] }
        }
        if alreadyHeld {
            // The grant stands; only the keys it should carry are missing (it was made without the registry key). Built
            // on the ledger's end, so a revocation committed meanwhile makes it start again, and find the grant gone.
            try await commitOnLedger { (state, work) async throws(CofferRegistryError) in
                wrapped.labels = []
                guard state.grants.contains(grant) else { return }
                try await wrap(state, &work)
                guard !work.changes.isEmpty else { return }
                work.audit.append(
                    AuditDraft(
                        principal: try self.acting(signer, in: state).principal.name,
                        action: "grant",
                        target: grant.principal,
                        outcome: .ok,
                        reason: "\(grant.summary): keys of \(wrapped.labels.count) versions"
                    )
                )
            }
            return (false, wrapped.labels, [])
        }
        try await record(.grant(grant), signer: signer, action: "grant", target: grant.principal, reason: grant.summary, also: wrap)
        return (true, wrapped.labels, wrapped.endedSessions)
    }

    // MARK: - Revoke and unshare

    /// The principal's wrapped keys of versions whose model it no longer holds `decrypt` on in `state`: what a
    /// revocation deletes in its own transaction.
    func keysNoLongerGranted(to principal: String, state: LedgerState) async throws(CofferRegistryError) -> [VersionHead] {
        guard let key = state.principals[principal] else { return [] }
        let held = try await metadata.wrappedKeys(recipient: key.keyID)
        guard !held.isEmpty else { return [] }
        return try await metadata.versionHeads(ids: held.map(\.versionID)).filter { !state.holds(principal, .decrypt, on: $0.model) }
    }

    /// Revokes `principal`'s grants on `model` (every grant when nil), its wrapped keys of the versions it can no
    /// longer decrypt and, unshared from everything, its bearer tokens; sessions it can no longer open end with their
    /// grants. With `rekeyWith` (the registry's own key), every version it could have decrypted is re-encrypted
    /// under a fresh data key, which also revokes that version's other sessions. Returns everything it ended.
    public func unshare(
        _ principal: String,
        model: String? = nil,
        rekeyWith registryIdentity: UnlockedIdentity? = nil,
        by signer: Signer
    ) async throws(CofferRegistryError) -> UnshareResult {
        // Admin on every model, as each revoke record it makes requires.
        try await require(signer, .admin, on: nil, action: "unshare", target: principal)
        if let model, model != "*" { try ModelReference.validate(name: model.hasSuffix("/") ? String(model.dropLast()) : model) }
        if let registryIdentity { try await requireCurrentRegistryKey(registryIdentity) }
        let state = try await ledgerState()
        guard let key = state.principals[principal] else { throw .unknownPrincipal(principal) }
        let held = state.grants.filter { $0.principal == principal }
        let revoking = held.filter { model == nil || $0.scope == model }
        let kept = held.filter { grant in
            guard let model, !revoking.contains(grant) else { return false }
            return grant.scope == "*" || (grant.scope.hasSuffix("/") && model.hasPrefix(grant.scope))
        }
        let liveBefore = Set(
            try await metadata.sessions().filter { $0.session.principal == principal && $0.session.wrappedKey != nil && $0.session.revokedAt == nil }
                .map(\.session.id)
        )

        var removed: [String] = []
        for grant in revoking {
            removed += try await revokeRemovingKeys(grant, by: signer)
        }
        var tokens: [String] = []
        if model == nil {
            // Nothing granted is left: its bearer tokens would authenticate a principal that may do nothing.
            for token in try await ledgerState().tokens.values where token.facts.principal == principal && !token.revoked {
                try await revokeToken(id: token.facts.id, by: signer)
                tokens.append(token.facts.id)
            }
            // Keys held as a plain recipient (recipient add) go too: the principal may decrypt nothing now.
            let leftover = try await metadata.wrappedKeys(recipient: key.keyID)
            if !leftover.isEmpty {
                let heads = try await metadata.versionHeads(ids: leftover.map(\.versionID))
                try await metadata.commit(UnitOfWork(changes: [.removeWrappedKeys(version: nil, recipient: key.keyID)]))
                removed += heads.map { "\($0.model):\($0.version)" }
            }
        }
        var rekeyed: [String] = []
        var toRekey = removed
        if let registryIdentity {
            for label in removed {
                let result = try await rekey(try ModelReference(parsing: label), registryIdentity: registryIdentity, by: signer)
                rekeyed.append("\(result.model):\(result.version)")
            }
            toRekey = []
        }
        let liveAfter = Set(try await metadata.sessions().filter { $0.session.wrappedKey != nil && $0.session.revokedAt == nil }.map(\.session.id))
        let ended = liveBefore.subtracting(liveAfter).sorted()
        let actor = try acting(signer, in: try await ledgerState()).principal.name
        try await audit(
            principal: actor,
            action: "unshare",
            target: principal + (model.map { " \($0)" } ?? ""),
            outcome: .ok,
            reason:
                "\(revoking.count) grants, \(tokens.count) tokens, \(ended.count) sessions, \(removed.count) keys; \(rekeyed.count) rekeyed, \(toRekey.count) to rekey"
        )
        return UnshareResult(
            principal: principal,
            revoked: revoking,
            kept: kept,
            tokens: tokens,
            sessions: ended,
            removedKeys: removed,
            toRekey: toRekey,
            rekeyed: rekeyed
        )
    }

    /// Revokes a held grant, deleting in the same transaction the principal's wrapped keys of versions it can no longer
    /// decrypt and the key copies of sessions it can no longer open. Returns the versions whose keys went.
    func revokeRemovingKeys(_ grant: Grant, by signer: Signer) async throws(CofferRegistryError) -> [String] {
        final class Removed: @unchecked Sendable { var labels: [String] = [] }
        let removed = Removed()
        try await record(.revoke(grant), signer: signer, action: "revoke", target: grant.principal, reason: grant.summary) {
            (state, work) async throws(CofferRegistryError) in
            work.changes.append(.dropSessionKeys(ids: try await self.sessionsNoLongerGranted(to: grant.principal, state: state)))
            removed.labels = []
            // Only a grant that carried keys takes them away: revoking `inference` leaves a recipient's keys alone.
            guard grant.role == .decrypt || grant.role == .admin, let key = state.principals[grant.principal] else { return }
            for head in try await self.keysNoLongerGranted(to: grant.principal, state: state) {
                work.changes.append(.removeWrappedKeys(version: head.id, recipient: key.keyID))
                removed.labels.append("\(head.model):\(head.version)")
            }
        }
        return removed.labels
    }
}
