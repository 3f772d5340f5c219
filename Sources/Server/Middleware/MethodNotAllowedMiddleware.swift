import Hummingbird

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
