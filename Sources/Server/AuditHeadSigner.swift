import CofferRegistry
import Logging
import ServiceLifecycle

/// Every few seconds while the server runs (and once more at graceful shutdown): writes the refused authentications
/// counted meanwhile to the audit log, signs the log's head and a fresh state head with the registry key the server
/// holds, so that `coffer audit verify` covers what the server logged and clients can tell its answers are current.
/// A key retired by `key rotate` meanwhile signs nothing more (its heads would not verify): the server says so.
struct AuditHeadSigner: Service {
    let state: ServerState
    let interval: Duration

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await sign()
            }
        }
        await sign()
    }

    private func sign() async {
        await state.refusals.flush(to: state.registry)
        do {
            let key = try await state.currentRegistryIdentity()
            if let seq = try await state.registry.signAuditHeadIfUnsigned(with: key, headLifetime: state.headLifetime) {
                state.logger.debug("signed the audit log", metadata: ["through": "\(seq)"])
            }
        } catch {
            state.logger.error("cannot sign the audit log head", metadata: ["error": "\(error.description)"])
        }
    }
}
