import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

extension Coffer {
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init",
            abstract: "Create a registry: a directory with its database, blob store and own identity (passphrase-protected)."
        )

        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var newPassphrase: NewPassphraseOptions
        @Option(name: .long, help: "The owner's public identity (NAME.pub): its first principal, an admin. From then on every operation is checked.")
        var owner: String?
        @Option(
            name: .long,
            help:
                "Where metadata goes: sqlite (default) or postgres://USER@HOST:PORT/DB (password from PGPASSWORD or PGPASSFILE; a missing DB is created)."
        )
        var metadata = "sqlite"
        @Option(
            name: .long,
            help: "Where sealed blobs go: directory (default) or oci://HOST:PORT/REPOSITORY (credentials from the containers auth file)."
        )
        var blobs = "directory"

        func run() async throws {
            let backends = Backends(metadata: metadata, blobs: blobs)
            try backends.validate()
            let ownerIdentity = try owner.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let passphrase = try passphraseOptions.passphrase(prompt: "Passphrase for the registry identity: ", confirm: true)
            try newPassphrase.check(passphrase)
            let created = try await Registry.create(at: registry.resolvedHome, passphrase: passphrase, owner: ownerIdentity, backends: backends)
            let key = try await created.identity.keyID
            print(
                "registry created at \(created.home) (root key \(key), pinned)\(ownerIdentity.map { ", owned by \($0.name), a trusted signer" } ?? "")"
            )
        }
    }

    struct Trust: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "trust",
            abstract: "Manage the signers whose versions pull and verify accept.",
            subcommands: [Add.self, List.self, Remove.self, RegistryKey.self]
        )

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "add", abstract: "Trust a publisher's public identity (NAME.pub).")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @Argument(help: "Public identity file.") var publicIdentity: String
            @Option(name: .long, help: "The name to trust it under (default: the name it declares); one key per name.") var name: String?
            @Option(
                name: .long,
                help:
                    "Your private identity (NAME.key): an admin's (default: $COFFER_IDENTITY, else identity in the config file, else the registry's own key, registry.key)."
            )
            var identity: String?

            func run() async throws {
                let signer = try PublicIdentity(contentsOf: publicIdentity)
                let store = try await registry.open()
                let acting = Signer(try passphraseOptions.unlockIdentity(at: UserConfig.identity(identity) ?? "\(store.home)/registry.key"))
                let added = try await store.trust(signer, name: name, by: acting)
                print("\(added ? "trusted" : "already trusted:") \(name ?? signer.name) (\(signer.keyID))")
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List trusted signers.")
            @OptionGroup var registry: RegistryOptions
            @Flag(name: .long, help: "Print JSON: [{name, key_id}].") var json = false

            func run() async throws {
                let signers = try await registry.open().trustedSigners()
                if json {
                    JSONOutput.print(.array(signers.map { .object(["name": .string($0.name), "key_id": .string($0.keyID)]) }))
                } else {
                    for signer in signers { print("\(signer.keyID)  \(signer.name)") }
                }
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "remove", abstract: "Stop trusting a signer, by key ID or name.")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @Argument(help: "Key ID or name.") var signer: String
            @Option(
                name: .long,
                help:
                    "Your private identity (NAME.key): an admin's (default: $COFFER_IDENTITY, else identity in the config file, else the registry's own key, registry.key)."
            )
            var identity: String?

            func run() async throws {
                let store = try await registry.open()
                let acting = Signer(try passphraseOptions.unlockIdentity(at: UserConfig.identity(identity) ?? "\(store.home)/registry.key"))
                guard try await store.untrust(signer, by: acting) else { throw CLIError("no trusted signer \(signer)") }
                print("removed \(signer)")
            }
        }

        struct RegistryKey: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "registry",
                abstract: "Pin a served registry's root key (like SSH's known_hosts): its ledger is replayed and checked against it."
            )
            @Argument(help: "The registry's URL (as given to --registry).") var url: String
            @Option(name: .long, help: "A key of the registry you were given out of band (registry.pub): its chain must hold it.")
            var key: String?
            @Option(name: .long, help: "Bearer token (default: $COFFER_TOKEN).") var token: String?
            @Option(name: .long, help: "PEM certificates to trust for https (default: $COFFER_CA_CERT).") var caCert: String?

            func run() async throws {
                guard let base = URL(string: url), base.scheme != nil else { throw CLIError("\(url) is not a URL") }
                var options = RemoteOptions()
                options.registry = url
                options.token = token
                options.caCert = caCert
                guard let client = try options.client(over: RegistryOptions()) else { throw CLIError("\(url) is not a URL") }
                let given = try key.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                let ledger = try await client.ledger(registryKey: given)
                let current = ledger.state.currentKey?.keyID ?? "-"
                print(
                    "pinned \(ClientMemory.location(url: base)): root key \(ledger.state.registry), current key \(current), ledger at record \(ledger.state.seq)"
                )
            }
        }
    }
}

extension Coffer {
    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "migrate",
            abstract:
                "Bring a registry made by an earlier Coffer up to date (a signed ledger restating its tables), or copy it onto PostgreSQL and OCI.",
            discussion: """
                Without --to: gives a registry made before the ledger existed a signed ledger (its key's passphrase).
                With --to DEST --metadata postgres://... [--blobs oci://...]: copies this SQLite registry into the new home \
                directory DEST on those stores, the same registry (keys, ledger, audit log); this one is left as it is.
                """
        )
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Option(name: .long, help: "Copy the registry into this new (or empty) home directory, on --metadata and --blobs.")
        var to: String?
        @Option(name: .long, help: "With --to: postgres://USER@HOST:PORT/DB (password from PGPASSWORD or PGPASSFILE; a missing DB is created).")
        var metadata: String?
        @Option(name: .long, help: "With --to: oci://HOST:PORT/REPOSITORY, or directory (default: blobs in DEST).")
        var blobs = "directory"

        func run() async throws {
            if let to {
                guard let metadata else { throw CLIError("migrate --to needs --metadata postgres://...") }
                let report = try await Registry.migrate(
                    from: registry.resolvedHome,
                    to: to,
                    backends: Backends(metadata: metadata, blobs: blobs)
                )
                let rows = report.rows.values.reduce(0, +)
                print(
                    "copied \(registry.resolvedHome) to \(to): \(rows) rows in \(report.rows.count) tables, \(report.blobsSent) blobs sent "
                        + "(\(report.blobsPresent) there already), \(report.published) versions published"
                        + (report.uploadsLeft > 0 ? "; \(report.uploadsLeft) unfinished uploads left behind (their clients start again)" : "")
                )
                return
            }
            if metadata != nil || blobs != "directory" { throw CLIError("--metadata and --blobs go with --to DEST") }
            let store = try await registry.open()
            let key = try passphraseOptions.unlockIdentity(at: "\(store.home)/registry.key")
            let written = try await store.adoptLedger(registryKey: key)
            print("signed a ledger of \(written) records restating \(store.home); this client pinned its root \(key.publicIdentity.keyID)")
        }
    }

    struct Fsck: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fsck",
            abstract: "Check the whole registry: database integrity, every signature, row and blob. Exit 1 if anything is wrong."
        )

        @OptionGroup var registry: RegistryOptions
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() async throws {
            let report = try await registry.open().fsck()
            if json {
                JSONOutput.print(
                    .object([
                        "clean": .bool(report.isClean), "versions": .number(Double(report.versions)), "blobs": .number(Double(report.blobs)),
                        "problems": .array(report.problems.map { .string($0) }), "orphan_blobs": .number(Double(report.orphanBlobs.count)),
                        "temporary_files": .number(Double(report.temporaryFiles.count)),
                        "unpublished": .array(report.unpublished.map { .string($0) }),
                    ])
                )
            } else {
                for problem in report.problems { print("problem: \(problem)") }
                for version in report.unpublished { print("unpublished: \(version) has no OCI manifest yet (coffer gc writes it)") }
                print(
                    "\(report.isClean ? "clean" : "NOT CLEAN"): \(report.versions) versions, \(report.blobs) blobs, "
                        + "\(report.orphanBlobs.count) orphan blobs and \(report.temporaryFiles.count) temporary files for coffer gc"
                )
            }
            if !report.isClean { throw CLIError("fsck found \(report.problems.count) problem(s)") }
        }
    }

    struct GC: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Remove blobs no version references and leftovers of interrupted pushes."
        )

        @OptionGroup var registry: RegistryOptions
        @Option(name: .long, help: "Keep files younger than this many seconds (a push in progress writes blobs first).")
        var grace: Double = 900

        func run() async throws {
            let report = try await registry.open().gc(grace: grace)
            print(
                "removed \(report.removedBlobs) blobs and \(report.removedTemporaryFiles) temporary files, abandoned \(report.abandonedUploads) uploads "
                    + "(\(ProgressBar.format(report.reclaimedBytes)))"
                    + (report.republished > 0 ? "; published \(report.republished) missing OCI manifests" : "")
            )
        }
    }
}
