import Foundation

/// Drives a ``CoordinatorCore`` in real time: waits for sites to join, runs each round stage by stage, closing a stage
/// as soon as every site asked has answered or when its timeout expires (a site that never answers is a dropout), and
/// answers long polls as tasks appear. The HTTP routes (``FederationServer``) call into it.
///
/// ```swift
/// let coordinator = Coordinator(core: core)
/// async let records = coordinator.run()
/// ```
public actor Coordinator {
    public let core: CoordinatorCore
    /// Called after each round (not the statistics round), before the next begins: the CLI pushes the model here.
    let onRound: (@Sendable (RoundRecord) async -> Void)?
    private var waiters: [UUID: (continuation: CheckedContinuation<Void, Never>, sleeper: Task<Void, Never>)] = [:]
    /// Sites that have fetched the final task.
    private var released = Set<String>()
    /// When each site last polled, and how many of its polls are open: at the end, only sites still polling are waited for.
    private var lastSeen: [String: ContinuousClock.Instant] = [:]
    private var openPolls: [String: Int] = [:]
    /// How long a poll waits for a task before answering 204.
    public static let pollWait: Duration = .seconds(20)

    public init(core: CoordinatorCore, onRound: (@Sendable (RoundRecord) async -> Void)? = nil) {
        self.core = core
        self.onRound = onRound
    }

    // MARK: - Requests

    public func join(_ signed: SignedMessage) throws(FederatedError) -> SignedMessage {
        let answer = try core.join(signed)
        notify()
        return answer
    }

    /// The site's next task, waiting up to `wait` for one; `nil` when none came.
    public func poll(_ signed: SignedMessage, wait: Duration = Coordinator.pollWait) async throws(FederatedError) -> SignedMessage? {
        let (site, after) = try core.authenticatePoll(signed)
        lastSeen[site] = .now
        openPolls[site, default: 0] += 1
        defer {
            openPolls[site, default: 1] -= 1
            lastSeen[site] = .now
        }
        let deadline = ContinuousClock.now + wait
        while true {
            if let task = core.task(for: site, after: after) {
                if core.isFinished {
                    released.insert(site)
                    notify()
                }
                return task
            }
            if ContinuousClock.now >= deadline { return nil }
            await waitForChange(until: deadline)
        }
    }

    public func submit(_ signed: SignedMessage) throws(FederatedError) -> SignedMessage {
        let answer = try core.submit(signed)
        notify()
        return answer
    }

    /// The same for a submission already opened (``CoordinatorCore/open(_:)``) off the actor.
    public func submit(_ opened: OpenedSubmission) throws(FederatedError) -> SignedMessage {
        let answer = try core.submit(opened)
        notify()
        return answer
    }

    /// What `GET /v1/fl/status` shows: public facts only.
    public func status() -> [String: String] {
        [
            "session": core.sessionHex, "round": "\(core.round)", "stage": core.stage?.rawValue ?? (core.isFinished ? "finished" : "between rounds"),
            "joined": "\(core.joined.count)", "enrolled": "\(core.enrolledCount)", "rounds": "\(core.configuration.rounds)",
            "mechanism": core.configuration.mechanism,
        ]
    }

    // MARK: - Rounds

    /// Runs the whole federation and returns every round's record.
    ///
    /// - Throws: when too few sites join, or the statistics round cannot complete.
    public func run() async throws(FederatedError) -> [RoundRecord] {
        let configuration = core.configuration
        let joinDeadline = ContinuousClock.now + .seconds(configuration.joinTimeout)
        while core.joined.count < core.enrolledCount && ContinuousClock.now < joinDeadline {
            await waitForChange(until: joinDeadline)
            try checkCancellation()
        }
        do throws(FederatedError) {
            try core.begin()
        } catch {
            await finish(summary: "the federation did not start: \(error.description)")
            throw error
        }
        if core.needsStatistics {
            let record = await runRound(0)
            guard !core.needsStatistics else {
                await finish(summary: "the statistics round failed: \(record.reason ?? record.outcome)")
                throw .roundAborted(round: 0, reason: record.reason ?? "the statistics round failed")
            }
        }
        for round in 1...configuration.rounds {
            try checkCancellation()
            let record = await runRound(round)
            await onRound?(record)
        }
        let ok = core.records.filter { $0.kind == .update && $0.outcome == "ok" }.count
        await finish(summary: "\(configuration.rounds) rounds, \(ok) aggregated")
        return core.records
    }

    private func checkCancellation() throws(FederatedError) {
        if Task.isCancelled { throw .io("interrupted: the coordinator stopped before the federation ended") }
    }

    /// A site with a poll open, or one that polled in the last few seconds (between two requests).
    private func isPolling(_ site: String) -> Bool {
        if openPolls[site, default: 0] > 0 { return true }
        guard let seen = lastSeen[site] else { return false }
        return ContinuousClock.now - seen < .seconds(3)
    }

    /// Ends the federation, and gives every site still polling the chance to fetch the final task before the server
    /// stops (a site that stopped answering is not waited for).
    private func finish(summary: String) async {
        core.finish(summary: summary)
        notify()
        let grace = ContinuousClock.now + .seconds(min(core.configuration.stageTimeout, 30))
        while ContinuousClock.now < grace && core.joined.contains(where: { !released.contains($0) && isPolling($0) }) {
            await waitForChange(until: min(grace, .now + .milliseconds(500)))
        }
    }

    /// Runs one round: each stage closes when every site asked has answered, or at its timeout.
    func runRound(_ number: Int) async -> RoundRecord {
        if let skipped = core.startRound(number) { return skipped }
        notify()
        while true {
            let seconds = core.stage == .advertise ? core.configuration.trainTimeout : core.configuration.stageTimeout
            let deadline = ContinuousClock.now + .seconds(seconds)
            while !core.isStageComplete && ContinuousClock.now < deadline && !Task.isCancelled { await waitForChange(until: deadline) }
            if !core.isStageComplete, let stage = core.stage {
                core.log("round \(number): no \(stage.rawValue) answer within \(Int(seconds)) s from \(core.waitingFor.joined(separator: ", "))")
            }
            let record = core.closeStage()
            notify()
            if let record { return record }
        }
    }

    // MARK: - Waiting

    /// Suspends until something changes (a join, a submission, a new task) or `deadline` passes.
    private func waitForChange(until deadline: ContinuousClock.Instant) async {
        let id = UUID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                guard !Task.isCancelled else { return continuation.resume() }
                let sleeper = Task { [weak self] in
                    try? await Task.sleep(until: deadline)
                    await self?.wake(id)
                }
                waiters[id] = (continuation, sleeper)
            }
        } onCancel: {
            Task { await self.wake(id) }
        }
    }

    private func wake(_ id: UUID) {
        waiters.removeValue(forKey: id)?.continuation.resume()
    }

    private func notify() {
        let all = waiters
        waiters = [:]
        for waiter in all.values {
            waiter.sleeper.cancel()
            waiter.continuation.resume()
        }
    }
}
