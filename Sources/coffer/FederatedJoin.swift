import ArgumentParser
import CofferClient
import CofferCrypto
import CofferFederated
import CofferTraining
import Foundation
import NIOSSL

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
            // The same trust as every other client of a Coffer server: --ca-cert, COFFER_CA_CERT, the config file's ca_cert;
            // read for an https coordinator only, so that a bad URL is named first and plain http never needs the file.
            var tls: TLSConfiguration?
            if URLComponents(string: coordinator)?.scheme == "https", let path = caCert ?? UserConfig.value(.caCert) {
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
                    pruning: .init(method: "global_magnitude", targetRatio: 0, achievedSparsity: model.weightSparsity),
                    // Decided by the coordinator, which does not tell the site.
                    standardisation: nil,
                    batchSampling: nil
                )
                try Checkpoint.write(Federation.trained(model, recipe: recipe, standardisation: standardisation, privacy: none), to: out)
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
