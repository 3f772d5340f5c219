import CSodium
public import CofferCrypto
public import CofferTraining
import Foundation

/// How one round ended.
public struct RoundRecord: Sendable {
    public var round: Int
    public var kind: RoundParameters.Kind
    /// `ok`, `aborted` or `skipped`.
    public var outcome: String
    public var reason: String?
    /// Sites sampled into the round.
    public var sampled: [String]
    /// Sites whose inputs are in the aggregate (U3), by key ID.
    public var participants: [String]
    /// Update rounds attempted so far (the site-level accountant's steps).
    public var roundsAccounted: Int
    /// Site-level privacy after this round (DP-FedAvg only), by the RDP accountant (see ``CoordinatorCore/privacyReport()``).
    public var privacy: SiteLevelPrivacy.Report?
    /// The global model after the round.
    public var model: [Float]
    public var seconds: Double
}

/// The coordinator's state and rules, without clocks or transport: joins, rounds, stages, tasks, aggregation, and the
/// global model. ``Coordinator`` drives it over HTTP with timeouts; ``LocalFederation`` drives it in one process.
public final class CoordinatorCore: @unchecked Sendable {
    public let configuration: FederationConfiguration
    public let recipe: FederatedRecipe
    let signer: UnlockedIdentity
    public let session: [UInt8]
    public let sessionHex: String
    let enrolled: [String: PublicIdentity]
    public private(set) var joined: [String] = []
    /// N: the sites sampling draws from (those joined when the first round began).
    public private(set) var population: [String] = []
    public private(set) var global: [Float]
    let template: MultiTaskModel
    public private(set) var standardisation: PublicStandardisation?
    public private(set) var round = -1
    public private(set) var aggregation: SecAggAggregator?
    private var kind: RoundParameters.Kind = .update
    private var indexOf: [String: Int] = [:]
    private var siteOf: [Int: String] = [:]
    private var sampled: [String] = []
    private var tasks: [String: (seq: Int, message: SignedMessage)] = [:]
    /// The body form of each site's join, in which it gets its answers and tasks.
    private var forms: [String: MessageCoding.Form] = [:]
    private var seq = 0
    private var previous: RoundOutcome?
    private var roundStart = ContinuousClock.now
    public private(set) var records: [RoundRecord] = []
    public private(set) var roundsAccounted = 0
    public private(set) var isFinished = false
    let quantizer: Quantizer
    public var log: @Sendable (String) -> Void = { _ in }
    /// Test hook: lets a test play a malicious coordinator that alters the tasks it forwards.
    var taskFilter: ((inout SiteTask) -> Void)?

    public init(
        configuration: FederationConfiguration,
        recipe: FederatedRecipe,
        identity: UnlockedIdentity,
        sites: [PublicIdentity]
    ) throws(FederatedError) {
        try configuration.validate()
        guard Set(sites.map(\.keyID)).count == sites.count else { throw .invalidParameter("a site is enrolled twice") }
        guard sites.count >= configuration.minimumSites else {
            throw .invalidParameter("\(sites.count) sites enrolled, at least \(configuration.minimumSites) are needed")
        }
        try configuration.standardisation?.checkForFederation(features: recipe.recipe.features.count)
        let q = try configuration.quantizer()
        try q.validate(maximumWeight: configuration.dp == nil ? FederationConfiguration.maximumWeight : 1, sites: sites.count)
        self.configuration = configuration
        self.recipe = recipe
        self.signer = identity
        self.enrolled = Dictionary(uniqueKeysWithValues: sites.map { ($0.keyID, $0) })
        let session = SecureBytes.random(count: 16).withUnsafeBytes { Array($0) }
        self.session = session
        self.sessionHex = Digest.hex(session)
        template = recipe.initialModel()
        global = ModelVector.flatten(template)
        standardisation = configuration.standardisation
        quantizer = q
    }

    public var enrolledCount: Int { enrolled.count }
    public var hasStarted: Bool { !population.isEmpty }
    /// Whether the statistics round is still to run.
    public var needsStatistics: Bool { standardisation == nil }
    public var stage: Stage? { aggregation?.stage }

    /// The global model as a ``MultiTaskModel``.
    public var globalModel: MultiTaskModel { ModelVector.model(template, with: global) }

    /// Signs a message to `site`, in the form of its join.
    func sign(_ value: some Encodable, to site: String) -> SignedMessage {
        SignedMessage.sign(MessageCoding.encode(value, as: forms[site] ?? .json), by: signer.identity)
    }

    /// Checks a request's signature against the enrolled site it names.
    func authenticate(_ signed: SignedMessage) throws(FederatedError) -> PublicIdentity {
        guard let identity = enrolled[signed.signer] else { throw .unknownSite(signed.signer) }
        try signed.verify(by: identity)
        return identity
    }

    // MARK: - Join and poll

    /// Admits an enrolled site whose recipe and features match.
    public func join(_ signed: SignedMessage) throws(FederatedError) -> SignedMessage {
        let identity = try authenticate(signed)
        let request = try MessageCoding.decode(JoinRequest.self, from: signed.payload, what: "join")
        guard request.site == identity.keyID else { throw .signatureInvalid("a join for site \(request.site) signed by \(identity.keyID)") }
        guard request.session == sessionHex else {
            throw .duplicate("a join for another session than this federation's \(sessionHex) (GET /v1/fl/status names it)")
        }
        try recipe.check(join: request)
        if !joined.contains(identity.keyID) {
            guard !hasStarted else { throw .notInRound("site \(identity.keyID) joined after the federation started") }
            joined.append(identity.keyID)
            log("site \(identity.name) (\(identity.keyID)) joined: \(joined.count) of \(enrolled.count)")
        }
        forms[identity.keyID] = MessageCoding.form(of: signed.payload)
        return sign(
            Welcome(
                session: sessionHex,
                site: identity.keyID,
                recipeDigest: recipe.digest,
                rounds: configuration.rounds,
                mechanism: configuration.mechanism
            ),
            to: identity.keyID
        )
    }

    /// Checks a poll; returns the site and the last task it has.
    public func authenticatePoll(_ signed: SignedMessage) throws(FederatedError) -> (site: String, after: Int) {
        let identity = try authenticate(signed)
        let poll = try MessageCoding.decode(PollRequest.self, from: signed.payload, what: "poll")
        guard poll.site == identity.keyID, poll.session == sessionHex else { throw .malformedMessage("a poll for another site or session") }
        guard joined.contains(identity.keyID) else { throw .notInRound("site \(identity.keyID) has not joined") }
        return (identity.keyID, poll.after)
    }

    /// The site's newest task, if it is newer than `after`.
    public func task(for site: String, after: Int) -> SignedMessage? {
        guard let entry = tasks[site], entry.seq > after else { return nil }
        return entry.message
    }

    private func post(_ batch: [SiteTask]) {
        var batch = batch
        for i in batch.indices {
            seq += 1
            batch[i].seq = seq
            taskFilter?(&batch[i])
        }
        // Signed on every core at once: a round's first tasks each carry the model (0.4 MB to write and hash per site at
        // 100k parameters), which one thread of the coordinator did site after site.
        var signed = [SignedMessage?](repeating: nil, count: batch.count)
        signed.withUnsafeMutableBufferPointer { out in
            nonisolated(unsafe) let out = out
            let unsigned = batch
            DispatchQueue.concurrentPerform(iterations: unsigned.count) { i in out[i] = self.sign(unsigned[i], to: unsigned[i].site) }
        }
        for (task, message) in zip(batch, signed) { tasks[task.site] = (task.seq, message!) }
    }

    // MARK: - Rounds

    /// Fixes the population (the sites joined so far); the federation then admits no one new.
    public func begin() throws(FederatedError) {
        guard joined.count >= configuration.minimumSites else {
            throw .invalidParameter("only \(joined.count) of \(enrolled.count) sites joined, at least \(configuration.minimumSites) are needed")
        }
        population = joined.sorted()
        log("federation \(sessionHex.prefix(8)) begins with \(population.count) sites, \(configuration.mechanism), \(configuration.rounds) rounds")
    }

    /// Starts round `number` (0: the statistics round). Returns the record of a skipped round, or `nil` once its tasks are posted.
    public func startRound(_ number: Int) -> RoundRecord? {
        round = number
        roundStart = .now
        kind = number == 0 ? .statistics : .update
        if kind == .update { roundsAccounted += 1 }
        // Poisson sampling from the operating system's CSPRNG; the statistics round takes everyone.
        let q = kind == .statistics ? 1 : configuration.sampleRate
        sampled = population.filter { _ in q >= 1 || Self.uniform() < q }
        guard sampled.count >= configuration.minimumSites else {
            return endRound(outcome: "skipped", reason: "\(sampled.count) sites sampled, fewer than the minimum \(configuration.minimumSites)")
        }
        // Indices, hence places in SecAgg+'s ring, in an order drawn afresh each round from the CSPRNG: Bell et al.'s
        // bounds hold for a ring that sites cannot foresee when they are corrupted. In key-ID order (as before), whoever
        // chooses which sites to corrupt could pick a victim's k ring neighbours and unmask it.
        var order = sampled
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(randombytes_uniform(UInt32(i + 1)))) }
        indexOf = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0 + 1) })
        siteOf = Dictionary(uniqueKeysWithValues: indexOf.map { ($1, $0) })
        let roster = Dictionary(uniqueKeysWithValues: sampled.map { (indexOf[$0]!, enrolled[$0]!) })
        let parameters: RoundParameters
        let dimension: Int
        do throws(FederatedError) {
            let graph = try NeighbourGraph(size: sampled.count, neighbours: configuration.neighbours)
            let t = try configuration.threshold.resolve(shares: graph.sharesPerSecret)
            parameters = RoundParameters(
                kind: kind,
                threshold: t,
                neighbours: graph.degree,
                clipRange: quantizer.clipRange,
                bits: quantizer.bits,
                mechanism: configuration.mechanism,
                clipNorm: configuration.dp?.clipNorm,
                coordinatorKey: Base64Bytes([UInt8](repeating: 0, count: 32))
            )
            dimension = kind == .statistics ? 1 + 2 * recipe.recipe.features.count : global.count + 1
            aggregation = try SecAggAggregator(session: session, round: number, roster: roster, template: parameters, dimension: dimension)
        } catch {
            return endRound(outcome: "skipped", reason: error.description)
        }
        let entries = sampled.map { RosterEntry(index: indexOf[$0]!, site: $0, identity: Base64Bytes(enrolled[$0]!.jsonBytes)) }
        let model = kind == .update ? Base64Bytes(global.littleEndianBytes) : nil
        post(
            sampled.map { site in
                var task = SiteTask(session: sessionHex, site: site, seq: 0, round: number, stage: .advertise)
                task.previous = previous
                task.roster = entries
                task.model = model
                task.standardisation = standardisation
                aggregation!.fill(&task, for: indexOf[site]!)
                return task
            }
        )
        log(
            "round \(number): \(sampled.count) sites sampled, threshold \(aggregation!.threshold), \(aggregation!.parameters.neighbours) neighbours each"
        )
        return nil
    }

    /// Takes a site's submission for the current stage.
    public func submit(_ signed: SignedMessage) throws(FederatedError) -> SignedMessage {
        try submit(try open(signed))
    }

    /// The checks of a submission that need no round state: the signature of an enrolled site, which must be the one
    /// the submission names, the session, and the decoding. They read only what is fixed at creation, so threads may run
    /// them at once (a masked vector is a megabyte to hash and decode); the `submit` that takes its result does the rest.
    public func open(_ signed: SignedMessage) throws(FederatedError) -> OpenedSubmission {
        let identity = try authenticate(signed)
        let submission = try MessageCoding.decode(Submission.self, from: signed.payload, what: "submission")
        guard submission.site == identity.keyID else {
            throw .signatureInvalid("a submission for site \(submission.site) signed by \(identity.keyID)")
        }
        guard submission.session == sessionHex else { throw .malformedMessage("a submission for another session") }
        return OpenedSubmission(identity: identity, submission: submission)
    }

    /// Takes an opened submission for the current stage.
    public func submit(_ opened: OpenedSubmission) throws(FederatedError) -> SignedMessage {
        let (identity, submission) = (opened.identity, opened.submission)
        guard let aggregation else { throw .staleRound(site: identity.keyID, got: submission.round, current: max(round, 0)) }
        guard submission.round == round else { throw .staleRound(site: identity.keyID, got: submission.round, current: round) }
        guard let index = indexOf[identity.keyID] else { throw .notInRound("site \(identity.keyID) was not sampled into round \(round)") }
        try aggregation.accept(submission, from: index)
        return sign(Acknowledgement(session: sessionHex, site: identity.keyID, round: round, stage: submission.stage), to: identity.keyID)
    }

    /// Whether every site asked in the current stage has answered.
    public var isStageComplete: Bool { aggregation?.isStageComplete ?? true }

    /// The sites asked in the current stage that have not answered.
    public var waitingFor: [String] {
        guard let aggregation else { return [] }
        return aggregation.expected.subtracting(aggregation.answered).sorted().compactMap { siteOf[$0] }
    }

    /// Closes the current stage and posts the next tasks; returns the round's record when the round has ended.
    public func closeStage() -> RoundRecord? {
        guard let aggregation else { return nil }
        do throws(FederatedError) {
            let next = try aggregation.close()
            if next != .finished {
                post(
                    aggregation.expected.sorted().map { index in
                        var task = SiteTask(session: sessionHex, site: siteOf[index]!, seq: 0, round: round, stage: next)
                        aggregation.fill(&task, for: index)
                        return task
                    }
                )
                return nil
            }
            let sum = try aggregation.result()
            let participants = (aggregation.completed[.masked] ?? []).map { siteOf[$0]! }
            switch kind {
            case .statistics:
                standardisation = try FederatedStatistics.standardisation(fromSum: sum, features: recipe.recipe.features.count)
                log("round 0: feature statistics of \(participants.count) sites aggregated")
            case .update:
                try applyUpdate(sum, sites: participants.count)
            }
            return endRound(outcome: "ok", reason: nil, participants: participants)
        } catch {
            return endRound(outcome: "aborted", reason: error.description)
        }
    }

    /// Moves the global model by the decoded aggregate: the weighted mean (FedAvg), or the noised sum over qN (DP-FedAvg).
    ///
    /// Clipping happens at the sites, behind the masks: one site that skipped it had set every weight of a model
    /// published as DP-FedAvg to 100 (helper-47). Under DP the aggregate of `sites` inputs is therefore bounded here:
    /// - its weight must be `sites` (each input weighs 1), else the round aborts; that depends on no honest data;
    /// - it is scaled onto the ball of radius qN S, the accountant's denominator times S, when it lies outside: a
    ///   1-Lipschitz map with a radius fixed in advance, so the sum's sensitivity stays S and nothing about the
    ///   un-noised sum is revealed (aborting on its norm would have told every site one bit of it, and the norm itself
    ///   in the reason; helper-48). An honest round reaches the radius only when more than qN sites were sampled and
    ///   their updates all pointed one way.
    /// A bounded but hostile update still passes; docs/THREAT_MODEL.md says what is left.
    private func applyUpdate(_ sum: [UInt64], sites: Int) throws(FederatedError) {
        let eta = configuration.serverLearningRate
        if let dp = configuration.dp {
            var (total, weight) = quantizer.decodeSum(sum)
            guard weight == UInt64(sites) else {
                throw .roundAborted(
                    round: round,
                    reason: "the aggregate weighs \(weight), not the \(sites) of its sites: a site sent an update that is not clipped"
                )
            }
            let radius = configuration.sampleRate * Double(population.count) * dp.clipNorm
            let norm = total.reduce(0) { $0 + $1 * $1 }.squareRoot()
            if !(norm <= radius) {
                let factor = norm.isFinite ? radius / norm : 0
                total = total.map { $0.isFinite ? $0 * factor : 0 }
                // The coordinator's own log only: it sees the un-noised sum anyway; the sites must not.
                log("round \(round): the aggregate's norm was over qN S = \(radius): scaled onto it")
            }
            let noise = GaussianNoise.sample(count: total.count, standardDeviation: Float(dp.noiseMultiplier * dp.clipNorm))
            let denominator = configuration.sampleRate * Double(population.count)
            for j in global.indices { global[j] += Float(eta * (total[j] + Double(noise[j])) / denominator) }
        } else {
            let (mean, weight) = quantizer.decodeMean(sum)
            guard weight > 0 else { throw .roundAborted(round: round, reason: "the aggregate carries no weight") }
            for j in global.indices { global[j] += Float(eta * mean[j]) }
        }
        guard global.allSatisfy(\.isFinite) else { throw .roundAborted(round: round, reason: "the update made the model non-finite") }
    }

    private func endRound(outcome: String, reason: String?, participants: [String] = []) -> RoundRecord {
        let before = records.last?.model ?? ModelVector.flatten(template)
        if outcome != "ok" && kind == .update { global = before }
        aggregation = nil
        let elapsed = ContinuousClock.now - roundStart
        var privacy: SiteLevelPrivacy.Report?
        if let dp = configuration.dp, roundsAccounted > 0 {
            privacy = try? SiteLevelPrivacy.epsilon(
                sampleRate: configuration.sampleRate,
                noiseMultiplier: dp.noiseMultiplier,
                rounds: roundsAccounted,
                delta: dp.delta,
                withPLD: false
            )
        }
        let record = RoundRecord(
            round: round,
            kind: kind,
            outcome: outcome,
            reason: reason,
            sampled: sampled,
            participants: participants,
            roundsAccounted: roundsAccounted,
            privacy: privacy,
            model: global,
            seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        )
        records.append(record)
        previous = RoundOutcome(round: round, outcome: outcome, reason: reason, sites: participants.count)
        let epsilon = privacy.map { String(format: ", site-level epsilon %.4f", $0.epsilon) } ?? ""
        log(
            "round \(round): \(outcome)\(reason.map { " (\($0))" } ?? "") with \(participants.count) sites in \(String(format: "%.2f", record.seconds)) s\(epsilon)"
        )
        return record
    }

    /// Site-level privacy of the update rounds so far by both accountants (the smaller epsilon); `nil` without DP.
    public func privacyReport() throws(FederatedError) -> SiteLevelPrivacy.Report? {
        guard let dp = configuration.dp else { return nil }
        return try SiteLevelPrivacy.epsilon(
            sampleRate: configuration.sampleRate,
            noiseMultiplier: dp.noiseMultiplier,
            rounds: roundsAccounted,
            delta: dp.delta
        )
    }

    /// Ends the federation: every joined site gets the final model and a summary.
    public func finish(summary: String) {
        aggregation = nil
        isFinished = true
        let model = Base64Bytes(global.littleEndianBytes)
        post(
            joined.map { site in
                var task = SiteTask(session: sessionHex, site: site, seq: 0, round: round, stage: .finished)
                task.previous = previous
                task.model = model
                task.summary = summary
                return task
            }
        )
    }

    /// A uniform double in [0, 1) from libsodium's CSPRNG.
    static func uniform() -> Double {
        var bits: UInt64 = 0
        withUnsafeMutableBytes(of: &bits) { randombytes_buf($0.baseAddress!, 8) }
        return Double(bits >> 11) * 0x1.0p-53
    }
}

/// A submission whose signature, sender and session ``CoordinatorCore/open(_:)`` has checked.
public struct OpenedSubmission: Sendable {
    let identity: PublicIdentity
    let submission: Submission
}
