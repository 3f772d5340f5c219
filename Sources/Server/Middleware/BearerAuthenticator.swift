import CofferCrypto
import CofferRegistry
import Hummingbird

/// Authenticates the bearer token (`Authorization: Bearer cft_...`), checks that its scope allows the role of the
/// route group it guards, and puts the token holder in the request context (hummingbird-auth's
/// `BearerAuthentication` shape, with the registry's tokens and refusal accounting).
///
/// Missing, malformed, unknown, expired and revoked tokens get 401 (a missing one with `WWW-Authenticate: Bearer`)
/// and are counted in the refusal tally, which the audit log receives as one entry per reason and interval; a scope
/// that does not allow the role gets 403, audited at once. Every refusal counts in the metrics.
///
/// ```swift
/// routes.group("v1").add(middleware: BearerAuthenticator(state: state, role: .reader))
///     .get("versions", use: list)
/// ```
struct BearerAuthenticator: RouterMiddleware {
    typealias Context = CofferRequestContext
    let state: ServerState
    let role: Role

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.holder = try await authenticate(request)
        return try await next(request, context)
    }

    private func authenticate(_ request: Request) async throws -> TokenHolder {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
            state.refusals.add(principal: "-", action: "authenticate", reason: "no bearer token")
            state.metrics.refusal()
            throw HTTPError(
                .unauthorized,
                headers: [.wwwAuthenticate: "Bearer"],
                message: "a bearer token is required (Authorization: Bearer cft_...)"
            )
        }
        let text = header.utf8.dropFirst("Bearer ".utf8.count)
        let secret = SecureBytes(isolatedCount: text.count)
        secret.withUnsafeMutableBytes { $0.copyBytes(from: text) }
        return try await TokenAuthorizer(state: state).authorize(role: role, target: request.uri.path) { () async throws(CofferRegistryError) in
            try await state.registry.authenticateToken(secret, auditing: false)
        }
    }
}

/// The one authorization path of a bearer token, for the API's `Authorization` header, the sign-in form and the web
/// pages' sessions (which keep the keyed hash of the token they were signed in with): the registry authenticates the
/// token, then its scope must allow the role. Refusals are counted and audited as ``BearerAuthenticator`` describes.
struct TokenAuthorizer {
    let state: ServerState

    /// The holder `authenticate` finds (the registry's check of a token or of a token's hash), if its scope allows
    /// `role`.
    ///
    /// - Throws: `HTTPError` 401 for a token the registry refuses, 403 for a scope that does not allow `role`.
    func authorize(
        role: Role,
        target: String,
        _ authenticate: () async throws(CofferRegistryError) -> TokenHolder
    ) async throws -> TokenHolder {
        do {
            let holder: TokenHolder
            do { holder = try await authenticate() } catch {
                if case .unauthenticated(let reason) = error { state.refusals.add(principal: "-", action: "authenticate", reason: reason) }
                throw error
            }
            guard holder.scope.allows(role) else {
                let reason = "token \(holder.tokenID) has scope \(holder.scope.rawValue), which does not allow the \(role.rawValue) role"
                state.refusals.add(RefusalKey(principal: holder.principal.name, action: "authorize", target: target, reason: reason))
                state.metrics.refusal()
                throw HTTPError(.forbidden, message: reason)
            }
            return holder
        } catch let error as CofferRegistryError {
            state.metrics.refusal()
            throw HTTPError(error.status, message: error.description)
        }
    }
}
