import CBLAS
import CofferCrypto
public import CofferTraining
import Foundation

/// Plain FedAvg in one process, the baseline secure aggregation is measured against: the same sites, data, local
/// training and signed binary messages, but each site sends its update in the clear (f32) in one stage and the
/// coordinator averages the floats. Never used for a real federation: the coordinator sees every update.
public final class PlainFederation: @unchecked Sendable {
    public let recipe: FederatedRecipe
    public let sites: [LocalData]
    let identities: [UnlockedIdentity]
    let training: [LocalTraining]
    public let configuration: FederationConfiguration
    public private(set) var global: [Float]
    public private(set) var standardisation: PublicStandardisation?
    /// Seconds of each round.
    public private(set) var roundSeconds: [Double] = []
    /// CPU seconds of the whole process during each round.
    public private(set) var roundCPUSeconds: [Double] = []
    /// Each site's standardised training set, made once (as the secure sites cache theirs).
    private var trainingSets: [Dataset] = []
    let template: MultiTaskModel

    public init(recipe: FederatedRecipe, sites: [LocalData], configuration: FederationConfiguration) throws(FederatedError) {
        self.recipe = recipe
        self.sites = sites
        self.configuration = configuration
        identities = sites.indices.map { UnlockedIdentity(try! Identity.generate(name: "plain\($0)")) }
        var training: [LocalTraining] = []
        for data in sites { training.append(try LocalTraining(recipe: recipe, trainingRows: data.trainingCount, rounds: configuration.rounds)) }
        self.training = training
        template = recipe.initialModel()
        global = ModelVector.flatten(template)
        standardisation = configuration.standardisation
        // As LocalFederation: one OpenBLAS thread per site, the sites in parallel.
        coffer_blas_set_threads(1)
    }

    public var globalModel: MultiTaskModel { ModelVector.model(template, with: global) }

    /// The pooled standardisation (summed in the clear), then every round.
    public func run() throws(FederatedError) {
        if standardisation == nil {
            var sum = [UInt64](repeating: 0, count: 1 + 2 * recipe.recipe.features.count)
            for data in sites {
                for (j, v) in try data.statisticsVector().enumerated() { sum[j] &+= v }
            }
            standardisation = try FederatedStatistics.standardisation(fromSum: sum, features: recipe.recipe.features.count)
        }
        for round in 1...configuration.rounds { try runRound(round) }
    }

    public func runRound(_ round: Int) throws(FederatedError) {
        let start = ContinuousClock.now
        let cpuStart = ProcessCPUTime.seconds()
        let standardisation = standardisation!
        if trainingSets.isEmpty {
            for data in sites { trainingSets.append(try data.datasets(standardisation).training) }
        }
        let trainingSets = self.trainingSets
        let seed = (recipe.recipe.seed ?? 1) &+ UInt64(round) &* 0x9E37_79B9
        // The global model goes to each site as a signed task, as in the secure protocol.
        let coordinatorKey = identities[0]
        var task = SiteTask(session: "plain", site: "", seq: round, round: round, stage: .advertise)
        task.model = Base64Bytes(global.littleEndianBytes)
        let broadcast = SignedMessage.sign(MessageCoding.encode(task, as: .binary), by: coordinatorKey.identity)
        var messages = [Submission?](repeating: nil, count: sites.count)
        let failure = LockedError()
        let template = self.template
        messages.withUnsafeMutableBufferPointer { out in
            nonisolated(unsafe) let buffer = out
            DispatchQueue.concurrentPerform(iterations: sites.count) { i in
                do throws(FederatedError) {
                    try broadcast.verify(by: coordinatorKey.publicIdentity)
                    let received = try MessageCoding.decode(SiteTask.self, from: broadcast.payload, what: "task")
                    guard let values = [Float](littleEndianBytes: received.model?.bytes ?? []) else { throw .malformedMessage("no model") }
                    let model = ModelVector.model(template, with: values)
                    let result = try training[i].run(from: model, on: trainingSets[i], seed: seed)
                    let update = zip(ModelVector.flatten(result.model), ModelVector.flatten(model)).map { $0 - $1 }
                    var submission = Submission(session: "plain", site: identities[i].publicIdentity.keyID, round: round, stage: .masked)
                    submission.vector = Base64Bytes(update.littleEndianBytes)
                    submission.signature = Base64Bytes(withUnsafeBytes(of: UInt64(sites[i].trainingCount).littleEndian, Array.init))
                    // The coordinator's signature check and decoding on the same thread, as the secure simulation
                    // does (LocalFederation), so that the two coordinators pay for them alike.
                    let signed = SignedMessage.sign(MessageCoding.encode(submission, as: .binary), by: identities[i].identity)
                    try signed.verify(by: identities[i].publicIdentity)
                    buffer[i] = try MessageCoding.decode(Submission.self, from: signed.payload, what: "update")
                } catch {
                    failure.set(error)
                }
            }
        }
        if let error = failure.error { throw error }
        var mean = [Double](repeating: 0, count: global.count)
        var total = 0.0
        for submission in messages {
            guard let submission else { continue }
            guard let update = [Float](littleEndianBytes: submission.vector?.bytes ?? []), update.count == global.count,
                let weightBytes = submission.signature?.bytes, weightBytes.count == 8
            else { throw .malformedMessage("a plain update of the wrong size") }
            let weight = Double(weightBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
            total += weight
            for j in mean.indices { mean[j] += weight * Double(update[j]) }
        }
        for j in global.indices { global[j] += Float(configuration.serverLearningRate * mean[j] / total) }
        let elapsed = ContinuousClock.now - start
        roundSeconds.append(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
        roundCPUSeconds.append(ProcessCPUTime.seconds() - cpuStart)
    }
}

/// The first error of several threads.
final class LockedError: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var error: FederatedError?
    func set(_ error: FederatedError) {
        lock.lock()
        if self.error == nil { self.error = error }
        lock.unlock()
    }
}
