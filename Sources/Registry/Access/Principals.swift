public import CofferCrypto
import Foundation
import GRDB

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
public struct Grant: Sendable, Equatable, Codable {
    public var principal: String
    public var role: Role
    public var scope: String
    public var alias: String?

    public init(principal: String, role: Role, scope: String = "*", alias: String? = nil) {
        self.principal = principal
        self.role = role
        self.scope = scope
        self.alias = alias
    }

    /// Whether this grant gives `role` on `model` (reached through `alias`, if any).
    func allows(_ wanted: Role, on model: String?, alias wantedAlias: String?) -> Bool {
        guard role == wanted || role == .admin else { return false }
        if let alias, alias != wantedAlias { return false }
        guard let model else { return scope == "*" }
        return scope == "*" || scope == model || (scope.hasSuffix("/") && model.hasPrefix(scope))
    }
}

/// Who is acting, as the registry knows it: a principal's name and key, proven by holding its private key.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var keyID: String
}

extension Registry {
    /// Whether the registry checks principals: true once it has one (the owner named at init, or one added later).
    public func checksPrincipals() throws(CofferRegistryError) -> Bool {
        try database.read { db in try Int.fetchOne(db.cachedStatement(sql: "SELECT count(*) FROM principals")) ?? 0 } > 0
    }

    /// The principal `identity` acts as: in a registry that checks principals, the principal with its key
    /// (refused and audited otherwise); in one that does not, the identity's own name.
    public func principal(for identity: borrowing Identity) throws(CofferRegistryError) -> Principal {
        let keyID = identity.publicIdentity.keyID
        let declared = identity.publicIdentity.name
        guard try checksPrincipals() else { return Principal(name: declared, keyID: keyID) }
        let name = try database.read { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT name FROM principals WHERE key_id = ?"), arguments: [keyID])
        }
        guard let name else {
            let reason = "identity \(declared) (\(keyID)) is not a principal of this registry"
            try audit(principal: "\(declared)?", action: "authenticate", target: keyID, outcome: .refused, reason: reason)
            throw .refused(reason)
        }
        return Principal(name: name, keyID: keyID)
    }

    /// Checks that `principal` holds `role` on `model` (through `alias`); refuses, naming what is missing,
    /// and audits the refusal. A registry without principals allows everything.
    public func require(
        _ role: Role,
        on model: String?,
        alias: String? = nil,
        by principal: Principal?,
        action: String,
        target: String
    ) throws(CofferRegistryError) {
        guard try checksPrincipals() else { return }
        guard let principal else {
            let reason = "this registry checks principals: act with --identity"
            try audit(principal: "-", action: action, target: target, outcome: .refused, reason: reason)
            throw .refused(reason)
        }
        let grants = try self.grants(of: principal.name)
        guard !grants.contains(where: { $0.allows(role, on: model, alias: alias) }) else { return }
        let on = model.map { " on \($0)" } ?? ""
        let through = alias.map { " (alias \($0))" } ?? ""
        let reason = "\(principal.name) lacks the \(role.rawValue) role\(on)\(through)"
        try audit(principal: principal.name, action: action, target: target, outcome: .refused, reason: reason)
        throw .refused(reason)
    }

    /// Adds a principal with roles on every model. The first principal of a registry (its owner) needs no actor;
    /// later ones need an admin.
    public func addPrincipal(
        name: String,
        identity: PublicIdentity,
        roles: [Role],
        by actor: Principal?
    ) throws(CofferRegistryError) {
        try ModelReference.validate(name: name)
        let first = !(try checksPrincipals())
        if !first { try require(.admin, on: nil, by: actor, action: "principal.add", target: name) }
        try database.write { db in
            if try String.fetchOne(
                db.cachedStatement(sql: "SELECT name FROM principals WHERE name = ? OR key_id = ?"),
                arguments: [name, identity.keyID]
            ) != nil {
                throw CofferRegistryError.principalExists(name)
            }
            try db.execute(
                sql: "INSERT INTO principals (name, key_id, public_identity, added_at, added_by) VALUES (?, ?, ?, ?, ?)",
                arguments: [name, identity.keyID, Data(identity.jsonBytes), Self.now(), actor?.name]
            )
            for role in first ? [Role.admin] + roles : roles {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO grants (principal, role, scope, alias, granted_at, granted_by) VALUES (?, ?, '*', NULL, ?, ?)",
                    arguments: [name, role.rawValue, Self.now(), actor?.name]
                )
            }
        }
        let roleList = (first ? [Role.admin] + roles : roles).map(\.rawValue).joined(separator: ",")
        try audit(principal: actor?.name ?? name, action: "principal.add", target: name, outcome: .ok, reason: "roles \(roleList)")
    }

    /// Every principal with its grants, by name.
    public func principals() throws(CofferRegistryError) -> [(name: String, keyID: String, grants: [Grant])] {
        let rows = try database.read { db in try Row.fetchAll(db.cachedStatement(sql: "SELECT name, key_id FROM principals ORDER BY name")) }
        var result: [(String, String, [Grant])] = []
        for row in rows {
            let name: String = row["name"]
            result.append((name, row["key_id"], try grants(of: name)))
        }
        return result
    }

    public func grants(of principal: String) throws(CofferRegistryError) -> [Grant] {
        let rows = try database.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT role, scope, alias FROM grants WHERE principal = ? ORDER BY role, scope"),
                arguments: [principal]
            )
        }
        return rows.compactMap { row in
            Role(rawValue: row["role"]).map { Grant(principal: principal, role: $0, scope: row["scope"], alias: row["alias"]) }
        }
    }

    /// Grants a role (admin only). The scope is `*`, a namespace prefix ending in `/`, or a model name.
    public func grant(_ grant: Grant, by actor: Principal?) throws(CofferRegistryError) {
        try require(.admin, on: nil, by: actor, action: "grant", target: grant.principal)
        if grant.scope != "*" { try ModelReference.validate(name: grant.scope.hasSuffix("/") ? String(grant.scope.dropLast()) : grant.scope) }
        try database.write { db in
            guard try String.fetchOne(db.cachedStatement(sql: "SELECT name FROM principals WHERE name = ?"), arguments: [grant.principal]) != nil
            else {
                throw CofferRegistryError.unknownPrincipal(grant.principal)
            }
            try db.execute(
                sql: "INSERT OR IGNORE INTO grants (principal, role, scope, alias, granted_at, granted_by) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [grant.principal, grant.role.rawValue, grant.scope, grant.alias, Self.now(), actor?.name]
            )
        }
        try audit(principal: actor?.name ?? "-", action: "grant", target: grant.principal, outcome: .ok, reason: grant.summary)
    }

    /// Revokes a role (admin only); returns whether a grant was removed. The sessions it allowed stop working.
    @discardableResult
    public func revoke(_ grant: Grant, by actor: Principal?) throws(CofferRegistryError) -> Bool {
        try require(.admin, on: nil, by: actor, action: "revoke", target: grant.principal)
        let removed = try database.write { db in
            try db.execute(
                sql: "DELETE FROM grants WHERE principal = ? AND role = ? AND scope = ? AND alias IS ?",
                arguments: [grant.principal, grant.role.rawValue, grant.scope, grant.alias]
            )
            return db.changesCount > 0
        }
        try audit(principal: actor?.name ?? "-", action: "revoke", target: grant.principal, outcome: removed ? .ok : .failed, reason: grant.summary)
        return removed
    }
}

extension Grant {
    var summary: String { "\(role.rawValue) on \(scope)" + (alias.map { " alias \($0)" } ?? "") }
}
