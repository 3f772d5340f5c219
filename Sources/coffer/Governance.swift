import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

extension Coffer {
    struct Budget: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "budget",
            abstract: "Privacy budgets per dataset: every version trained on it is charged with its accountant history.",
            subcommands: [Set.self, Show.self]
        )

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "set", abstract: "Set a dataset's total (epsilon, delta) budget.")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Argument(help: "Dataset id (as pushed with --dataset, or the training data's file name).") var dataset: String
            @Option(name: .long, help: "Total epsilon.") var epsilon: Double
            @Option(name: .long, help: "Delta the budget is counted at.") var delta: Double
            @Option(
                name: .customLong("model"),
                help: "Only versions of this model may be charged (repeat for more): a name, NS/, or * for any (default: as before; any when new)."
            )
            var models: [String] = []
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                let scopes = models.isEmpty ? nil : models
                let status: BudgetStatus
                if let client = try remote.client(over: registry) {
                    status = try await client.setBudget(dataset: dataset, epsilon: epsilon, delta: delta, models: scopes)
                } else {
                    let store = try await registry.open()
                    try await store.setBudget(dataset: dataset, epsilon: epsilon, delta: delta, models: scopes, by: try acting.signer(in: store))
                    status = try await store.budget(dataset: dataset)
                }
                let charged = status.models.map { "; only \($0.joined(separator: ", ")) may be charged" } ?? ""
                print("budget of \(dataset): epsilon \(epsilon) at delta \(delta)\(charged)")
            }
        }

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "show", abstract: "Versions charged, spent and remaining epsilon.")
            @OptionGroup var registry: RegistryOptions
            @Argument(help: "Dataset id.") var dataset: String
            @Flag(name: .long, help: "Print JSON: {dataset, epsilon, delta, models, spent, remaining, versions}.") var json = false
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                let status: BudgetStatus =
                    if let client = try remote.client(over: registry) {
                        try await client.budget(dataset: dataset)
                    } else {
                        try await registry.open().budget(dataset: dataset)
                    }
                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys]
                    return print(String(decoding: try encoder.encode(status), as: UTF8.self))
                }
                print(
                    String(
                        format: "%@: budget epsilon %g at delta %g; spent %.4f (RDP composition); remaining %.4f",
                        status.dataset,
                        status.epsilon,
                        status.delta,
                        status.spent,
                        status.remaining
                    )
                )
                if let models = status.models { print("  only versions of \(models.joined(separator: ", ")) may be charged") }
                for charge in status.versions {
                    let notes = [charge.overrideBy.map { "over budget, by \($0)" }, charge.erased ? "erased" : nil].compactMap { $0 }
                    print(
                        String(format: "  %@:%@  epsilon %.4f alone", charge.model, charge.version, charge.epsilon)
                            + (notes.isEmpty ? "" : "  (\(notes.joined(separator: ", ")))")
                    )
                }
            }
        }
    }

    struct Policy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "policy",
            abstract: "Rules a version must meet to carry an alias (checked by alias set and push --alias).",
            subcommands: [Set.self, Show.self]
        )

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "set",
                abstract: "NAME@ALIAS (that alias) or NAME (every alias); no rule removes the policy."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Argument(help: "NAME@ALIAS or NAME.") var target: String
            @Option(name: .long, help: "Largest epsilon allowed.") var maxEpsilon: Double?
            @Option(name: .long, help: "Largest delta allowed.") var maxDelta: Double?
            @Option(name: .long, help: "Required signer (name or key ID).") var signer: String?
            @Option(name: .long, help: "Smallest target pruning ratio allowed.") var minPruningRatio: Double?
            @Flag(name: .long, help: "The version must be charged to a dataset with a budget.") var requireBudget = false
            @Flag(name: .long, help: "The version's signed evidence must hold a privacy audit whose lower bound is at most its epsilon.")
            var requireAudit = false
            @Option(name: .long, help: "Largest membership-attack AUC allowed in the version's signed evidence.")
            var maxMembershipAuc: Double?

            func run() async throws {
                let reference = try ModelReference(parsing: target)
                var alias: String? = nil
                switch reference.selector {
                case .latest: break
                case .alias(let name): alias = name
                case .version: throw CLIError("a policy applies to NAME@ALIAS or NAME, not to a version")
                }
                let rules = PolicyRules(
                    maxEpsilon: maxEpsilon,
                    maxDelta: maxDelta,
                    signer: signer,
                    minPruningRatio: minPruningRatio,
                    requireBudget: requireBudget ? true : nil,
                    requireAudit: requireAudit ? true : nil,
                    maxMembershipAUC: maxMembershipAuc
                )
                let store = try await registry.open()
                let violating = try await store.setPolicy(model: reference.name, alias: alias, rules: rules, by: try acting.signer(in: store))
                for alias in violating {
                    FileDescriptorStream.standardError.writeLine(
                        "coffer: \(alias) breaks the new rules: pull and session open refuse it until it is moved"
                    )
                }
                print(rules.isEmpty ? "removed the policy of \(target)" : "policy of \(target) set")
            }
        }

        struct Show: AsyncParsableCommand {
            /// One policy as `--json` prints it (an alias of `nil`: every alias of the model).
            struct ShownPolicy: Encodable {
                let alias: String?
                let rules: PolicyRules

                func encode(to encoder: any Encoder) throws {
                    var container = encoder.container(keyedBy: CodingKeys.self)
                    try container.encode(alias, forKey: .alias)  // null, not left out
                    try container.encode(rules, forKey: .rules)
                }

                enum CodingKeys: String, CodingKey { case alias, rules }
            }

            static let configuration = CommandConfiguration(commandName: "show", abstract: "The policies of a model.")
            @OptionGroup var registry: RegistryOptions
            @Argument(help: "NAME.") var model: String
            @Flag(name: .long, help: "Print JSON: [{alias, rules}].") var json = false

            func run() async throws {
                let policies = try await registry.open().policies(model: model)
                if json { return JSONOutput.print(encodable: policies.map { ShownPolicy(alias: $0.alias, rules: $0.rules) }) }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                for p in policies { print("\(model)@\(p.alias ?? "*")  \(String(decoding: try encoder.encode(p.rules), as: UTF8.self))") }
            }
        }
    }

    struct Erase: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "erase",
            abstract: "Crypto-shred a model or one version: every wrapped data key, then the blobs; the attestation stays as a tombstone."
        )
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var acting: OptionalIdentity
        @Argument(help: "NAME (every version) or NAME:VERSION.") var reference: String

        func run() async throws {
            let target = try ModelReference(parsing: reference)
            var version: String? = nil
            switch target.selector {
            case .latest: break
            case .version(let v): version = v
            case .alias: throw CLIError("erase takes NAME or NAME:VERSION, not an alias")
            }
            let store = try await registry.open()
            let erased = try await store.erase(model: target.name, version: version, by: try acting.signer(in: store))
            print("erased \(erased.joined(separator: ", ")): no key to them remains")
        }
    }

    struct Key: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "key", abstract: "The registry's own key.", subcommands: [Rotate.self])

        struct Rotate: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "rotate",
                abstract: "New registry key; every data key re-wrapped to it (no blob re-encrypted); the old key retired and useless."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Option(name: .long, help: "File holding the new key's passphrase (else the same source as the current one's).")
            var newPassphraseFile: String?
            @OptionGroup var newPassphrase: NewPassphraseOptions

            func run() async throws {
                let store = try await registry.open()
                let current = try acting.passphraseOptions.unlockIdentity(at: "\(store.home)/registry.key")
                let signer = try acting.resolved == nil ? Signer(current) : acting.signer(in: store)
                let passphrase =
                    if let newPassphraseFile {
                        try Passphrase.fromFile(newPassphraseFile)
                    } else {
                        try acting.passphraseOptions.passphrase(prompt: "Passphrase for the new registry key: ", confirm: true)
                    }
                try newPassphrase.check(passphrase)
                let fresh = try await store.rotateKey(current: current, passphrase: passphrase, by: signer)
                print("registry key rotated: \(current.publicIdentity.keyID) retired, \(fresh.keyID) current")
            }
        }
    }

    struct Rekey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rekey",
            abstract: "Re-encrypt a version under a fresh data key (after removing a recipient who may have kept the old one)."
        )
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var acting: OptionalIdentity
        @OptionGroup var registryKeyOptions: RegistryKeyOptions
        @Argument(help: "NAME:VERSION or NAME@ALIAS.") var reference: String

        func run() async throws {
            let store = try await registry.open()
            // Two keys, two passphrases: the admin's (--passphrase-file) and the registry's (--registry-passphrase-file).
            let registryKey = try registryKeyOptions.unlock(in: store, fallback: acting.passphraseOptions)
            let signer = try acting.resolved == nil ? Signer(registryKey) : acting.signer(in: store)
            let result = try await store.rekey(try ModelReference(parsing: reference), registryIdentity: registryKey, by: signer)
            print(
                "re-encrypted \(result.model):\(result.version) under a new data key, wrapped for \(result.recipients.count) key(s); its open sessions were revoked"
            )
            if !result.dropped.isEmpty { print("not re-wrapped (public identity unknown): \(result.dropped.joined(separator: ", "))") }
        }
    }

    struct Recipient: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "recipient",
            abstract: "Who holds a version's data key: add or remove a recipient's wrapped key.",
            subcommands: [Add.self, Remove.self]
        )

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "add",
                abstract: "Wrap the data key of NAME:VERSION (or every version of NAME) for PUB."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @OptionGroup var acting: ActingIdentity
            @Argument(help: "NAME or NAME:VERSION.") var reference: String
            @Argument(help: "The recipient's public identity (NAME.pub).") var publicIdentity: String

            func run() async throws {
                let store = try await registry.open()
                let recipient = try PublicIdentity(contentsOf: publicIdentity)
                let shared = try await store.addRecipient(
                    try ModelReference(parsing: reference),
                    recipient: recipient,
                    identity: try acting.unlock(passphraseOptions)
                )
                print("\(recipient.name) can now decrypt \(shared.joined(separator: ", "))")
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "remove",
                abstract: "Delete a recipient's wrapped keys of NAME:VERSION (or every version of NAME)."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Argument(help: "NAME or NAME:VERSION.") var reference: String
            @Argument(help: "The recipient's key ID, or its public identity file.") var recipient: String

            func run() async throws {
                let keyID = FileManager.default.fileExists(atPath: recipient) ? try PublicIdentity(contentsOf: recipient).keyID : recipient
                let store = try await registry.open()
                let removed = try await store.removeRecipient(
                    try ModelReference(parsing: reference),
                    keyID: keyID,
                    by: try acting.principal(in: store)
                )
                guard removed > 0 else { throw CLIError("\(keyID) holds no key of \(reference)") }
                print("removed \(removed) wrapped keys of \(keyID)")
            }
        }
    }
}
