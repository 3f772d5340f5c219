import CofferCrypto
public import CofferRegistry
import Foundation
public import Hummingbird
import Logging

/// Logs every request once with its id, method, path, status and latency (never a header or body: no token can
/// reach a log line), and counts it in the metrics.
struct RequestLogMiddleware: RouterMiddleware {
    typealias Context = CofferRequestContext
    let state: ServerState
    let endpoints: [Endpoint]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let path = request.uri.path
        do {
            let response = try await next(request, context)
            record(request, path: path, status: response.status.code, start: start, context: context)
            return response
        } catch let error as any HTTPResponseError {
            if (error as? CofferRegistryError)?.isRefusal == true { state.metrics.refusal() }
            record(request, path: path, status: error.status.code, start: start, context: context)
            throw error
        } catch {
            record(request, path: path, status: 500, start: start, context: context)
            throw error
        }
    }

    private func record(_ request: Request, path: String, status: Int, start: ContinuousClock.Instant, context: Context) {
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        // The label is the route's pattern, never the path a client sent: no label injection, no series per upload id.
        let segments = path.split(separator: "/")
        let route = endpoints.first { $0.matches(segments) }?.path ?? "unmatched"
        state.metrics.record(route: route, status: status, seconds: seconds)
        state.logger.info(
            "request",
            metadata: [
                "request_id": .string(context.requestID), "method": .string(request.method.rawValue), "path": .string(path),
                "status": .stringConvertible(status), "ms": .string(String(format: "%.1f", seconds * 1000)),
            ]
        )
    }
}

/// One route of the API: what the router registers, and what ``MethodNotAllowedMiddleware`` knows.
struct Endpoint: Sendable {
    let method: HTTPRequest.Method
    /// The path, with `:name` for a parameter segment (e.g. `/v1/sessions/:id/predict`).
    let path: String
    let handler: @Sendable (Request, CofferRequestContext) async throws -> Response

    init(_ method: HTTPRequest.Method, _ path: String, _ handler: @escaping @Sendable (Request, CofferRequestContext) async throws -> Response) {
        self.method = method
        self.path = path
        self.handler = handler
    }

    func matches(_ segments: [Substring]) -> Bool {
        let pattern = path.split(separator: "/")
        guard pattern.count == segments.count else { return false }
        return zip(pattern, segments).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
    }
}

/// Answers a method a known path does not take with 405 and an `Allow` header (the router alone would say 404,
/// as if the path did not exist).
struct MethodNotAllowedMiddleware: RouterMiddleware {
    typealias Context = CofferRequestContext
    let endpoints: [Endpoint]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let segments = request.uri.path.split(separator: "/")
        let methods = endpoints.filter { $0.matches(segments) }.map(\.method)
        guard methods.isEmpty || methods.contains(request.method) else {
            let allowed = methods.map(\.rawValue).joined(separator: ", ")
            throw HTTPError(.methodNotAllowed, headers: [.allow: allowed], message: "\(request.method.rawValue) is not allowed here: use \(allowed)")
        }
        return try await next(request, context)
    }
}

/// Authenticates the bearer token (`Authorization: Bearer cft_...`) and checks that its scope allows `role`.
/// Missing, malformed, unknown, expired and revoked tokens get 401; a scope that does not allow the role, 403.
/// Both are audited by the registry.
func authenticate(_ request: Request, _ context: inout CofferRequestContext, state: ServerState, role: Role) async throws -> TokenHolder {
    guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
        state.refusals.add(principal: "-", action: "authenticate", reason: "no bearer token")
        state.metrics.refusal()
        throw HTTPError(.unauthorized, headers: [.wwwAuthenticate: "Bearer"], message: "a bearer token is required (Authorization: Bearer cft_...)")
    }
    let text = header.utf8.dropFirst("Bearer ".utf8.count)
    let secret = SecureBytes(count: text.count)
    secret.withUnsafeMutableBytes { $0.copyBytes(from: text) }
    do {
        let holder: TokenHolder
        do { holder = try await state.registry.authenticateToken(secret, auditing: false) } catch {
            if case .unauthenticated(let reason) = error { state.refusals.add(principal: "-", action: "authenticate", reason: reason) }
            throw error
        }
        guard holder.scope.allows(role) else {
            let reason = "token \(holder.tokenID) has scope \(holder.scope.rawValue), which does not allow the \(role.rawValue) role"
            try? await state.registry.recordRefusal(action: "authorize", target: request.uri.path, reason: reason, principal: holder.principal.name)
            state.metrics.refusal()
            throw HTTPError(.forbidden, message: reason)
        }
        context.holder = holder
        return holder
    } catch let error as CofferRegistryError {
        state.metrics.refusal()
        throw HTTPError(error.status, message: error.description)
    }
}

/// A registry error as an HTTP answer: the same one-line message, with the status that fits, so handlers throw
/// registry errors as they come (Hummingbird renders any `HTTPResponseError`).
extension CofferRegistryError: HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch self {
        case .unauthenticated: .unauthorized
        case .refused, .sessionRefused: .forbidden
        case .unknownModel, .unknownVersion, .unknownAlias, .unknownPrincipal, .unknownSession, .noBudget, .unknownUpload: .notFound
        case .erased: .gone
        case .versionExists, .principalExists, .uploadOffset: .conflict
        case .budgetExceeded, .policyViolation: .forbidden
        case .tampered: .unprocessableContent
        case .tooManyUploads: .tooManyRequests
        case .uploadTooLarge: .contentTooLarge
        case .databaseBusy, .registryKeyRetired, .ledgerMoved, .unavailable: .serviceUnavailable
        case .database, .io: .internalServerError
        default: .badRequest
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try HTTPError(status, message: description).response(from: request, context: context)
    }

    /// Whether the error is a refusal of who asked (counted in the metrics), not a failure.
    var isRefusal: Bool {
        switch self {
        case .refused, .sessionRefused, .unauthenticated: true
        default: false
        }
    }
}
