import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

extension Coffer {
    struct Push: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "push",
            abstract: "Seal, sign and store a new version of a model (files or a model directory)."
        )

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME or NAME:VERSION (VERSION defaults to the next integer).") var reference: String
        @Argument(help: "Files, or a model directory whose sub-folders are kept.") var paths: [String]
        @Option(
            name: .long,
            help: "Your private identity (NAME.key): signs the version (default: $COFFER_IDENTITY, else identity in the config file)."
        ) var identity: String?
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Option(name: .long, help: "Privacy metadata JSON (a checkpoint's privacy.json or the flat shape of docs/FORMAT.md).")
        var privacy: String?
        @Option(name: .long, help: "Privacy budget epsilon.") var epsilon: Double?
        @Option(name: .long, help: "Privacy delta, in [0, 1).") var delta: Double?
        @Option(name: .long, help: "Privacy mechanism, e.g. dp-sgd.") var mechanism: String?
        @Option(name: .long, help: "DP-SGD noise multiplier.") var noiseMultiplier: Double?
        @Option(name: .long, help: "DP-SGD sampling rate.") var samplingRate: Double?
        @Option(name: .long, help: "DP-SGD steps.") var steps: Int?
        @Option(name: .long, help: "Target pruning ratio.") var pruningRatio: Double?
        @Option(name: .long, help: "Point this alias at the new version.") var alias: String?
        @Option(name: .long, help: "A tag KEY=VALUE; repeat for several.") var tag: [String] = []
        @Option(name: .long, help: "Parent version NAME:VERSION (lineage).") var parent: String?
        @Option(name: .long, help: "Dataset identifier (lineage).") var dataset: String?
        @Option(name: .long, help: "Dataset digest (lineage).") var datasetDigest: String?
        @Option(name: .long, help: "Training configuration digest (lineage).") var trainingConfigDigest: String?
        @Option(name: .long, help: "Another identity (NAME.pub) that may decrypt; repeat for several.") var recipient: [String] = []
        @Option(name: .long, help: "A message recorded with the version.") var message: String?
        @Option(name: .long, help: "Accountant history of a model trained elsewhere (JSON; docs/FORMAT.md): epsilon is recomputed from it.")
        var privacyFrom: String?
        @Flag(name: .long, help: "Push past the dataset's privacy budget (admins only; audited).") var overrideBudget = false
        @OptionGroup var remote: RemoteOptions
        @Option(name: .long, help: "With --registry: a key of the registry you were given (registry.pub); its key chain must hold it.")
        var registryKey: String?

        func run() async throws {
            let target = try ModelReference(parsing: reference)
            var request = PushRequest(model: target.name, paths: paths)
            switch target.selector {
            case .latest: break
            case .version(let version): request.version = version
            case .alias: throw CLIError("push takes NAME or NAME:VERSION, not an alias (use --alias)")
            }
            if let privacy {
                request.privacy = try PrivacyMetadata(contentsOf: privacy)
            } else if privacyFrom == nil, let checkpoint = Self.checkpointPrivacyFile(paths) {
                request.privacy = try PrivacyMetadata(contentsOf: checkpoint)  // a Coffer checkpoint carries its own claims
            }
            if let epsilon { request.privacy.epsilon = epsilon }
            if let delta { request.privacy.delta = delta }
            if let mechanism { request.privacy.mechanism = mechanism }
            if let noiseMultiplier { request.privacy.noiseMultiplier = noiseMultiplier }
            if let samplingRate { request.privacy.samplingRate = samplingRate }
            if let steps { request.privacy.steps = steps }
            if let pruningRatio { request.privacy.pruningRatio = pruningRatio }
            if let privacyFrom { request.privacy = try PrivacyHistory(contentsOf: privacyFrom).applied(to: request.privacy) }
            request.overrideBudget = overrideBudget
            request.alias = alias
            for pair in tag {
                guard let equals = pair.firstIndex(of: "=") else { throw CLIError("--tag takes KEY=VALUE, got '\(pair)'") }
                request.tags[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
            }
            request.parent = try parent.map { text throws(CofferRegistryError) in try ModelReference(parsing: text) }
            request.datasetID = dataset
            request.datasetDigest = datasetDigest
            request.trainingConfigDigest = trainingConfigDigest
            request.recipients = try recipient.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            request.message = message
            if let client = try remote.client(over: registry) {
                let given = try registryKey.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                let outbox = try PushOutbox.directory(for: client.baseURL, request: request)
                let publisher = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
                let pushed = try await client.push(request, publisher: publisher.identity, registryKey: given, outbox: outbox)
                print("pushed \(pushed.model):\(pushed.version) sha256:\(pushed.digest) to \(client.baseURL)")
                let signer = publisher.publicIdentity
                if try await client.ledger(registryKey: given).state.trusted[signer.keyID] == nil {
                    FileDescriptorStream.standardError.writeLine(
                        "coffer: warning: \(signer.name) (\(signer.keyID)) is not a trusted signer of this registry: pull and verify of this version are refused until an admin trusts its key"
                    )
                }
                return
            }
            // The files are sealed while the registry opens and the identity unlocks: a warm 1 MiB push through the
            // runner 16.2 -> 14.5 ms, 16 MiB 42.3 -> 41.8 ms (there the sealing's own threads keep both cores busy).
            // The configuration is read before the sealing starts (a broken file ends the process), its errors reported
            // after the registry's, as before.
            let configuredIdentity = UserConfig.identity(identity)
            let sealing = Registry.startSealing(request, home: registry.resolvedHome)
            let store: Registry
            let publisher: UnlockedIdentity
            do {
                store = try await registry.open()
                publisher = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(configuredIdentity))
            } catch {
                await sealing?.cancel()
                throw error
            }
            let progress = ProgressBar(label: "pushing", total: nil)
            let result = try await store.push(request, publisher: publisher, sealing: sealing, progress: progress?.reporter)
            progress?.finish()
            print("pushed \(result.model):\(result.version) sha256:\(result.digest) (\(result.files) files, \(ProgressBar.format(result.bytes)))")
            // A version nobody trusts its signer for is stored but will not pull or verify: say so now, not at pull.
            let signer = publisher.publicIdentity
            if try await store.trustedName(signer.keyID) == nil {
                FileDescriptorStream.standardError.writeLine(
                    "coffer: warning: \(signer.name) (\(signer.keyID)) is not a trusted signer of this registry: pull and verify of this version are refused until an admin runs coffer trust add \(signer.name).pub"
                )
            }
        }

        /// The `privacy.json` of a single pushed directory, when it has one (a `coffer train` checkpoint).
        static func checkpointPrivacyFile(_ paths: [String]) -> String? {
            guard paths.count == 1 else { return nil }
            var isDirectory: ObjCBool = false
            let candidate = "\(paths[0])/privacy.json"
            guard FileManager.default.fileExists(atPath: paths[0], isDirectory: &isDirectory), isDirectory.boolValue,
                FileManager.default.fileExists(atPath: candidate)
            else { return nil }
            return candidate
        }
    }

    struct Pull: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pull",
            abstract: "Verify and decrypt a version into a directory; nothing is left there if any check fails."
        )

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
        @Option(
            name: .long,
            help:
                "Your private identity (NAME.key): must be a recipient of the version (default: $COFFER_IDENTITY, else identity in the config file)."
        ) var identity: String?
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Option(name: .long, help: "Directory to write the files into.") var out: String
        @OptionGroup var remote: RemoteOptions
        @Option(
            name: .long,
            help: "With --registry: only these publishers (NAME.pub; default: the registry's trusted signers, from its verified ledger)."
        )
        var trust: [String] = []
        @Option(name: .long, help: "With --registry: a key of the registry you were given (registry.pub); its key chain must hold it.")
        var registryKey: String?

        func run() async throws {
            let target = try ModelReference(parsing: reference)
            if let client = try remote.client(over: registry) { return try await pullRemote(target, from: client) }
            let store = try await registry.open()
            let reader = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
            let progress = ProgressBar(label: "pulling", total: nil)
            let result = try await store.pull(target, identity: reader, into: out, progress: progress?.reporter)
            progress?.finish()
            print(
                "pulled \(result.model):\(result.version) sha256:\(result.digest), signed by \(result.signer), \(result.files.count) files into \(out)"
            )
        }

        /// Pulls from a server, trusting it for nothing: the reference is resolved on the client's own replay of the
        /// registry's signed ledger, signatures are checked against `--trust` (or the ledger's trusted signers),
        /// digests locally.
        private func pullRemote(_ target: ModelReference, from client: CofferClient) async throws {
            let trusted = trust.isEmpty ? nil : try trust.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let given = try registryKey.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let reader = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
            let result = try await client.pull(target, identity: reader.identity, into: out, trusting: trusted, registryKey: given)
            print(
                "pulled \(result.model):\(result.version) sha256:\(result.digest) from \(client.baseURL), signed by \(result.signer), \(result.files.count) files into \(out)"
            )
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Check a version's signature, trust, blob digests and database rows (no key needed)."
        )

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
        @Flag(name: .long, help: "Also decrypt in memory and check plaintext digests (needs --identity).") var readData = false
        @Option(name: .long, help: "Your private identity (NAME.key), for --read-data (default: $COFFER_IDENTITY, else identity in the config file).")
        var identity: String?
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Flag(name: .long, help: "Print JSON.") var json = false
        @OptionGroup var remote: RemoteOptions
        @Option(
            name: .long,
            help: "With --registry: only these publishers (NAME.pub; default: the registry's trusted signers, from its verified ledger)."
        )
        var trust: [String] = []
        @Option(name: .long, help: "With --registry: a key of the registry you were given (registry.pub); its key chain must hold it.")
        var registryKey: String?

        func validate() throws {
            if readData && UserConfig.identity(identity) == nil { throw CLIError("--read-data needs --identity (or COFFER_IDENTITY)") }
        }

        func run() async throws {
            let target = try ModelReference(parsing: reference)
            let report: VerifyReport
            let client = try remote.client(over: registry)
            if let client {
                guard !readData else { throw CLIError("--read-data with --registry: pull the version, which checks every plaintext digest") }
                let trusted = trust.isEmpty ? nil : try trust.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                let given = try registryKey.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                report = try await client.verify(target, trusting: trusted, registryKey: given)
            } else {
                let store = try await registry.open()
                if readData, let identity = UserConfig.identity(identity) {
                    let reader = try passphraseOptions.unlockIdentity(at: identity)
                    report = try await store.verify(target, readingDataWith: reader)
                } else {
                    report = try await store.verify(target)
                }
            }
            if json {
                JSONOutput.print(encodable: VerifyAnswer(report, includeReadData: true))
            } else {
                let depth =
                    client != nil
                    ? "checked here against the ledger you replayed: reference, signature and blobs"
                    : report.readData ? "signature, trust, rows, blobs and plaintext" : "signature, trust, rows and blobs"
                print(
                    "ok \(report.model):\(report.version) sha256:\(report.digest) signed by \(report.signer): \(depth) verified (\(report.files) files)"
                )
            }
        }
    }
}
