public import CofferCrypto
import Foundation

/// What a principal may do. `admin` implies every other role.
public enum Role: String, Sendable, CaseIterable, Codable {
    /// Keys, principals, grants, budgets, policies.
    case admin
    /// Push versions of granted models.
    case publisher
    /// Metadata, ciphertext, verify.
    case reader
    /// Decrypt (pull plaintext): needed with `reader` to pull.
    case decrypt
    /// Open inference sessions on granted models or aliases.
    case inference
}

/// A role on a scope: `*` (every model), `NS/` (a namespace prefix) or one model, optionally only through one alias.
/// An inference grant may carry the admin's limits on the sessions its holder opens.
public struct Grant: Sendable, Hashable, Codable {
    public var principal: String
    public var role: Role
    public var scope: String
    public var alias: String?
    /// The longest session (seconds) this inference grant lets its holder open; nil: up to the registry's maximum.
    public var maxSessionSeconds: Int?
    /// Predictions (rows) the holder's sessions under this grant may make in all, from the grant on; nil: no limit.
    public var maxPredictions: Int?

    public init(
        principal: String,
        role: Role,
        scope: String = "*",
        alias: String? = nil,
        maxSessionSeconds: Int? = nil,
        maxPredictions: Int? = nil
    ) {
        self.principal = principal
        self.role = role
        self.scope = scope
        self.alias = alias
        self.maxSessionSeconds = maxSessionSeconds
        self.maxPredictions = maxPredictions
    }

    /// Whether `other` is the same grant, whatever its limits: a grant is named by principal, role, scope and alias,
    /// and granting it again with other limits replaces them.
    public func names(_ other: Grant) -> Bool {
        principal == other.principal && role == other.role && scope == other.scope && alias == other.alias
    }

    /// What names the grant in ``LedgerState/limitsSince``.
    var limitKey: String { "\(principal) \(role.rawValue) \(scope) \(alias ?? "-")" }

    /// Whether the grant limits the sessions opened under it.
    public var hasLimits: Bool { maxSessionSeconds != nil || maxPredictions != nil }

    /// Whether `scope` covers `model` (and the alias, if the grant names one).
    func covers(model: String, alias wantedAlias: String?) -> Bool {
        if let alias, alias != wantedAlias { return false }
        return Self.scope(scope, covers: model)
    }

    /// Whether a scope (`*`, a model name, or a namespace prefix ending in `/`) covers `model`: of grants and of the
    /// models a budget may be charged by.
    static func scope(_ scope: String, covers model: String) -> Bool {
        scope == "*" || scope == model || (scope.hasSuffix("/") && model.hasPrefix(scope))
    }

    /// Whether this grant gives `role` on `model` (reached through `alias`, if any).
    func allows(_ wanted: Role, on model: String?, alias wantedAlias: String?) -> Bool {
        guard role == wanted || role == .admin else { return false }
        if let alias, alias != wantedAlias { return false }
        guard let model else { return scope == "*" }
        return Self.scope(scope, covers: model)
    }
}

/// Who is acting, as the registry knows it: a principal's name and key, proven by holding its private key.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var keyID: String

    public init(name: String, keyID: String) {
        self.name = name
        self.keyID = keyID
    }
}

extension Registry {
    /// Whether the registry checks principals: true once its ledger names one (the owner named at init, or one
    /// added later).
    public func checksPrincipals() async throws(CofferRegistryError) -> Bool { try await ledgerState().checksPrincipals }

    /// The principal `identity` acts as: in a registry that checks principals, the principal with its key
    /// (refused and audited otherwise); in one that does not, the identity's own name.
    /// `held`: a ledger state the caller holds and goes on with (else the current one is read).
    public func principal(for identity: borrowing Identity, in held: LedgerState? = nil) async throws(CofferRegistryError) -> Principal {
        try await principal(keyID: identity.publicIdentity.keyID, declared: identity.publicIdentity.name, in: held)
    }

    func principal(keyID: String, declared: String, in held: LedgerState? = nil) async throws(CofferRegistryError) -> Principal {
        let state = if let held { held } else { try await ledgerState() }
        guard state.checksPrincipals else { return Principal(name: declared, keyID: keyID) }
        guard let name = state.principal(keyID: keyID) else {
            let reason = "identity \(declared) (\(keyID)) is not a principal of this registry"
            try await audit(principal: "\(declared)?", action: "authenticate", target: keyID, outcome: .refused, reason: reason)
            throw .refused(reason)
        }
        return Principal(name: name, keyID: keyID)
    }

    /// Checks that `principal` holds `role` on `model` (through `alias`); refuses, naming what is missing,
    /// and audits the refusal. A registry without principals allows everything; the registry's own key, acting in
    /// its own name, holds every role. `held`: a ledger state the caller holds and goes on with (else the current
    /// one is read).
    public func require(
        _ role: Role,
        on model: String?,
        alias: String? = nil,
        by principal: Principal?,
        action: String,
        target: String,
        in held: LedgerState? = nil
    ) async throws(CofferRegistryError) {
        let state = if let held { held } else { try await ledgerState() }
        guard state.checksPrincipals else { return }
        guard let principal else {
            let reason = "this registry checks principals: act with --identity"
            try await audit(principal: "-", action: action, target: target, outcome: .refused, reason: reason)
            throw .refused(reason)
        }
        if principal.name == "registry", principal.keyID == state.currentKey?.keyID { return }
        guard !state.holds(principal.name, role, on: model, alias: alias) else { return }
        let on = model.map { " on \($0)" } ?? ""
        let through = alias.map { " (alias \($0))" } ?? ""
        let reason = "\(principal.name) lacks the \(role.rawValue) role\(on)\(through)"
        try await audit(principal: principal.name, action: action, target: target, outcome: .refused, reason: reason)
        throw .refused(reason)
    }

    /// ``require(_:on:alias:by:action:target:)`` for the principal a signer acts as. In a registry without
    /// principals, a change that only the registry's key may sign is refused here, before anything is sealed.
    func require(_ signer: Signer, _ role: Role, on model: String?, action: String, target: String) async throws(CofferRegistryError) {
        let state = try await ledgerState()
        let principal: Principal
        do { principal = try acting(signer, in: state).principal } catch {
            try? await audit(
                principal: "\(signer.key.publicIdentity.name)?",
                action: action,
                target: target,
                outcome: .refused,
                reason: error.description
            )
            throw error
        }
        try await require(role, on: model, by: principal, action: action, target: target)
    }

    /// Adds a principal with roles on every model (its first principal, in a registry that had none, is also an
    /// admin). An admin's act; in a registry without principals, the registry key's.
    public func addPrincipal(
        name: String,
        identity: PublicIdentity,
        roles: [Role],
        by signer: Signer
    ) async throws(CofferRegistryError) {
        try ModelReference.validate(name: name)
        try await require(signer, .admin, on: nil, action: "principal.add", target: name)
        let state = try await ledgerState()
        if state.principals[name] != nil || state.principal(keyID: identity.keyID) != nil { throw .principalExists(name) }
        let granted = (state.checksPrincipals ? roles : [Role.admin] + roles).map(\.rawValue).joined(separator: ",")
        try await record(
            .principalAdd(name: name, identity: identity, roles: roles),
            signer: signer,
            action: "principal.add",
            target: name,
            reason: "roles \(granted)"
        )
    }

    /// Removes a principal: its grants go, its bearer tokens are revoked, its sessions revoked and their key copies
    /// destroyed, in the same transaction. The last admin of the registry cannot be removed.
    public func removePrincipal(_ name: String, by signer: Signer) async throws(CofferRegistryError) {
        try await require(signer, .admin, on: nil, action: "principal.remove", target: name)
        guard let key = try await ledgerState().principals[name] else { throw .unknownPrincipal(name) }
        // Its wrapped keys go with it: a principal that is gone decrypts nothing, and a key later re-added under
        // another name starts with none.
        try await record(
            .principalRemove(name: name),
            signer: signer,
            action: "principal.remove",
            target: name,
            reason: "grants, tokens, sessions and wrapped keys ended"
        ) { _, work in work.changes.append(.removeWrappedKeys(version: nil, recipient: key.keyID)) }
    }

    /// Every principal with its grants, by name.
    public func principals() async throws(CofferRegistryError) -> [(name: String, keyID: String, grants: [Grant])] {
        let state = try await ledgerState()
        return state.principals.keys.sorted().map { name in
            (
                name, state.principals[name]!.keyID,
                state.grants.filter { $0.principal == name }.sorted { ($0.role.rawValue, $0.scope) < ($1.role.rawValue, $1.scope) }
            )
        }
    }

    public func grants(of principal: String) async throws(CofferRegistryError) -> [Grant] {
        try await ledgerState().grants.filter { $0.principal == principal }.sorted { ($0.role.rawValue, $0.scope) < ($1.role.rawValue, $1.scope) }
    }

    /// Grants a role (admin only). The scope is `*`, a namespace prefix ending in `/`, or a model name. A grant of
    /// `decrypt` (or `admin`) carries keys: with `registryIdentity`, the registry's own key, the data key of every
    /// version in scope is wrapped for the grantee in the same transaction; later pushes wrap theirs at push.
    public func grant(_ grant: Grant, registryIdentity: UnlockedIdentity? = nil, by signer: Signer) async throws(CofferRegistryError) {
        _ = try await grantWrapping(grant, registryIdentity: registryIdentity, by: signer)
    }

    /// Revokes a role (admin only); returns whether a grant was removed. Sessions the principal can no longer open
    /// are revoked at once and their key copies destroyed (a later re-grant does not bring them back), and so are its
    /// wrapped keys of the versions it can no longer decrypt (``revokeReporting(_:by:)`` names them: whoever kept a
    /// data key is locked out only by a rekey).
    @discardableResult
    public func revoke(_ grant: Grant, by signer: Signer) async throws(CofferRegistryError) -> Bool {
        try await revokeReporting(grant, by: signer) != nil
    }

    /// ``revoke(_:by:)``, returning the versions whose wrapped key for the principal was deleted (nil when the grant
    /// was not held), each a version to rekey.
    public func revokeReporting(_ grant: Grant, by signer: Signer) async throws(CofferRegistryError) -> [String]? {
        try await require(signer, .admin, on: nil, action: "revoke", target: grant.principal)
        let state = try await ledgerState()
        // The grant as held (its limits included): `revoke bob inference --on m` names it without them.
        guard let held = state.grants.first(where: { $0.names(grant) }) else {
            try await audit(
                principal: try acting(signer, in: state).principal.name,
                action: "revoke",
                target: grant.principal,
                outcome: .failed,
                reason: "\(grant.summary) is not held"
            )
            return nil
        }
        return try await revokeRemovingKeys(held, by: signer)
    }
}

extension Grant {
    /// The grant in words: `inference on m alias prod (at most 100 predictions)`.
    public var summary: String {
        var limits: [String] = []
        if let maxSessionSeconds { limits.append("sessions of at most \(maxSessionSeconds) s") }
        if let maxPredictions { limits.append("at most \(maxPredictions) predictions") }
        return "\(role.rawValue) on \(scope)" + (alias.map { " alias \($0)" } ?? "") + (limits.isEmpty ? "" : " (\(limits.joined(separator: ", ")))")
    }
}
