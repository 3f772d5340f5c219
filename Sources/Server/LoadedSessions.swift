import CofferRegistry
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Models opened for HTTP inference sessions, held decrypted in sodium memory for each session's life: dropped
/// (and so wiped) when the session expires, is revoked, or the server shuts down.
final class LoadedSessions: Service, Sendable {
    /// Read-only once built: predictions only read the decrypted buffer, from any number of requests at once.
    final class Loaded: @unchecked Sendable {
        let session: InferenceSession
        let principal: String
        let expires: Date
        /// Predictions allowed per second, and how many may come at once after a pause.
        let rate: Double
        let burst: Double
        /// A token bucket: how many predictions may run now, as of `at`.
        private let bucket: Mutex<(tokens: Double, at: Date)>

        init(_ session: consuming InferenceSession, principal: String, expires: Date, rate: Double, burst: Int, now: Date = Date()) {
            self.session = session
            self.principal = principal
            self.expires = expires
            self.rate = rate
            self.burst = Double(max(1, burst))
            self.bucket = Mutex((tokens: Double(max(1, burst)), at: now))
        }

        /// Takes one prediction from the bucket: `nil` when allowed, else the seconds until one is.
        func takePrediction(now: Date = Date()) -> TimeInterval? {
            bucket.withLock { bucket in
                let refilled = min(burst, bucket.tokens + max(0, now.timeIntervalSince(bucket.at)) * rate)
                bucket.at = now
                guard refilled >= 1 else {
                    bucket.tokens = refilled
                    return (1 - refilled) / rate
                }
                bucket.tokens = refilled - 1
                return nil
            }
        }
    }

    private let loaded = Mutex<[String: Loaded]>([:])
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func insert(_ model: Loaded, id: String) { loaded.withLock { $0[id] = model } }

    func get(_ id: String, now: Date = Date()) -> Loaded? {
        loaded.withLock { models in
            guard let model = models[id] else { return nil }
            if model.expires <= now {
                models[id] = nil
                return nil
            }
            return model
        }
    }

    func remove(_ id: String) { _ = loaded.withLock { $0.removeValue(forKey: id) } }

    var count: Int { loaded.withLock { $0.count } }

    /// Drops expired models every second until graceful shutdown, then drops them all.
    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let now = Date()
                self.loaded.withLock { models in models = models.filter { $0.value.expires > now } }
            }
        }
        loaded.withLock { $0.removeAll() }
        logger.info("inference models wiped")
    }
}
