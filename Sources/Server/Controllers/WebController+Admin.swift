import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird

/// The admin pages' forms for tokens and grants. Minting a token and changing a grant need an admin's own signature,
/// which this server never holds: the forms file a change request (docs/FORMAT.md, "Change requests") that an admin
/// approves with `coffer approve`. Revoking a token only takes power away, so it is done at once.
extension WebController {
    /// `GET /tokens`: every token the ledger minted (never a token), with a revoke button for each live one and the
    /// form that asks for a new one.
    func tokens(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        try await registry.require(.admin, on: nil, by: holder.principal, action: "token.list", target: "*")
        let now = Date()
        let dates = ISO8601DateFormatter.fractional
        let rows: [[String: Any]] = try await registry.tokens().reversed().map { token in
            let expired = dates.date(from: token.expiresAt).map { $0 <= now } ?? false
            let status = token.revokedAt.map { "revoked at \($0)" } ?? (expired ? "expired" : "live")
            return [
                "id": token.id, "principal": token.principal, "scope": token.scope.rawValue, "created": token.createdAt,
                "expires": token.expiresAt, "status": status, "revocable": status == "live",
            ]
        }
        let principals = try await registry.principals().map(\.name)
        return page(
            "tokens",
            [
                "title": "Bearer tokens", "tokens": rows, "noTokens": rows.isEmpty, "principals": principals,
                "scopes": TokenScope.allCases.map(\.rawValue),
            ],
            context
        )
    }

    /// `POST /tokens` with `principal`, `scope` and `ttl`: files a token request and shows the token, once, beside it.
    func requestToken(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let principal = context.form["principal"], let scopeText = context.form["scope"], let ttl = context.form["ttl"] else {
            throw HTTPError(.badRequest, message: "the form needs a principal, a scope and a lifetime")
        }
        guard let scope = TokenScope(rawValue: scopeText) else {
            throw HTTPError(.badRequest, message: "unknown scope '\(scopeText)': use read, publish, infer or admin")
        }
        let filed = try await registry.requestToken(
            principal: principal,
            scope: scope,
            ttl: try Registry.duration(ttl),
            filedBy: holder.principal,
            key: try await state.currentRegistryIdentity()
        )
        return pages.render(
            "request",
            requestValues(filed.request, hasToken: true),
            showingOnce: filed.token.text(),
            session: context.webSession,
            admin: true
        )
    }

    /// `POST /tokens/revoke` with `id`: revokes the token at once, as `coffer token revoke` does.
    func revokeToken(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let id = context.form["id"], !id.isEmpty else { throw HTTPError(.badRequest, message: "the form names no token") }
        try await registry.revokeToken(id: id, by: state.signer(for: holder))
        return WebPages.seeOther("/tokens")
    }

    /// `GET /principals`: every principal with its grants, a button asking to revoke each grant, and the form asking
    /// for a new one.
    func principals(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        try await registry.require(.admin, on: nil, by: holder.principal, action: "principal.list", target: "*")
        let principals = try await registry.principals()
        let rows: [[String: Any]] = principals.map { principal in
            [
                "name": principal.name, "keyID": principal.keyID,
                "grants": principal.grants.map { grant -> [String: Any] in
                    [
                        "principal": grant.principal, "role": grant.role.rawValue, "scope": grant.scope, "alias": grant.alias ?? "",
                        "summary": grant.summary,
                    ]
                },
            ]
        }
        return page(
            "principals",
            [
                "title": "Principals and grants", "principals": rows, "names": principals.map(\.name),
                "roles": [Role.reader, .decrypt, .inference, .publisher, .admin].map(\.rawValue),
            ],
            context
        )
    }

    /// `POST /grants` with `principal`, `role`, `scope`, optional `alias`, `max_session_seconds` and
    /// `max_predictions`: files a grant request.
    func requestGrant(_ request: Request, context: CofferRequestContext) async throws -> Response {
        try await fileGrantRequest(context: context, revoking: false)
    }

    /// `POST /grants/revoke` with `principal`, `role`, `scope` and optional `alias`: files a revocation request.
    func requestRevoke(_ request: Request, context: CofferRequestContext) async throws -> Response {
        try await fileGrantRequest(context: context, revoking: true)
    }

    private func fileGrantRequest(context: CofferRequestContext, revoking: Bool) async throws -> Response {
        let holder = try context.authenticated
        func field(_ name: String) -> String? { context.form[name].flatMap { $0.isEmpty ? nil : $0 } }
        func limit(_ name: String) throws -> Int? {
            guard let text = field(name) else { return nil }
            guard let value = Int(text), value > 0 else { throw HTTPError(.badRequest, message: "\(name) must be a positive whole number") }
            return value
        }
        guard let principal = field("principal"), let roleText = field("role") else {
            throw HTTPError(.badRequest, message: "the form needs a principal and a role")
        }
        guard let role = Role(rawValue: roleText) else {
            throw HTTPError(.badRequest, message: "unknown role '\(roleText)': use \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let grant = Grant(
            principal: principal,
            role: role,
            scope: field("scope") ?? "*",
            alias: field("alias"),
            maxSessionSeconds: try limit("max_session_seconds"),
            maxPredictions: try limit("max_predictions")
        )
        let filed = try await registry.requestGrant(
            grant,
            revoking: revoking,
            filedBy: holder.principal,
            key: try await state.currentRegistryIdentity()
        )
        return page("request", requestValues(filed, hasToken: false), context)
    }

    /// What a filed request's page shows: what it asks, the command that approves it, and where a token goes.
    private func requestValues(_ filed: ChangeRequest, hasToken: Bool) -> [String: Any] {
        [
            "title": "Change requested", "summary": filed.summary, "command": "coffer approve \(filed.text)", "expires": filed.expires,
            "hasToken": hasToken,
        ]
    }
}
