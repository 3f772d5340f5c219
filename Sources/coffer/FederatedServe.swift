import ArgumentParser
import CofferCrypto
import CofferFederated
import CofferRegistry
import CofferServer
import CofferTraining
import Foundation
import Logging
import NIOSSL

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
        @Option(name: .long, help: "HOST:PORT to listen on (port 0: a free port, printed once coordinating).") var listen: String = "127.0.0.1:8450"
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
            let server = try httpServer(tls: address.tls, limits: address.clientLimits)
            var configuration = try federation.configuration()
            configuration.trainTimeout = trainTimeout
            configuration.stageTimeout = stageTimeout
            configuration.joinTimeout = joinTimeout
            try Federation.check { () throws(FederatedError) in try configuration.validate() }
            let recipe = try Federation.recipe(self.recipe)
            let sites = try site.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            if let push { _ = try ModelReference(parsing: push) }
            // Fail early on registry and identity problems, before any site trains.
            let store = await push == nil ? nil : try registry.open(serving: true)
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
            // Once the socket takes connections: a site started when this line appears can join at once.
            let session = "(session \(core.sessionHex.prefix(8)), \(configuration.mechanism))"
            let siteCount = sites.count
            let records: [RoundRecord]
            do {
                records = try await runFederation(
                    coordinator: coordinator,
                    host: address.host,
                    port: address.port,
                    server: server,
                    maximumConnections: address.clientLimits.maximumConnections,
                    logger: logger,
                    onListening: { port in Federation.line("coordinating \(siteCount) sites on \(address.url(port: port)) \(session)") }
                )
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
                let trained = Federation.trained(
                    core.globalModel,
                    recipe: core.recipe,
                    standardisation: standardisation,
                    privacy: RoundPublisher.report(core, privacy)
                )
                try Checkpoint.write(trained, to: out)
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
/// before, the participating sites' key IDs in the message and tags. The checkpoint is sealed into the registry from
/// memory, never written to disk.
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
            pruning: .init(method: "global_magnitude", targetRatio: 0, achievedSparsity: core.globalModel.weightSparsity),
            standardisation: StandardisationSource(method: core.configuration.standardisation == nil ? "nonprivate" : "public"),
            // Sites join rounds by libsodium's CSPRNG.
            batchSampling: "secret"
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
        let model = ModelVector.model(recipe.initialModel(), with: record.model)
        let trained = Federation.trained(model, recipe: recipe, standardisation: standardisation, privacy: Self.report(core, privacy))
        // Sealed from memory: the global model's plaintext is never written to disk.
        var request = PushRequest(model: name, contents: try Checkpoint.files(trained).map { .init(path: $0.name, bytes: $0.bytes) })
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
        // Where the checkpoint's standardisation came from: exact sums of the sites' features, released without DP even in
        // a DP run (--nonprivate-statistics), or public values (helper-47). Signed, where it was a tag before.
        metadata.standardisation = configuration.standardisation == nil ? "nonprivate" : "public"
        metadata.batchSampling = "secret"
        metadata.pruningMethod = "global_magnitude"
        metadata.pruningRatio = 0
        metadata.achievedSparsity = model.weightSparsity
        request.privacy = metadata
        request.trainingConfigDigest = "sha256:" + recipe.digest
        request.recipients = recipients
        if let lastVersion { request.parent = try ModelReference(name: name, selector: .version(lastVersion)) }
        request.tags = [
            "fl_mechanism": configuration.mechanism, "fl_round": "\(record.round)", "fl_rounds": "\(configuration.rounds)",
            "fl_sites": "\(core.population.count)", "fl_session": core.sessionHex,
        ]
        let heading = "\(configuration.mechanism) round \(record.round) of \(configuration.rounds), session \(core.sessionHex.prefix(8)): "
        if privacy == nil {
            request.tags["fl_sites_per_round"] = "\(record.participants.count)"
            request.tags["fl_sampled"] = "\(record.sampled.count)"
            request.message = heading + "\(record.participants.count) sites (key IDs \(record.participants.joined(separator: ", ")))"
        } else {
            // Which sites each round sampled, or how many, is not released with a DP model: the accountant's
            // amplification by Poisson sampling holds only while the sample stays secret (helper-47).
            request.message = heading + "the sampled sites are not named (DP-FedAvg's guarantee needs the sample kept secret)"
        }
        let result = try await store.push(request, publisher: signer)
        lastVersion = result.version
        lastRound = record.round
        Federation.line("pushed \(result.model):\(result.version) (round \(record.round)) sha256:\(result.digest)")
        return "\(result.model):\(result.version)"
    }
}
