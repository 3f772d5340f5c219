import CofferCrypto
import CofferRegistry
import Foundation
import ServiceLifecycle

/// The audit page's check of the log's hash chain (docs/WEB.md, "The audit page's chain check"): the whole chain is
/// walked once (at server start, or at the first page load in a process that did not start it), and from then on a
/// page load verifies from the last checkpoint: the entries appended since are walked, the checkpoint's own entry,
/// the signed heads and the ledger's marks are looked up, and a slice of the verified prefix is walked again, so an
/// entry edited in place in the prefix is found within one round of slices. A page load costs the entries appended
/// since the last one plus one slice, not the chain.
///
/// One check runs at a time; page loads that arrive meanwhile wait for it and show its result.
actor AuditChainMonitor {
    /// What a page shows.
    struct Snapshot: Sendable {
        enum Status: Sendable, Equatable {
            /// The first full walk is running and nothing is verified yet.
            case verifying
            case verified
            /// The exact failure; a full walk checks again (at most once a minute while the chain stays broken).
            case broken(String)
        }

        var status: Status
        var report: AuditReport?
        /// When the whole chain was last walked: the first walk, or the last round of prefix slices to end.
        var fullWalkAt: String?
        /// The prefix slices' position in the current round (entries re-walked so far).
        var rewalkedThrough: Int64
        /// Entries this check walked because they were appended since the previous one.
        var walkedNow: Int
    }

    /// Entries of the verified prefix walked again per page load (about 2 ms on SQLite).
    let sliceSize: Int
    private let registry: Registry
    private var checkpoint: AuditCheckpoint?
    private var report: AuditReport?
    private var failure: String?
    private var fullWalkAt: String?
    private var lastFullWalkStart: ContinuousClock.Instant?
    private var rewalkCursor: Int64 = 0
    private var fullWalk: Task<Void, Never>?
    private var step: Task<Snapshot, Never>?

    init(registry: Registry, sliceSize: Int = 1000) {
        self.registry = registry
        self.sliceSize = sliceSize
    }

    /// Starts the full walk unless one runs, the chain is verified, or it broke less than a minute ago.
    func startFullWalk() {
        guard fullWalk == nil, checkpoint == nil else { return }
        if failure != nil, let started = lastFullWalkStart, ContinuousClock.now - started < .seconds(60) { return }
        lastFullWalkStart = .now
        let registry = registry
        fullWalk = Task {
            let result: Result<AuditVerification, CofferRegistryError>
            do throws(CofferRegistryError) { result = .success(try await registry.verifyAudit(continuingFrom: nil)) } catch {
                result = .failure(error)
            }
            self.finishFullWalk(result)
        }
    }

    /// Waits for the full walk, if one runs.
    func waitForFullWalk() async { await fullWalk?.value }

    private func finishFullWalk(_ result: Result<AuditVerification, CofferRegistryError>) {
        fullWalk = nil
        switch result {
        case .success(let verification):
            checkpoint = verification.checkpoint
            report = verification.report
            failure = nil
            fullWalkAt = Timestamp.now
            rewalkCursor = 0
        case .failure(let error):
            checkpoint = nil
            failure = error.description
        }
    }

    /// The chain's state for one page load: a step from the checkpoint when there is one; otherwise the full walk
    /// (started if needed), waited for at most `patience` (a small log is verified within it; a large one shows
    /// "verifying" until it is done).
    func check(patience: Duration = .milliseconds(500)) async -> Snapshot {
        if checkpoint == nil {
            startFullWalk()
            if let walk = fullWalk {
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await walk.value }
                    group.addTask { try? await Task.sleep(for: patience) }
                    await group.next()
                    group.cancelAll()
                }
            }
            if checkpoint == nil { return snapshot(walked: 0) }
        }
        if let step { return await step.value }
        let task = Task { await self.runStep() }
        step = task
        let result = await task.value
        step = nil
        return result
    }

    private func runStep() async -> Snapshot {
        guard let start = checkpoint else { return snapshot(walked: 0) }
        do throws(CofferRegistryError) {
            let verification = try await registry.verifyAudit(continuingFrom: start)
            // A full walk that ended meanwhile (nothing else changes the checkpoint) is not overwritten by an older one.
            guard let next = verification.checkpoint, next.seq >= (checkpoint?.seq ?? 0) else { return snapshot(walked: 0) }
            checkpoint = next
            report = verification.report
            let end = min(rewalkCursor + Int64(sliceSize), next.seq)
            if end > rewalkCursor, let reached = try await registry.reverifyAudit(after: rewalkCursor, count: Int(end - rewalkCursor)) {
                rewalkCursor = reached
            }
            if rewalkCursor >= next.seq {
                rewalkCursor = 0
                fullWalkAt = Timestamp.now
            }
            return snapshot(walked: verification.walked)
        } catch {
            checkpoint = nil
            failure = error.description
            startFullWalk()
            return snapshot(walked: 0)
        }
    }

    private func snapshot(walked: Int) -> Snapshot {
        let status: Snapshot.Status =
            if let failure { .broken(failure) } else if checkpoint == nil { .verifying } else { .verified }
        return Snapshot(status: status, report: report, fullWalkAt: fullWalkAt, rewalkedThrough: rewalkCursor, walkedNow: walked)
    }
}

/// Walks the audit chain once when the server starts, so that the first audit page load does not pay for it.
struct AuditChainWatch: Service {
    let monitor: AuditChainMonitor

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await monitor.startFullWalk()
            await monitor.waitForFullWalk()
        }
        try? await gracefulShutdown()
    }
}
