import CBLAS
import CofferCrypto
import CofferTraining
import Foundation

/// A whole federation in one process, without HTTP: the same ``CoordinatorCore`` and ``FederatedSite`` code, the same
/// signed messages, driven stage by stage in lockstep, sites working in parallel. For tests and for `coffer fl
/// simulate` (benchmarks).
///
/// ```swift
/// let federation = try LocalFederation(core: core, sites: sites)
/// federation.dropout = { round, site in round == 2 && site == someKeyID ? .masked : nil }
/// let records = try federation.run()
/// ```
public final class LocalFederation: @unchecked Sendable {
    public let core: CoordinatorCore
    public let sites: [FederatedSite]
    /// The stage of `round` at which a site (by key ID) stops answering, if it does.
    public var dropout: (_ round: Int, _ site: String) -> Stage? = { _, _ in nil }
    /// Refusals: what each site or the coordinator refused, one line each, in order.
    public private(set) var refusals: [(site: String, reason: String)] = []
    /// Seconds each round's stages took (site work, then the coordinator's), by round.
    public private(set) var stageSeconds: [Int: [Stage: Double]] = [:]
    /// CPU seconds of the whole process during each round, by round.
    public private(set) var cpuSeconds: [Int: Double] = [:]
    private let lock = NSLock()

    public init(core: CoordinatorCore, sites: [FederatedSite]) {
        self.core = core
        self.sites = sites
        // The sites train in parallel, one per core: OpenBLAS's own worker threads would spin against them (measured on
        // 50 simulated sites: 34% of the process's CPU in OpenBLAS's exec_blas_async, the rounds 1.5-2x slower).
        coffer_blas_set_threads(1)
    }

    /// Joins every site, runs the statistics round if needed and every update round, then finishes.
    public func run() throws(FederatedError) -> [RoundRecord] {
        for site in sites { try site.welcomed(try core.join(site.joinRequest(session: core.sessionHex))) }
        try core.begin()
        if core.needsStatistics {
            _ = try runRound(0)
            guard !core.needsStatistics else { throw .roundAborted(round: 0, reason: core.records.last?.reason ?? "the statistics round failed") }
        }
        for round in 1...core.configuration.rounds { _ = try runRound(round) }
        core.finish(summary: "\(core.configuration.rounds) rounds")
        deliver(stage: .finished, round: core.round)
        return core.records
    }

    /// Runs one round to its end and returns its record.
    public func runRound(_ round: Int) throws(FederatedError) -> RoundRecord {
        let cpuStart = ProcessCPUTime.seconds()
        defer { cpuSeconds[round] = ProcessCPUTime.seconds() - cpuStart }
        if let skipped = core.startRound(round) { return skipped }
        while true {
            let stage = core.stage!
            let start = ContinuousClock.now
            deliver(stage: stage, round: round)
            let record = core.closeStage()
            let elapsed = ContinuousClock.now - start
            stageSeconds[round, default: [:]][stage] = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            if let record { return record }
        }
    }

    /// Hands each site its newest task, in parallel, and submits the answers in roster order.
    private func deliver(stage: Stage, round: Int) {
        let pending: [(FederatedSite, SignedMessage)] = sites.compactMap { site in
            guard let task = core.task(for: site.keyID, after: site.lastSeq) else { return nil }
            if let drop = dropout(round, site.keyID), drop <= stage, stage != .finished { return nil }
            return (site, task)
        }
        // The coordinator's checks that need no round state (signature, decoding) run on the thread that made the answer,
        // as an HTTP coordinator's run on the connections' threads; the answers are then taken in roster order.
        var answers = [OpenedSubmission?](repeating: nil, count: pending.count)
        let coordinator = core
        answers.withUnsafeMutableBufferPointer { out in
            nonisolated(unsafe) let buffer = out
            DispatchQueue.concurrentPerform(iterations: pending.count) { i in
                let (site, task) = pending[i]
                let answer: SignedMessage?
                do throws(FederatedError) {
                    answer = try site.handle(task)
                } catch {
                    self.refuse(site.keyID, error.description)
                    return
                }
                guard let answer else { return }
                do throws(FederatedError) {
                    buffer[i] = try coordinator.open(answer)
                } catch {
                    self.refuse(site.keyID, "coordinator: \(error.description)")
                }
            }
        }
        for (i, answer) in answers.enumerated() {
            guard let answer else { continue }
            do throws(FederatedError) {
                _ = try core.submit(answer)
            } catch {
                refuse(pending[i].0.keyID, "coordinator: \(error.description)")
            }
        }
    }

    /// Delivers the current stage's tasks (tests that drive ``CoordinatorCore`` stage by stage).
    func deliverForTests() throws(FederatedError) {
        guard let stage = core.stage else { return }
        deliver(stage: stage, round: core.round)
    }

    private func refuse(_ site: String, _ reason: String) {
        lock.lock()
        refusals.append((site, reason))
        lock.unlock()
    }
}
