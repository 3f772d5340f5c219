public import CofferCrypto
public import Foundation

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

/// A token drawn, and the facts its `token.create` record will state.
struct DraftToken: ~Copyable {
    let token: SessionToken
    let facts: LedgerChange.TokenFacts
}

/// Who a valid bearer token speaks for.
public struct TokenHolder: Sendable {
    public var principal: Principal
    public var scope: TokenScope
    public var tokenID: String
    /// The verified ledger state the token was checked against: what the same request checks next (the principal's
    /// role, the version it shows) can be held against it instead of reading the ledger's end again.
    public var ledgerState: LedgerState
}

extension Registry {
    /// Mints a bearer token for `principal` (admins only), with a `token.create` record signed by the admin: a token
    /// authenticates only if the ledger holds its record (a row written into the table by anyone else opens nothing).
    /// The token is returned once; only its keyed hash is recorded.
    public func createToken(
        principal name: String,
        scope: TokenScope,
        ttl: TimeInterval,
        by signer: Signer,
        now: Date = Date()
    )
        async throws(CofferRegistryError) -> CreatedAPIToken
    {
        try await require(signer, .admin, on: nil, action: "token.create", target: name)
        let draft = try await draftToken(principal: name, scope: scope, ttl: ttl, in: try await ledgerState(), now: now)
        let facts = draft.facts
        let info = APITokenInfo(
            id: facts.id,
            principal: name,
            scope: scope,
            createdAt: Self.timestamp(now),
            expiresAt: facts.expires,
            revokedAt: nil
        )
        try await record(
            .tokenCreate(facts),
            signer: signer,
            action: "token.create",
            target: info.id,
            reason: "\(name) \(scope.rawValue) until \(info.expiresAt)"
        )
        return CreatedAPIToken(info: info, token: draft.token)
    }

    /// A new token for `principal` and the facts its `token.create` record will state, after the checks every mint
    /// makes: a known principal, a lifetime of at most a year, a scope the principal's grants allow.
    func draftToken(
        principal name: String,
        scope: TokenScope,
        ttl: TimeInterval,
        in state: LedgerState,
        now: Date
    ) async throws(CofferRegistryError) -> DraftToken {
        guard ttl > 0, ttl <= Self.maximumLifetime else { throw .refused("a token's lifetime must be more than 0 and at most 365 days") }
        try Self.checkTokenScope(principal: name, scope: scope, in: state)
        let token = SessionToken(secret: SecretKey.random(), prefix: SessionToken.apiPrefix)
        let facts = LedgerChange.TokenFacts(
            id: Digest.hex((0..<8).map { _ in UInt8.random(in: 0...255) }),
            principal: name,
            scope: scope,
            expires: Self.timestamp(now.addingTimeInterval(ttl)),
            hash: Digest.hex(try tokenHash(token))
        )
        return DraftToken(token: token, facts: facts)
    }

    /// A scope is only as wide as the principal's grants: a token is never minted for roles nobody gave.
    static func checkTokenScope(principal name: String, scope: TokenScope, in state: LedgerState) throws(CofferRegistryError) {
        guard state.principals[name] != nil else { throw .unknownPrincipal(name) }
        let needed: Role =
            switch scope {
            case .read: .reader
            case .publish: .publisher
            case .infer: .inference
            case .admin: .admin
            }
        guard state.grants.contains(where: { $0.principal == name && ($0.role == needed || $0.role == .admin) }) else {
            throw .refused("\(name) holds no role the \(scope.rawValue) scope allows (grant one first)")
        }
    }

    /// The tokens the ledger minted, with when they were created and revoked (never the tokens themselves).
    public func tokens() async throws(CofferRegistryError) -> [APITokenInfo] {
        let minted = try await ledgerState().tokens
        let rows = Dictionary(
            try await metadata.tokens().map { ($0.id, (created: $0.createdAt, revoked: $0.revokedAt)) },
            uniquingKeysWith: { a, _ in a }
        )
        return minted.values.map { token in
            APITokenInfo(
                id: token.facts.id,
                principal: token.facts.principal,
                scope: token.facts.scope,
                createdAt: rows[token.facts.id]?.created ?? "-",
                expiresAt: token.facts.expires,
                revokedAt: token.revoked ? (rows[token.facts.id]?.revoked ?? "yes") : nil
            )
        }.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// Revokes a token (admins, or its own principal), with a `token.revoke` record.
    public func revokeToken(id: String, by signer: Signer) async throws(CofferRegistryError) {
        let state = try await ledgerState()
        guard let token = state.tokens[id] else { throw .refused("unknown token \(id)") }
        let actor = try acting(signer, in: state).principal
        if token.facts.principal != actor.name { try await require(signer, .admin, on: nil, action: "token.revoke", target: id) }
        guard !token.revoked else { return }
        try await record(.tokenRevoke(id: id), signer: signer, action: "token.revoke", target: id, reason: token.facts.principal)
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
    ) async throws(CofferRegistryError)
        -> TokenHolder
    {
        let token: SessionToken
        do { token = try SessionToken(text: text, prefix: SessionToken.apiPrefix) } catch {
            if auditing { try? await audit(principal: "-", action: "authenticate", target: "-", outcome: .refused, reason: "malformed bearer token") }
            throw .unauthenticated("malformed bearer token (expected cft_ and 64 lower-case hex digits)")
        }
        return try await authenticateToken(hash: try tokenHash(token), now: now, auditing: auditing)
    }

    /// The holder of the token whose keyed hash is `hash` (a web session keeps only the hash of the token it was signed
    /// in with), with every check of ``authenticateToken(_:now:auditing:)``.
    public func authenticateToken(hash: [UInt8], now: Date = Date(), auditing: Bool = true) async throws(CofferRegistryError) -> TokenHolder {
        let row = try await metadata.token(hash: Data(hash))
        func refuse(_ principal: String, _ reason: String) async throws(CofferRegistryError) -> Never {
            if auditing { try? await audit(principal: principal, action: "authenticate", target: "-", outcome: .refused, reason: reason) }
            throw .unauthenticated(reason)
        }
        guard let row, SecureCompare.equal(Array(row.tokenHash), hash) else {
            try await refuse("-", "unknown bearer token \(Digest.hex(hash.prefix(8)))")
        }
        // The table found the token quickly; the ledger says what it is. A row nobody signed for opens nothing, and a
        // row edited to another principal or scope is not the token that was minted.
        let id = row.id
        let state = try await ledgerState()
        guard let minted = state.tokens[id], minted.facts.hash == Digest.hex(hash), minted.facts.principal == row.principal,
            minted.facts.scope.rawValue == row.scope, let key = state.principals[minted.facts.principal]
        else { try await refuse("-", "unknown bearer token \(Digest.hex(hash.prefix(8)))") }
        let principal = minted.facts.principal
        if minted.revoked { try await refuse(principal, "token \(id) was revoked at \(row.revokedAt ?? "an earlier time")") }
        let expires = minted.facts.expires
        if Self.timestamp(now) >= expires { try await refuse(principal, "token \(id) expired at \(expires)") }
        return TokenHolder(principal: Principal(name: principal, keyID: key.keyID), scope: minted.facts.scope, tokenID: id, ledgerState: state)
    }
}
