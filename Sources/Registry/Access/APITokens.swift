public import CofferCrypto
public import Foundation
import GRDB

/// What an HTTP bearer token may be used for; the principal's grants still apply on top.
public enum TokenScope: String, Sendable, CaseIterable, Codable {
    /// Metadata, ciphertext, verify, budgets.
    case read
    /// `read`, and push.
    case publish
    /// `read`, and sessions and predictions.
    case infer
    /// Everything.
    case admin

    /// Whether a request needing `role` may be made with a token of this scope.
    public func allows(_ role: Role) -> Bool {
        switch self {
        case .admin: true
        case .read: role == .reader
        case .publish: role == .reader || role == .publisher
        case .infer: role == .reader || role == .inference
        }
    }
}

/// A token as `token list` shows it (never the token).
public struct APITokenInfo: Sendable, Equatable, Codable {
    public var id: String
    public var principal: String
    public var scope: TokenScope
    public var createdAt: String
    public var expiresAt: String
    public var revokedAt: String?
}

/// A bearer token just created: `cft_` and 64 hex digits, shown once.
public struct CreatedAPIToken: ~Copyable {
    public let info: APITokenInfo
    public let token: SessionToken
}

/// Who a valid bearer token speaks for.
public struct TokenHolder: Sendable, Equatable {
    public var principal: Principal
    public var scope: TokenScope
    public var tokenID: String
}

extension Registry {
    /// Mints a bearer token for `principal` (admins only). The token is returned once; a keyed hash is stored.
    public func createToken(
        principal name: String,
        scope: TokenScope,
        ttl: TimeInterval,
        by actor: Principal?,
        now: Date = Date()
    )
        throws(CofferRegistryError) -> CreatedAPIToken
    {
        try require(.admin, on: nil, by: actor, action: "token.create", target: name)
        guard ttl > 0, ttl <= Self.maximumLifetime else { throw .refused("a token's lifetime must be more than 0 and at most 365 days") }
        let state = try ledgerState()
        guard state.principals[name] != nil else { throw .unknownPrincipal(name) }
        // A scope is only as wide as the principal's grants: a token is never minted for roles nobody gave.
        let needed: Role =
            switch scope {
            case .read: .reader
            case .publish: .publisher
            case .infer: .inference
            case .admin: .admin
            }
        let useful = state.grants.contains { $0.principal == name && ($0.role == needed || $0.role == .admin) }
        guard useful else {
            throw .refused("\(name) holds no role the \(scope.rawValue) scope allows (grant one first)")
        }
        let token = SessionToken(secret: SecretKey.random(), prefix: SessionToken.apiPrefix)
        let info = APITokenInfo(
            id: Digest.hex((0..<8).map { _ in UInt8.random(in: 0...255) }),
            principal: name,
            scope: scope,
            createdAt: Self.timestamp(now),
            expiresAt: Self.timestamp(now.addingTimeInterval(ttl)),
            revokedAt: nil
        )
        let hash = try tokenHash(token)
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO api_tokens (id, token_hash, principal, scope, created_at, expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [info.id, Data(hash), name, scope.rawValue, info.createdAt, info.expiresAt, actor?.name]
            )
        }
        try audit(
            principal: actor?.name ?? "-",
            action: "token.create",
            target: info.id,
            outcome: .ok,
            reason: "\(name) \(scope.rawValue) until \(info.expiresAt)"
        )
        return CreatedAPIToken(info: info, token: token)
    }

    public func tokens() throws(CofferRegistryError) -> [APITokenInfo] {
        try database.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM api_tokens ORDER BY created_at")).map {
                APITokenInfo(
                    id: $0["id"],
                    principal: $0["principal"],
                    scope: TokenScope(rawValue: $0["scope"]) ?? .read,
                    createdAt: $0["created_at"],
                    expiresAt: $0["expires_at"],
                    revokedAt: $0["revoked_at"]
                )
            }
        }
    }

    /// Revokes a token (admins, or its own principal).
    public func revokeToken(id: String, by actor: Principal?) throws(CofferRegistryError) {
        let owner = try database.read { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT principal FROM api_tokens WHERE id = ?"), arguments: [id])
        }
        guard let owner else { throw .refused("unknown token \(id)") }
        if owner != actor?.name { try require(.admin, on: nil, by: actor, action: "token.revoke", target: id) }
        try database.write { db in
            try db.execute(sql: "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?", arguments: [Self.now(), id])
        }
        try audit(principal: actor?.name ?? "-", action: "token.revoke", target: id, outcome: .ok, reason: "")
    }

    /// The holder of a bearer token's text; refuses (and audits) malformed, unknown, expired and revoked tokens.
    /// The stored hash is found by an indexed lookup of the keyed hash, then compared in constant time.
    ///
    /// - Parameter auditing: `false` leaves the audit entry of a refusal to the caller (a server counts refusals and
    ///   writes them in batches, so that requests without a valid token cannot each cost a synchronous write).
    public func authenticateToken(
        _ text: borrowing SecureBytes,
        now: Date = Date(),
        auditing: Bool = true
    ) throws(CofferRegistryError)
        -> TokenHolder
    {
        let token: SessionToken
        do { token = try SessionToken(text: text, prefix: SessionToken.apiPrefix) } catch {
            if auditing { try? audit(principal: "-", action: "authenticate", target: "-", outcome: .refused, reason: "malformed bearer token") }
            throw .unauthenticated("malformed bearer token (expected cft_ and 64 lower-case hex digits)")
        }
        let hash = try tokenHash(token)
        let row = try database.read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT t.*, p.key_id FROM api_tokens t JOIN principals p ON p.name = t.principal WHERE t.token_hash = ?"),
                arguments: [Data(hash)]
            )
        }
        func refuse(_ principal: String, _ reason: String) throws(CofferRegistryError) -> Never {
            if auditing { try? audit(principal: principal, action: "authenticate", target: "-", outcome: .refused, reason: reason) }
            throw .unauthenticated(reason)
        }
        guard let row, SecureCompare.equal(Array(row["token_hash"] as Data), hash) else {
            try refuse("-", "unknown bearer token \(Digest.hex(hash.prefix(8)))")
        }
        let id: String = row["id"]
        let principal: String = row["principal"]
        if let revoked: String = row["revoked_at"] { try refuse(principal, "token \(id) was revoked at \(revoked)") }
        let expires: String = row["expires_at"]
        if Self.timestamp(now) >= expires { try refuse(principal, "token \(id) expired at \(expires)") }
        return TokenHolder(
            principal: Principal(name: principal, keyID: row["key_id"]),
            scope: TokenScope(rawValue: row["scope"]) ?? .read,
            tokenID: id
        )
    }
}
