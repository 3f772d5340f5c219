import Foundation
import Synchronization

/// Request counters and latency sums in Prometheus text format: requests by route and status, latency per route,
/// response bytes of blob downloads, refusals.
final class ServerMetrics: Sendable {
    private struct Counters {
        var requests: [String: Int] = [:]  // "route|status"
        var seconds: [String: Double] = [:]  // route
        var count: [String: Int] = [:]  // route
        var bytes = 0
        var refusals = 0
    }

    private let counters = Mutex(Counters())

    func record(route: String, status: Int, seconds: Double) {
        counters.withLock {
            $0.requests["\(route)|\(status)", default: 0] += 1
            $0.seconds[route, default: 0] += seconds
            $0.count[route, default: 0] += 1
        }
    }

    func refusal() { counters.withLock { $0.refusals += 1 } }
    func sent(bytes: Int) { counters.withLock { $0.bytes += bytes } }

    func prometheusText() -> String {
        counters.withLock { c in
            var lines = [
                "# HELP coffer_http_requests_total HTTP requests by route and status.", "# TYPE coffer_http_requests_total counter",
            ]
            for key in c.requests.keys.sorted() {
                let parts = key.split(separator: "|", maxSplits: 1)
                lines.append("coffer_http_requests_total{route=\"\(parts[0])\",status=\"\(parts[1])\"} \(c.requests[key]!)")
            }
            lines += ["# HELP coffer_http_request_seconds Time spent answering requests, by route.", "# TYPE coffer_http_request_seconds summary"]
            for route in c.count.keys.sorted() {
                lines.append("coffer_http_request_seconds_sum{route=\"\(route)\"} \(c.seconds[route]!)")
                lines.append("coffer_http_request_seconds_count{route=\"\(route)\"} \(c.count[route]!)")
            }
            lines += [
                "# HELP coffer_blob_bytes_sent_total Ciphertext bytes sent by blob downloads.", "# TYPE coffer_blob_bytes_sent_total counter",
                "coffer_blob_bytes_sent_total \(c.bytes)",
                "# HELP coffer_refusals_total Requests refused for authentication or authorization.", "# TYPE coffer_refusals_total counter",
                "coffer_refusals_total \(c.refusals)",
            ]
            return lines.joined(separator: "\n") + "\n"
        }
    }
}
