import ArgumentParser
import CofferClient
import CofferCrypto
import CofferFederated
import CofferRegistry
import CofferServer
import CofferTraining
import Foundation
import Logging
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

extension Coffer {
    struct Federated: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fl",
            abstract: "Federated training with secure aggregation and site-level DP: a coordinator, sites, the accountant, a simulator.",
            subcommands: [Serve.self, Join.self, Epsilon.self, Simulate.self]
        )
    }
}

/// Federation parameters shared by `fl serve` and `fl simulate`.
struct FederationOptions: ParsableArguments {
    @Option(name: .long, help: "Rounds of training.") var rounds: Int = 5
    @Option(name: .long, help: "q: each site joins each round with this probability (1: all sites every round).") var sampleRate: Double = 1
    @Option(name: .long, help: "Rounds with fewer sampled sites are skipped.") var minSites: Int = 3
    @Option(name: .long, help: "t: shares needed to unmask: a count (3) or a fraction of the shares, rounded up (2/3 or 0.7); more than half.")
    var threshold: String = "2/3"
    @Option(name: .long, help: "SecAgg+ neighbours per site (even), or 0 for every other site (Bonawitz et al.).") var neighbours: Int = 0
    @Option(name: .long, help: "Quantization bits b per coordinate (8 to 32).") var bits: Int = 22
    @Option(name: .long, help: "c: without DP, update coordinates are clipped to [-c, c] before quantization.") var clipRange: Double = 8
    @Option(name: .long, help: "DP-FedAvg: S, each site's update is clipped to this L2 norm.") var clipNorm: Double?
    @Option(name: .long, help: "DP-FedAvg: sigma; noise N(0, (sigma S)^2) is added to the sum once per round.") var noiseMultiplier: Double?
    @Option(name: .long, help: "DP-FedAvg: delta of the site-level guarantee.") var delta: Double = 1e-5
    @Option(name: .long, help: "Public standardisation (JSON {means, standard_deviations}); otherwise a statistics round runs first.")
    var standardisation: String?
    @Flag(name: .long, help: "With DP, allow the statistics round (its feature sums are not differentially private).")
    var nonprivateStatistics = false
    @Option(name: .long, help: "eta: the global model moves by eta times the aggregate.") var serverLearningRate: Double = 1

    func configuration() throws -> FederationConfiguration {
        var c = FederationConfiguration()
        c.rounds = rounds
        c.sampleRate = sampleRate
        c.minimumSites = minSites
        guard let t = FederationConfiguration.Threshold(argument: threshold) else {
            throw CLIError("--threshold takes a count (3) or a fraction in (0.5, 1] (2/3 or 0.7), got '\(threshold)'")
        }
        c.threshold = t
        c.neighbours = neighbours
        c.quantizationBits = bits
        c.clipRange = clipRange
        c.serverLearningRate = serverLearningRate
        switch (clipNorm, noiseMultiplier) {
        case (nil, nil): break
        case (let s?, let sigma?): c.dp = .init(clipNorm: s, noiseMultiplier: sigma, delta: delta)
        default: throw CLIError("DP-FedAvg needs both --clip-norm and --noise-multiplier")
        }
        if let standardisation {
            let bytes = try FileBytes.read(standardisation)
            guard let shared = try? JSONDecoder().decode(SharedStandardisation.self, from: Data(bytes)) else {
                throw CLIError("\(standardisation): expected JSON {\"means\": [...], \"standard_deviations\": [...]}")
            }
            c.standardisation = shared
        }
        c.nonPrivateStatistics = nonprivateStatistics
        try Federation.check { () throws(FederatedError) in try c.validate() }
        return c
    }
}

/// Helpers shared by the `fl` commands.
enum Federation {
    /// Runs `body`, turning a federation error into the CLI's one-line error.
    static func check<T>(_ body: () throws(FederatedError) -> T) throws -> T {
        do { return try body() } catch { throw CLIError(error.description) }
    }

    static func recipe(_ path: String) throws -> FederatedRecipe {
        let recipe = try TrainingRecipe(contentsOf: path)
        return try check { () throws(FederatedError) in try FederatedRecipe(recipe) }
    }

    /// The global model as a checkpoint (`model.safetensors`, `privacy.json`) in `directory`.
    static func writeCheckpoint(
        _ model: MultiTaskModel,
        recipe: FederatedRecipe,
        standardisation: SharedStandardisation,
        privacy: PrivacyReport,
        to directory: String
    ) throws {
        let r = recipe.recipe
        let trained = TrainedModel(
            model: model,
            balancing: TaskBalancing(method: "fixed", weights: Dictionary(uniqueKeysWithValues: r.tasks.map { ($0.name, Double($0.weight ?? 1)) })),
            preprocessing: Preprocessing(
                features: r.features,
                means: standardisation.means,
                standardDeviations: standardisation.standardDeviations,
                tasks: r.tasks
            ),
            privacy: privacy,
            metrics: [],
            trainingSeconds: 0,
            examplesProcessed: 0
        )
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileBytes.write(try Checkpoint.encode(trained), to: "\(directory)/\(Checkpoint.modelFile)", mode: 0o600, overwrite: true)
        try FileBytes.write(try Checkpoint.privacyJSON(privacy), to: "\(directory)/\(Checkpoint.privacyFile)", mode: 0o644, overwrite: true)
    }

    /// Runs blocking work (sealing a push) on a thread of its own, off Swift's cooperative pool.
    static func onThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try work() }) }.start()
        }
    }

    static func line(_ text: String) { FileDescriptorStream.standardError.writeLine("coffer fl: \(text)") }
}

// MARK: - fl serve

extension Coffer.Federated {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Coordinate a federation: sampled rounds of secure aggregation over HTTP; optionally push the global model."
        )
        @Option(name: .long, help: "The shared training recipe (coffer train's JSON; its data is ignored).") var recipe: String
        @Option(
            name: .long,
            help:
                "The coordinator's identity (NAME.key): signs every message, and the pushed versions (default: $COFFER_IDENTITY, else identity in the config file)."
        ) var identity: String?
        @Option(name: .long, help: "An enrolled site's public identity (NAME.pub); repeat for each site.") var site: [String] = []
        @Option(name: .long, help: "HOST:PORT to listen on.") var listen: String = "127.0.0.1:8450"
        @OptionGroup var listening: ListenOptions
        @OptionGroup var federation: FederationOptions
        @Option(name: .long, help: "Seconds a site has to train and advertise its keys.") var trainTimeout: Double = 600
        @Option(name: .long, help: "Seconds a site has for each later stage.") var stageTimeout: Double = 60
        @Option(name: .long, help: "Seconds to wait for every site to join before starting with those that did.") var joinTimeout: Double = 300
        @Option(name: .long, help: "Push the final global model to the registry as NAME.") var push: String?
        @Flag(name: .long, help: "With --push, push every aggregated round, each version's parent the one before.") var pushEveryRound = false
        @Option(name: .long, help: "With --push, another identity (NAME.pub) that may decrypt; repeat for several.") var recipient: [String] = []
        @Option(name: .long, help: "With --push, point this alias at the final version.") var alias: String?
        @Option(name: .long, help: "Also write the final global model here as a checkpoint.") var out: String?
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Flag(name: .long, help: "Print the final report as JSON.") var json = false

        func validate() throws {
            if site.isEmpty { throw ValidationError("enrol the sites with --site NAME.pub (one per site)") }
            if pushEveryRound && push == nil { throw ValidationError("--push-every-round needs --push NAME") }
        }

        func run() async throws {
            let address = try listening.address(listen, exposing: "the global model")
            // A certificate that does not load is refused now, before any site trains.
            let server = try httpServer(tls: address.tls)
            var configuration = try federation.configuration()
            configuration.trainTimeout = trainTimeout
            configuration.stageTimeout = stageTimeout
            configuration.joinTimeout = joinTimeout
            try Federation.check { () throws(FederatedError) in try configuration.validate() }
            let recipe = try Federation.recipe(self.recipe)
            let sites = try site.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            if let push { _ = try ModelReference(parsing: push) }
            // Fail early on registry and identity problems, before any site trains.
            let store = await push == nil ? nil : try registry.open()
            let recipients = try recipient.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let signer = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity), useAgent: false)
            let core = try Federation.check { () throws(FederatedError) in
                try CoordinatorCore(configuration: configuration, recipe: recipe, identity: signer, sites: sites)
            }
            core.log = { Federation.line($0) }
            let publisher = store.map { RoundPublisher(store: $0, name: push!, signer: signer, core: core, recipients: recipients, recipe: recipe) }
            let everyRound = pushEveryRound
            let coordinator = Coordinator(core: core) { record in
                guard everyRound, record.outcome == "ok", let publisher else { return }
                do {
                    try await publisher.publish(record, final: false)
                } catch {
                    Federation.line("round \(record.round) not pushed: \(error)")
                }
            }
            let logger = {
                var logger = Logger(label: "coffer.fl")
                logger.logLevel = .warning
                return logger
            }()
            Federation.line(
                "coordinating \(sites.count) sites on \(address.url) (session \(core.sessionHex.prefix(8)), \(configuration.mechanism))"
            )
            let records: [RoundRecord]
            do {
                records = try await runFederation(coordinator: coordinator, host: address.host, port: address.port, server: server, logger: logger)
            } catch let error as FederatedError {
                throw CLIError(error.description)
            }
            try await report(records, core: core, publisher: publisher)
        }

        private func report(_ records: [RoundRecord], core: CoordinatorCore, publisher: RoundPublisher?) async throws {
            let updates = records.filter { $0.kind == .update }
            let aggregated = updates.filter { $0.outcome == "ok" }
            let privacy = try Federation.check { () throws(FederatedError) in try core.privacyReport() }
            var pushed: String?
            if let publisher, let last = aggregated.last {
                // The final model: already pushed when every round is; otherwise pushed now.
                pushed = try await publisher.publish(last, final: true)
            }
            if let out, let standardisation = core.standardisation {
                try Federation.writeCheckpoint(
                    core.globalModel,
                    recipe: core.recipe,
                    standardisation: standardisation,
                    privacy: RoundPublisher.report(core, privacy),
                    to: out
                )
            }
            if json {
                var fields: [String: JSONValue] = [
                    "session": .string(core.sessionHex), "mechanism": .string(core.configuration.mechanism),
                    "rounds": .array(
                        updates.map { r in
                            .object([
                                "round": .number(Double(r.round)), "outcome": .string(r.outcome), "reason": JSONValue(r.reason),
                                "sampled": .number(Double(r.sampled.count)), "sites": .number(Double(r.participants.count)),
                                "seconds": .number(r.seconds),
                                "participants": .array(r.participants.map { .string($0) }),
                            ])
                        }
                    ),
                    "aggregated": .number(Double(aggregated.count)), "pushed": JSONValue(pushed),
                ]
                if let privacy {
                    fields["epsilon"] = .number(privacy.epsilon)
                    fields["epsilon_rdp"] = .number(privacy.epsilonRDP)
                    fields["epsilon_pld"] = privacy.epsilonPLD.map { .number($0) } ?? .null
                    fields["accountant"] = .string(privacy.accountant)
                    fields["delta"] = .number(core.configuration.dp!.delta)
                    fields["noise_multiplier"] = .number(core.configuration.dp!.noiseMultiplier)
                    fields["sample_rate"] = .number(core.configuration.sampleRate)
                    fields["clip_norm"] = .number(core.configuration.dp!.clipNorm)
                    fields["rounds_accounted"] = .number(Double(core.roundsAccounted))
                }
                JSONOutput.print(.object(fields))
            } else {
                print("\(aggregated.count) of \(updates.count) rounds aggregated (\(core.configuration.mechanism))")
                for r in updates where r.outcome != "ok" { print("round \(r.round) \(r.outcome): \(r.reason ?? "")") }
                if let privacy, let dp = core.configuration.dp {
                    print(
                        "site-level privacy: (\(String(format: "%.4f", privacy.epsilon)), \(dp.delta))-DP by \(privacy.accountant.uppercased()) accounting; "
                            + "q \(core.configuration.sampleRate), sigma \(dp.noiseMultiplier), \(core.roundsAccounted) rounds, S \(dp.clipNorm)"
                    )
                }
                if let pushed { print("pushed \(pushed)") }
                if let out { print("wrote \(out)/\(Checkpoint.modelFile) and \(out)/\(Checkpoint.privacyFile)") }
            }
        }
    }
}

/// Pushes global models as registry versions: privacy metadata from the site-level accountant, lineage to the round
/// before, the participating sites' key IDs in the message and tags. The checkpoint is written to a private temporary
/// directory, sealed into the registry, and removed.
final class RoundPublisher: @unchecked Sendable {
    let store: Registry
    let name: String
    let signer: UnlockedIdentity
    let core: CoordinatorCore
    let recipients: [PublicIdentity]
    let recipe: FederatedRecipe
    private var lastVersion: String?
    private var lastRound: Int?

    init(store: Registry, name: String, signer: UnlockedIdentity, core: CoordinatorCore, recipients: [PublicIdentity], recipe: FederatedRecipe) {
        self.store = store
        self.name = name
        self.signer = signer
        self.core = core
        self.recipients = recipients
        self.recipe = recipe
    }

    /// The checkpoint's privacy report: DP-FedAvg's site-level guarantee, or none.
    static func report(_ core: CoordinatorCore, _ privacy: SiteLevelPrivacy.Report?) -> PrivacyReport {
        PrivacyReport(
            mechanism: privacy == nil ? "none" : "dp-fedavg",
            epsilon: privacy?.epsilon,
            epsilonRDP: privacy?.epsilonRDP,
            epsilonPLD: privacy?.epsilonPLD,
            delta: core.configuration.dp?.delta,
            accountant: privacy?.accountant,
            order: privacy?.order,
            maxGradNorm: core.configuration.dp?.clipNorm,
            noiseMode: privacy == nil ? nil : "standard",
            datasetSize: core.population.count,
            segments: privacy.map { [$0.segment] } ?? [],
            pruning: .init(method: "global_magnitude", targetRatio: 0, achievedSparsity: core.globalModel.weightSparsity)
        )
    }

    /// Pushes the model of `record` (when `final`, only if it was not pushed already); returns `NAME:VERSION`.
    @discardableResult
    func publish(_ record: RoundRecord, final: Bool) async throws -> String? {
        if final, lastRound == record.round, let lastVersion { return "\(name):\(lastVersion)" }
        let configuration = core.configuration
        let privacy: SiteLevelPrivacy.Report? =
            try configuration.dp.map { dp in
                try Federation.check { () throws(FederatedError) in
                    try SiteLevelPrivacy.epsilon(
                        sampleRate: configuration.sampleRate,
                        noiseMultiplier: dp.noiseMultiplier,
                        rounds: record.roundsAccounted,
                        delta: dp.delta
                    )
                }
            }
        guard let standardisation = core.standardisation else { return nil }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-fl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let model = ModelVector.model(recipe.initialModel(), with: record.model)
        try Federation.writeCheckpoint(model, recipe: recipe, standardisation: standardisation, privacy: Self.report(core, privacy), to: directory)

        var request = PushRequest(model: name, paths: [directory])
        var metadata = PrivacyMetadata()
        metadata.mechanism = privacy == nil ? "none" : "dp-fedavg"
        metadata.privacyUnit = privacy == nil ? nil : "site"
        metadata.epsilon = privacy?.epsilon
        metadata.delta = configuration.dp?.delta
        metadata.accountant = privacy?.accountant
        metadata.noiseMultiplier = configuration.dp?.noiseMultiplier
        metadata.clippingNorm = configuration.dp?.clipNorm
        metadata.samplingRate = configuration.dp == nil ? nil : configuration.sampleRate
        metadata.steps = record.roundsAccounted
        metadata.datasetSize = privacy == nil ? nil : core.population.count
        metadata.segments = privacy.map { [$0.segment] } ?? []
        metadata.pruningMethod = "global_magnitude"
        metadata.pruningRatio = 0
        metadata.achievedSparsity = model.weightSparsity
        request.privacy = metadata
        request.trainingConfigDigest = "sha256:" + recipe.digest
        request.recipients = recipients
        if let lastVersion { request.parent = try ModelReference(name: name, selector: .version(lastVersion)) }
        request.tags = [
            "fl_mechanism": configuration.mechanism, "fl_round": "\(record.round)", "fl_rounds": "\(configuration.rounds)",
            "fl_sites_per_round": "\(record.participants.count)", "fl_sampled": "\(record.sampled.count)", "fl_sites": "\(core.population.count)",
            "fl_session": core.sessionHex,
        ]
        request.message =
            "\(configuration.mechanism) round \(record.round) of \(configuration.rounds), session \(core.sessionHex.prefix(8)): "
            + "\(record.participants.count) sites (key IDs \(record.participants.joined(separator: ", ")))"
        let result = try await store.push(request, publisher: signer)
        lastVersion = result.version
        lastRound = record.round
        Federation.line("pushed \(result.model):\(result.version) (round \(record.round)) sha256:\(result.digest)")
        return "\(result.model):\(result.version)"
    }
}

// MARK: - fl join

extension Coffer.Federated {
    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "join",
            abstract: "Take part in a federation as a site: train on your own CSV, send only signed keys, encrypted shares and masked updates."
        )
        @Option(name: .long, help: "The coordinator's URL (https://HOST:PORT, or http:// on loopback).") var coordinator: String
        @Flag(name: .long, help: "Allow a plain http coordinator beyond loopback.") var insecure = false
        @Option(name: .long, help: "PEM certificates to trust for an https coordinator instead of the system's (default: $COFFER_CA_CERT).")
        var caCert: String?
        @Option(name: .long, help: "The coordinator's public identity (NAME.pub): every task must carry its signature.") var coordinatorKey: String
        @Option(name: .long, help: "The shared training recipe (the same as the coordinator's).") var recipe: String
        @Option(name: .long, help: "Your own CSV (replaces the recipe's data).") var data: String
        @Option(
            name: .long,
            help: "Your identity (NAME.key): signs every message you send (default: $COFFER_IDENTITY, else identity in the config file)."
        ) var identity: String?
        @Option(name: .long, help: "Accept only rosters of these sites (NAME.pub); repeat. Without it, the coordinator's roster is trusted.")
        var peer: [String] = []
        @Option(name: .long, help: "Rounds you expect to take part in (spreads a local target_epsilon).") var rounds: Int = 5
        @Option(name: .long, help: "Write the final global model here as a checkpoint.") var out: String?
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Flag(name: .long, help: "Print the final report as JSON.") var json = false

        func run() async throws {
            // The same trust as every other client of a Coffer server: --ca-cert, COFFER_CA_CERT, the config file's ca_cert.
            var tls: TLSConfiguration?
            if let path = caCert ?? UserConfig.value(.caCert) {
                do { tls = try clientTLS(trusting: path) } catch { throw CLIError(error.description) }
            }
            let client = try Federation.check { () throws(FederatedError) in
                try FederationClient(url: coordinator, tls: tls, plainHTTPOffLoopback: insecure)
            }
            let recipe = try Federation.recipe(self.recipe)
            let coordinatorIdentity = try PublicIdentity(contentsOf: coordinatorKey)
            let peers = peer.isEmpty ? nil : try peer.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let local = try Federation.check { () throws(FederatedError) in try LocalData(path: data, recipe: recipe) }
            let unlocked = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity), useAgent: false)
            let site: FederatedSite
            do {
                site = try FederatedSite(
                    identity: unlocked,
                    coordinator: coordinatorIdentity,
                    recipe: recipe,
                    data: local,
                    rounds: rounds,
                    peers: peers
                )
            } catch {
                throw CLIError(error.description)
            }
            let quiet = json
            site.log = { line in if !quiet { print(line) } else { Federation.line(line) } }
            let runner = SiteRunner(site: site, client: client)
            let summary: String
            do { summary = try await runner.run() } catch { throw CLIError(error.description) }
            if let out, let model = site.latestModel, let standardisation = site.standardisation {
                let none = PrivacyReport(
                    mechanism: site.mechanism == "dp-fedavg" ? "dp-fedavg" : "none",
                    epsilon: nil,
                    epsilonRDP: nil,
                    epsilonPLD: nil,
                    delta: nil,
                    accountant: nil,
                    order: nil,
                    maxGradNorm: nil,
                    noiseMode: nil,
                    datasetSize: local.trainingCount,
                    segments: [],
                    pruning: .init(method: "global_magnitude", targetRatio: 0, achievedSparsity: model.weightSparsity)
                )
                try Federation.writeCheckpoint(model, recipe: recipe, standardisation: standardisation, privacy: none, to: out)
            }
            let epsilon = site.recordLevelEpsilon
            if json {
                JSONOutput.print(
                    .object([
                        "site": .string(site.keyID), "summary": .string(summary), "rounds_trained": .number(Double(site.roundsTrained)),
                        "record_level_epsilon": epsilon.map { .number($0) } ?? .null,
                        "metrics": .object(
                            Dictionary(uniqueKeysWithValues: site.latestMetrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) })
                        ),
                    ])
                )
            } else {
                print("federation over: \(summary); this site trained in \(site.roundsTrained) rounds")
                if let epsilon, let delta = recipe.recipe.delta {
                    print("record-level privacy at this site (local DP-SGD): (\(String(format: "%.4f", epsilon)), \(delta))-DP")
                }
                for metric in site.latestMetrics {
                    print("final model, local validation \(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))")
                }
                if let out { print("wrote \(out)/\(Checkpoint.modelFile)") }
            }
        }
    }
}

// MARK: - fl epsilon

extension Coffer.Federated {
    struct Epsilon: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "epsilon",
            abstract: "Site-level epsilon of DP-FedAvg after ROUNDS rounds (RDP and PLD accountants)."
        )
        @Option(name: .long, help: "q: the probability each site joins a round.") var sampleRate: Double
        @Option(name: .long, help: "sigma: noise std over the clip norm.") var noiseMultiplier: Double
        @Option(name: .long, help: "Rounds.") var rounds: Int
        @Option(name: .long, help: "delta.") var delta: Double
        @Option(name: .long, help: "rdp, pld, or both (the smaller epsilon).") var accountant: String = "both"
        @Flag(name: .long, help: "Print JSON: {epsilon, epsilon_rdp, epsilon_pld, order, accountant, delta}.") var json = false

        func run() throws {
            guard ["rdp", "pld", "both"].contains(accountant) else { throw CLIError("unknown accountant '\(accountant)': use rdp, pld or both") }
            var report = try Federation.check { () throws(FederatedError) in
                try SiteLevelPrivacy.epsilon(
                    sampleRate: sampleRate,
                    noiseMultiplier: noiseMultiplier,
                    rounds: rounds,
                    delta: delta,
                    withPLD: accountant != "rdp"
                )
            }
            if accountant == "pld" {
                guard let pld = report.epsilonPLD else { throw CLIError("the PLD grid for this epsilon is too large: use --accountant rdp") }
                report.epsilon = pld
                report.accountant = "pld"
            }
            if json {
                JSONOutput.print(
                    .object([
                        "epsilon": .number(report.epsilon), "epsilon_rdp": .number(report.epsilonRDP),
                        "epsilon_pld": report.epsilonPLD.map { .number($0) } ?? .null, "order": .number(report.order),
                        "accountant": .string(report.accountant), "delta": .number(delta),
                    ])
                )
            } else {
                print(
                    "site-level epsilon \(report.epsilon) at delta \(delta) (\(report.accountant); RDP \(report.epsilonRDP) at order \(report.order))"
                )
            }
        }
    }
}

// MARK: - fl simulate

extension Coffer.Federated {
    struct Simulate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "simulate",
            abstract: "Run a whole federation in one process (no HTTP) on CSV shards, securely or as plain FedAvg: for benchmarks."
        )
        @Option(name: .long, help: "The training recipe.") var recipe: String
        @Option(name: .long, help: "One site's CSV; repeat for each site.") var shard: [String] = []
        @Option(name: .long, help: "Or: one CSV split across --sites sites.") var data: String?
        @Option(name: .long, help: "With --data: the number of sites.") var sites: Int = 10
        @Option(name: .long, help: "With --data: iid (row i to site i mod N), or a column name (rows sorted by it, cut into N runs).")
        var split: String = "iid"
        @OptionGroup var federation: FederationOptions
        @Flag(name: .long, help: "Plain FedAvg: updates in the clear, no secure aggregation (the baseline).") var plain = false
        @Option(name: .long, help: "Fraction of each round's sites that drop out before sending their masked input.") var dropout: Double = 0
        @Option(name: .long, help: "Evaluate the final model on this labelled CSV.") var evaluate: String?
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() throws {
            let recipe = try Federation.recipe(self.recipe)
            var configuration = try federation.configuration()
            configuration.joinTimeout = 0
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-fl-sim-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let paths = shard.isEmpty ? try splitData(into: scratch) : shard
            let data = try paths.map { path in try Federation.check { () throws(FederatedError) in try LocalData(path: path, recipe: recipe) } }
            guard dropout >= 0, dropout < 1 else { throw CLIError("--dropout must be in [0, 1)") }
            var rounds: [JSONValue] = []
            let model: MultiTaskModel
            let standardisation: SharedStandardisation
            var privacy = JSONValue.null
            let start = ContinuousClock.now
            if plain {
                let federation = try Federation.check { () throws(FederatedError) in
                    try PlainFederation(recipe: recipe, sites: data, configuration: configuration)
                }
                try Federation.check { () throws(FederatedError) in try federation.run() }
                rounds = federation.roundSeconds.enumerated().map {
                    .object(["round": .number(Double($0 + 1)), "seconds": .number($1), "outcome": .string("ok")])
                }
                model = federation.globalModel
                standardisation = federation.standardisation!
            } else {
                let coordinator = UnlockedIdentity(try Identity.generate(name: "coordinator"))
                let sites = try data.enumerated().map { i, local in
                    try Federation.check { () throws(FederatedError) in
                        try FederatedSite(
                            identity: UnlockedIdentity(try! Identity.generate(name: "site\(i)")),
                            coordinator: coordinator.publicIdentity,
                            recipe: recipe,
                            data: local,
                            rounds: configuration.rounds
                        )
                    }
                }
                let core = try Federation.check { () throws(FederatedError) in
                    try CoordinatorCore(configuration: configuration, recipe: recipe, identity: coordinator, sites: sites.map(\.publicIdentity))
                }
                let federation = LocalFederation(core: core, sites: sites)
                let fraction = dropout
                if fraction > 0 {
                    // The same sites drop in every round: the first ceil(fraction * n) of the roster.
                    let dropping = Set(sites.prefix(Int((fraction * Double(sites.count)).rounded(.up))).map(\.keyID))
                    federation.dropout = { round, site in round > 0 && dropping.contains(site) ? .masked : nil }
                }
                let records = try Federation.check { () throws(FederatedError) in try federation.run() }
                for record in records where record.kind == .update {
                    let stages = federation.stageSeconds[record.round] ?? [:]
                    rounds.append(
                        .object([
                            "round": .number(Double(record.round)), "seconds": .number(record.seconds), "outcome": .string(record.outcome),
                            "reason": JSONValue(record.reason), "sites": .number(Double(record.participants.count)),
                            "stages": .object(Dictionary(uniqueKeysWithValues: stages.map { ($0.key.rawValue, JSONValue.number($0.value)) })),
                        ])
                    )
                }
                model = core.globalModel
                standardisation = core.standardisation!
                if let report = try Federation.check({ () throws(FederatedError) in try core.privacyReport() }), let dp = configuration.dp {
                    privacy = .object([
                        "epsilon": .number(report.epsilon), "epsilon_rdp": .number(report.epsilonRDP),
                        "epsilon_pld": report.epsilonPLD.map { .number($0) } ?? .null, "order": .number(report.order),
                        "rounds_accounted": .number(Double(core.roundsAccounted)), "sample_rate": .number(configuration.sampleRate),
                        "noise_multiplier": .number(dp.noiseMultiplier), "delta": .number(dp.delta),
                    ])
                }
            }
            let elapsed = ContinuousClock.now - start
            var metrics: [TaskMetric] = []
            var losses: [String: Double] = [:]
            if let evaluate {
                let preprocessing = Preprocessing(
                    features: recipe.recipe.features,
                    means: standardisation.means,
                    standardDeviations: standardisation.standardDeviations,
                    tasks: recipe.recipe.tasks
                )
                let table = try CSVTable(contentsOf: evaluate)
                metrics = try TrainingRun.evaluate(model, preprocessing: preprocessing, labelled: table)
                losses = try Federation.check { () throws(FederatedError) in
                    try Evaluation.losses(model, preprocessing: preprocessing, labelled: table)
                }
            }
            if json {
                JSONOutput.print(
                    .object([
                        "mode": .string(plain ? "plain" : "secure"), "sites": .number(Double(data.count)),
                        "parameters": .number(Double(model.parameterCount)),
                        "rounds": .array(rounds),
                        "seconds": .number(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18),
                        "metrics": .object(Dictionary(uniqueKeysWithValues: metrics.map { ("\($0.task).\($0.metric)", JSONValue.number($0.value)) })),
                        "privacy": privacy, "losses": .object(losses.mapValues { .number($0) }),
                    ])
                )
            } else {
                print("\(plain ? "plain" : "secure") FedAvg, \(data.count) sites, \(model.parameterCount) parameters")
                for case .object(let r) in rounds {
                    print(
                        "round \(Int(r["round"]?.numberValue ?? 0)): \(r["outcome"]?.stringValue ?? "") in \(String(format: "%.3f", r["seconds"]?.numberValue ?? 0)) s"
                    )
                }
                for metric in metrics { print("\(metric.task) \(metric.metric) \(String(format: "%.4f", metric.value))") }
                for (task, loss) in losses.sorted(by: { $0.key < $1.key }) { print("\(task) loss \(String(format: "%.4f", loss))") }
            }
        }

        /// Writes `--data` split into `--sites` shards under `directory`.
        private func splitData(into directory: String) throws -> [String] {
            guard let data else { throw CLIError("give the sites' data: --shard FILE (one per site) or --data CSV --sites N") }
            guard sites >= 3 else { throw CLIError("--sites must be at least 3") }
            let text = String(decoding: try FileBytes.read(data), as: UTF8.self)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
            guard let header = lines.first else { throw CLIError("\(data) is empty") }
            var rows = Array(lines.dropFirst())
            if split != "iid" {
                guard let column = header.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }).firstIndex(of: split) else {
                    throw CLIError("--split \(split): no such column in \(data)")
                }
                let keyed = rows.enumerated().map { i, row in
                    (Double(row.split(separator: ",")[column].trimmingCharacters(in: .whitespaces)) ?? 0, i, row)
                }
                rows = keyed.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.map(\.2)
            }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try (0..<sites).map { s in
                let mine: [Substring] =
                    split == "iid"
                    ? stride(from: s, to: rows.count, by: sites).map { rows[$0] }
                    : Array(rows[(s * rows.count / sites)..<((s + 1) * rows.count / sites)])
                let path = "\(directory)/site\(s).csv"
                try FileBytes.write(Array(([header] + mine).joined(separator: "\n").utf8) + [0x0A], to: path, mode: 0o600, overwrite: true)
                return path
            }
        }
    }
}
