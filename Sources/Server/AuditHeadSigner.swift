import CofferRegistry
import Logging
import ServiceLifecycle

/// Signs the audit log's head with the registry identity the server holds, every few seconds while entries are
/// appended and once more at graceful shutdown, so that `coffer audit verify` covers what the server logged.
struct AuditHeadSigner: Service {
    let registry: Registry
    let registryIdentity: UnlockedIdentity
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                sign()
            }
        }
        sign()
    }

    private func sign() {
        do {
            if let seq = try registry.signAuditHeadIfUnsigned(with: registryIdentity.identity) {
                logger.debug("signed the audit log", metadata: ["through": "\(seq)"])
            }
        } catch {
            logger.error("cannot sign the audit log head", metadata: ["error": "\(error.description)"])
        }
    }
}
