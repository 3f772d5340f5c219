import CofferRegistry
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Models opened for HTTP inference sessions, held decrypted in sodium memory for each session's life: dropped
/// (and so wiped) when the session expires, is revoked, or the server shuts down. Each replica holds its own: a
/// session opened through one is opened by another from the session's key copy, with the token the request carries.
final class LoadedSessions: Service, Sendable {
    /// Read-only once built: predictions only read the decrypted buffer, from any number of requests at once.
    final class Loaded: @unchecked Sendable {
        let session: InferenceSession
        let principal: String
        let expires: Date

        init(_ session: consuming InferenceSession, principal: String, expires: Date) {
            self.session = session
            self.principal = principal
            self.expires = expires
        }
    }

    private let loaded = Mutex<[String: Loaded]>([:])
    /// Slots taken by loads under way, by principal, under the same lock as `loaded` is read for ``reserve(for:limit:)``.
    private let reserved = Mutex<[String: Int]>([:])
    private let logger: Logger
    private let registry: Registry

    init(registry: Registry, logger: Logger) {
        self.registry = registry
        self.logger = logger
    }

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

    /// Takes one of `principal`'s `limit` slots for a model about to be loaded: false when its unexpired models and
    /// the loads under way fill them. Taken at once, so that opens racing each other cannot all pass (helper-48);
    /// give it back with ``release(for:)`` once the model is inserted or the load failed.
    func reserve(for principal: String, limit: Int, now: Date = Date()) -> Bool {
        reserved.withLock { pending in
            let held = loaded.withLock { models in models.values.count { $0.principal == principal && $0.expires > now } }
            guard held + pending[principal, default: 0] < limit else { return false }
            pending[principal, default: 0] += 1
            return true
        }
    }

    func release(for principal: String) {
        reserved.withLock { pending in
            pending[principal, default: 1] -= 1
            if pending[principal] == 0 { pending[principal] = nil }
        }
    }

    /// Drops expired models every second, and every 5 s those whose session another replica revoked (or that were
    /// used up), until graceful shutdown; then drops them all.
    func run() async throws {
        await cancelWhenGracefulShutdown {
            var tick = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let now = Date()
                self.loaded.withLock { models in models = models.filter { $0.value.expires > now } }
                tick += 1
                guard tick % 5 == 0 else { continue }
                let ids = self.loaded.withLock { Array($0.keys) }
                guard !ids.isEmpty else { continue }
                let live = await self.registry.liveSessions(ids)
                self.loaded.withLock { models in models = models.filter { live.contains($0.key) || !ids.contains($0.key) } }
            }
        }
        loaded.withLock { $0.removeAll() }
        logger.info("inference models wiped")
    }
}
