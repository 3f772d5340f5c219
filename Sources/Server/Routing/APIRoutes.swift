import Hummingbird

/// One route of the API as a pattern: what ``MethodNotAllowedMiddleware`` knows and the metrics label a request with.
struct Endpoint: Sendable {
    let method: HTTPRequest.Method
    /// The path, with `:name` for a parameter segment (e.g. `/v1/sessions/:id/predict`).
    let path: String

    init(_ method: HTTPRequest.Method, _ path: RouterPath) {
        self.method = method
        // Hummingbird writes a parameter `{name}`; the metrics have always labelled it `:name`.
        self.path = path.description.split(separator: "/", omittingEmptySubsequences: false).map { segment in
            segment.hasPrefix("{") && segment.hasSuffix("}") ? ":" + segment.dropFirst().dropLast() : String(segment)
        }.joined(separator: "/")
    }

    func matches(_ segments: [Substring]) -> Bool {
        let pattern = path.split(separator: "/")
        guard pattern.count == segments.count else { return false }
        return zip(pattern, segments).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
    }
}

/// The API's routes as controllers add them (in route groups, each behind its own middleware): a `RouteCollection`
/// for the router, and the pattern of every route, which the router keeps to itself, for 405 answers and metrics.
final class APIRoutes: RouterMethods {
    typealias Context = CofferRequestContext
    let collection = RouteCollection(context: CofferRequestContext.self)
    private(set) var endpoints: [Endpoint] = []

    @discardableResult
    func on<Responder: HTTPResponder>(_ path: RouterPath, method: HTTPRequest.Method, responder: Responder) -> Self
    where Responder.Context == Context {
        endpoints.append(Endpoint(method, path))
        _ = collection.on(path, method: method, responder: responder)
        return self
    }

    @discardableResult
    func add(middleware: any MiddlewareProtocol<Request, Response, Context>) -> Self {
        collection.add(middleware: middleware)
        return self
    }
}
