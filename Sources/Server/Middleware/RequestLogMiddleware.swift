import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird
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
