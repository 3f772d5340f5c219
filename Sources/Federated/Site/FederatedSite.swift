import CSodium
public import CofferCrypto
public import CofferTraining
import Foundation

/// A site of a federation, whatever carries its messages: it joins, answers each task of the coordinator, trains on its
/// own data, and sends only signed keys, encrypted shares, a masked vector, signatures, and sealed shares.
///
/// Everything the coordinator sends is checked first: its signature (the coordinator's pinned identity), the session,
/// the task's sequence number (a replayed task is refused), the roster (against the pinned peers when there are any).
/// A task the site refuses ends its part in that round: it logs one line and waits for the next round.
///
/// ```swift
/// let site = try FederatedSite(identity: id, coordinator: coordinatorPub, recipe: recipe, data: data, rounds: 5)
/// let join = site.joinRequest(session: status) // POST /v1/fl/join, with GET /v1/fl/status's session
/// try site.welcomed(answer)
/// if let submission = try site.handle(task) { ... }   // POST /v1/fl/submit
/// ```
public final class FederatedSite: @unchecked Sendable {
    public let keyID: String
    public let publicIdentity: PublicIdentity
    let identity: UnlockedIdentity
    let coordinator: PublicIdentity
    public let recipe: FederatedRecipe
    let data: LocalData
    let training: LocalTraining
    /// Pinned identities of the other sites, by key ID; `nil` trusts the coordinator's roster.
    let peers: [String: PublicIdentity]?
    public private(set) var session: [UInt8]?
    public private(set) var sessionHex = ""
    public private(set) var mechanism = "fedavg"
    public private(set) var lastSeq = 0
    private var state: SecAggSite?
    /// Internal, not private: tests play a site that skips clipping through it.
    let input = EncodedInput()
    private let expander = MaskExpander()
    /// The federation's standardisation, once an update round has brought it.
    public private(set) var standardisation: PublicStandardisation?
    private var datasets: (training: Dataset, validation: Dataset)?
    /// Rounds this site trained in: its record-level DP history.
    public private(set) var roundsTrained = 0
    /// The last global model received, and its validation metrics on this site's rows.
    public private(set) var latestModel: MultiTaskModel?
    public private(set) var latestMetrics: [TaskMetric] = []
    /// The final task's summary, once the federation is over.
    public private(set) var summary: String?
    /// The form of the bodies this site sends, and so of those the coordinator answers with (docs/FORMAT.md).
    public var form = MessageCoding.Form.binary
    /// Where the site reports what happens (one line each).
    public var log: @Sendable (String) -> Void = { _ in }
    /// Whether each global model received is evaluated on this site's validation rows (``latestMetrics`` and a log
    /// line). A forward pass over those rows every round: `fl simulate`, which reads neither, turns it off.
    public var evaluatesGlobalModels = true

    public init(
        identity: UnlockedIdentity,
        coordinator: PublicIdentity,
        recipe: FederatedRecipe,
        data: LocalData,
        rounds: Int,
        peers: [PublicIdentity]? = nil
    ) throws(FederatedError) {
        keyID = identity.publicIdentity.keyID
        publicIdentity = identity.publicIdentity
        self.identity = identity
        self.coordinator = coordinator
        self.recipe = recipe
        self.data = data
        training = try LocalTraining(recipe: recipe, trainingRows: data.trainingCount, rounds: rounds)
        self.peers = peers.map { Dictionary($0.map { ($0.keyID, $0) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// Record-level epsilon of this site's local DP-SGD so far (`nil` without local DP).
    public var recordLevelEpsilon: Double? {
        guard let delta = recipe.recipe.delta, recipe.recipe.isPrivate else { return nil }
        var accountant = RDPAccountant()
        for segment in training.segments(rounds: roundsTrained) { accountant.compose(segment) }
        return accountant.epsilon(delta: delta).epsilon
    }

    // MARK: - Join and poll

    /// The join of `session` (the coordinator's, from `GET /v1/fl/status`).
    public func joinRequest(session: String) -> SignedMessage {
        let join = JoinRequest(
            session: session,
            site: keyID,
            recipeDigest: recipe.digest,
            features: recipe.recipe.features,
            tasks: recipe.recipe.tasks.map(\.name)
        )
        return SignedMessage.sign(MessageCoding.encode(join, as: form), by: identity.identity)
    }

    public func welcomed(_ signed: SignedMessage) throws(FederatedError) {
        try signed.verify(by: coordinator)
        let welcome = try MessageCoding.decode(Welcome.self, from: signed.payload, what: "welcome")
        guard welcome.site == keyID, welcome.recipeDigest == recipe.digest, let session = Digest.bytes(fromHex: welcome.session), session.count == 16
        else { throw .malformedMessage("the welcome names another site, recipe or no session") }
        self.session = session
        sessionHex = welcome.session
        mechanism = welcome.mechanism
    }

    public func pollRequest() -> SignedMessage {
        SignedMessage.sign(MessageCoding.encode(PollRequest(session: sessionHex, site: keyID, after: lastSeq), as: form), by: identity.identity)
    }

    // MARK: - Tasks

    /// Answers one task. Returns the signed submission, or `nil` when there is nothing to send (the federation is over).
    ///
    /// - Throws: the one-line reason a task is refused; the site's part in that round ends.
    public func handle(_ signed: SignedMessage) throws(FederatedError) -> SignedMessage? {
        try signed.verify(by: coordinator)
        let task = try MessageCoding.decode(SiteTask.self, from: signed.payload, what: "task")
        guard task.session == sessionHex, let session else { throw .malformedMessage("a task for another session") }
        guard task.site == keyID else { throw .tampered("a task addressed to site \(task.site) was delivered here") }
        guard task.seq > lastSeq else { throw .duplicate("task \(task.seq) was already handled (the last was \(lastSeq))") }
        lastSeq = task.seq
        if let previous = task.previous {
            log("round \(previous.round): \(previous.outcome)\(previous.reason.map { " (\($0))" } ?? "") with \(previous.sites) sites")
        }
        var submission = Submission(session: sessionHex, site: keyID, round: task.round, stage: task.stage)
        do throws(FederatedError) {
            switch task.stage {
            case .advertise:
                try begin(task, session: session, into: &submission)
            case .share:
                guard let state, state.round == task.round else { throw FederatedError.notInRound("no keys were advertised for round \(task.round)") }
                try state.share(keys: task.keys ?? [], into: &submission)
            case .masked:
                guard let state, state.round == task.round, input.round == task.round else {
                    throw FederatedError.notInRound("no shares were sent for round \(task.round)")
                }
                defer { input.wipe() }
                submission.vector = Base64Bytes(
                    try state.mask(survivors: task.survivors ?? [], boxes: task.boxes ?? [], input: input.bytes, expander: expander)
                )
            case .consistency:
                guard let state, state.round == task.round else {
                    throw FederatedError.notInRound("no masked input was sent for round \(task.round)")
                }
                submission.signature = Base64Bytes(try state.signConsistency(masked: task.masked ?? [], by: identity.identity))
            case .unmask:
                guard let state, state.round == task.round else { throw FederatedError.notInRound("nothing to unmask in round \(task.round)") }
                submission.sealedShares = Base64Bytes(try state.unmask(masked: task.masked ?? [], signatures: task.signatures ?? []))
                self.state = nil
            case .finished:
                try receiveModel(task)
                summary = task.summary ?? "finished"
                state = nil
                input.wipe()
                return nil
            }
        } catch {
            state = nil
            input.wipe()
            throw error
        }
        return SignedMessage.sign(MessageCoding.encode(submission, as: form), by: identity.identity)
    }

    /// The advertise task: check the roster and parameters, compute this round's vector (train, or the statistics),
    /// and advertise fresh keys.
    private func begin(_ task: SiteTask, session: [UInt8], into submission: inout Submission) throws(FederatedError) {
        guard let entries = task.roster, let parameters = task.parameters else {
            throw .malformedMessage("an advertise task without roster or parameters")
        }
        var roster: [Int: PublicIdentity] = [:]
        var me: Int?
        for entry in entries {
            let identity: PublicIdentity
            do { identity = try PublicIdentity(jsonBytes: entry.identity.bytes) } catch {
                throw .malformedMessage("roster entry \(entry.index): \(error.description)")
            }
            guard identity.keyID == entry.site, roster[entry.index] == nil else {
                throw .malformedMessage("roster entry \(entry.index) does not match its identity or is repeated")
            }
            if let peers, peers[identity.keyID] != identity {
                throw .notInRound("the roster names site \(identity.keyID), which is not among this site's pinned peers")
            }
            roster[entry.index] = identity
            if identity.keyID == keyID { me = entry.index }
        }
        guard let me else { throw .notInRound("this site is not in the roster of round \(task.round)") }
        guard parameters.mechanism == mechanism else {
            throw .tampered("round \(task.round) says \(parameters.mechanism), the federation \(mechanism)")
        }
        let state = try SecAggSite(session: session, round: task.round, me: me, roster: roster, parameters: parameters)
        input.wipe()
        switch parameters.kind {
        case .statistics:
            let vector = try data.statisticsVector()
            input.prepare(count: vector.count * 8, round: task.round)
            input.bytes.withUnsafeMutableBytes { raw in
                for (j, v) in vector.enumerated() { raw.storeBytes(of: v, toByteOffset: j * 8, as: UInt64.self) }
            }
            log("round \(task.round): feature statistics of \(data.trainingCount) training rows, masked")
        case .update:
            try trainAndEncode(task, parameters: parameters)
        }
        self.state = state
        state.advertise(signedBy: identity.identity, into: &submission)
    }

    /// Trains from the task's global model and encodes the update (weighted by training rows, or clipped to S with
    /// weight 1 under DP) into ``input``.
    private func trainAndEncode(_ task: SiteTask, parameters: RoundParameters) throws(FederatedError) {
        guard let standardisation = task.standardisation else { throw .malformedMessage("an update round without the standardisation") }
        if self.standardisation != standardisation || datasets == nil {
            datasets = try data.datasets(standardisation)
            self.standardisation = standardisation
        }
        let global = try receiveModel(task)
        let quantizer = try Quantizer(clipRange: parameters.clipRange, bits: parameters.bits)
        let result = try training.run(from: global, on: datasets!.training, seed: (recipe.recipe.seed ?? 1) &+ UInt64(task.round) &* 0x9E37_79B9)
        roundsTrained += 1
        let start = ModelVector.flatten(global)
        var update = zip(ModelVector.flatten(result.model), start).map { $0 - $1 }
        var weight = min(UInt64(data.trainingCount), FederationConfiguration.maximumWeight)
        if parameters.mechanism == "dp-fedavg" {
            guard let clipNorm = parameters.clipNorm else { throw .malformedMessage("a dp-fedavg round without a clip norm") }
            let bound = try FederationConfiguration.preQuantizationNorm(clipNorm: clipNorm, bits: parameters.bits, parameters: update.count)
            // A diverged training's NaN or infinity counts as nothing: with it the norm was NaN, `norm > bound` false,
            // and the update went unclipped (helper-48).
            update = update.map { $0.isFinite ? $0 : 0 }
            let norm = update.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            if !(norm <= bound) {
                let factor = Float(bound / norm)
                update = update.map { $0 * factor }
            }
            weight = 1
        }
        input.prepare(count: (update.count + 1) * 8, round: task.round)
        let clipped = input.bytes.withUnsafeMutableBytes {
            quantizer.encode(update, weight: weight, into: $0.bindMemory(to: UInt64.self), expander: expander)
        }
        let losses = zip(recipe.architecture.tasks, result.taskLosses).map { "\($0.name) \(String(format: "%.4f", $1))" }.joined(separator: ", ")
        log(
            "round \(task.round): trained \(result.steps) steps on \(data.trainingCount) rows (loss \(losses))"
                + (clipped > 0 ? ", \(clipped) coordinates clipped to ±\(parameters.clipRange)" : "")
        )
    }

    /// Reads the task's global model, and evaluates it on this site's validation rows.
    @discardableResult
    private func receiveModel(_ task: SiteTask) throws(FederatedError) -> MultiTaskModel {
        let template = latestModel ?? recipe.initialModel()
        guard let bytes = task.model?.bytes else {
            if task.stage == .finished { return template }
            throw .malformedMessage("an update round without the global model")
        }
        guard let values = [Float](littleEndianBytes: bytes), values.count == template.parameterCount else {
            throw .malformedMessage("the global model has \(bytes.count / 4) parameters, the recipe's architecture \(template.parameterCount)")
        }
        let model = ModelVector.model(template, with: values)
        latestModel = model
        if evaluatesGlobalModels, let datasets, datasets.validation.count > 0 {
            latestMetrics = TrainingRun.evaluate(model, on: datasets.validation)
            let text = latestMetrics.map { "\($0.task) \($0.metric) \(String(format: "%.4f", $0.value))" }.joined(separator: ", ")
            log(task.stage == .finished ? "final global model: validation \(text)" : "global model before round \(task.round): validation \(text)")
        }
        return model
    }
}

/// The encoded input between the advertise and masked stages, in sodium memory that the site keeps from round to round
/// and wipes once the input is masked: mapping and locking 800 KB afresh each round cost 0.4-0.9 ms here.
final class EncodedInput {
    private(set) var bytes = SecureBytes(count: 0)
    /// The round whose input the bytes hold, if any.
    private(set) var round: Int?

    /// Zeroed bytes of `count` for `round`'s input.
    func prepare(count: Int, round: Int) {
        if bytes.count == count {
            bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, count) }
        } else {
            bytes = SecureBytes(count: count)
        }
        self.round = round
    }

    func wipe() {
        guard round != nil else { return }
        bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) }
        round = nil
    }
}
