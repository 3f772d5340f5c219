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
            // A cancelled sleep ends the loop. Each signing runs in an unstructured task, which does not inherit the
            // cancellation: GRDB's async writes refuse to start in a cancelled task, and a shutdown arriving in the
            // middle of a flush lost the refusals it had taken (CI saw 7 of 8).
            while (try? await Task.sleep(for: interval)) != nil { await Task { await sign() }.value }
        }
        // The last flush, after any one in progress.
        await Task { await sign() }.value
    }

    private func sign() async {
        await state.refusals.flush(to: state.registry)
        // One replica signs (an advisory lock on PostgreSQL); another takes over when it stops.
        guard await state.registry.leadsAuditHeadSigning() else { return }
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
