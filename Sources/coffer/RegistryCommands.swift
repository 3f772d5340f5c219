import ArgumentParser
import CofferCrypto
import CofferRegistry

extension Coffer {
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a registry: a directory with its database, blob store and own identity (passphrase-protected)."
        )

        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Option(name: .long, help: "The owner's public identity (NAME.pub): its first principal, an admin. From then on every operation is checked.")
        var owner: String?

        func run() throws {
            let ownerIdentity = try owner.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let passphrase = try passphraseOptions.passphrase(prompt: "Passphrase for the registry identity: ", confirm: true)
            let created = try Registry.create(at: registry.resolvedHome, passphrase: passphrase)
            if let ownerIdentity {
                try created.addPrincipal(name: ownerIdentity.name, identity: ownerIdentity, roles: [], by: nil)
            }
            print("registry created at \(created.home) (identity \(created.identity.keyID))\(ownerIdentity.map { ", owned by \($0.name)" } ?? "")")
        }
    }

    struct Trust: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage the signers whose versions pull and verify accept.",
            subcommands: [Add.self, List.self, Remove.self]
        )

        struct Add: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Trust a publisher's public identity (NAME.pub).")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @Argument(help: "Public identity file.") var publicIdentity: String
            @Option(name: .long, help: "Your private identity (NAME.key): an admin, in a registry with principals.") var identity: String?

            func run() throws {
                let signer = try PublicIdentity(contentsOf: publicIdentity)
                let store = try registry.open()
                let actor = try identity.map { path in try store.principal(for: try passphraseOptions.unlockIdentity(at: path)) }
                try store.trust(signer, by: actor)
                print("trusted \(signer.name) (\(signer.keyID))")
            }
        }

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List trusted signers.")
            @OptionGroup var registry: RegistryOptions
            @Flag(name: .long, help: "Print JSON: [{name, key_id}].") var json = false

            func run() throws {
                let signers = try registry.open().trustedSigners()
                if json {
                    JSONOutput.print(.array(signers.map { .object(["name": .string($0.name), "key_id": .string($0.keyID)]) }))
                } else {
                    for signer in signers { print("\(signer.keyID)  \(signer.name)") }
                }
            }
        }

        struct Remove: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Stop trusting a signer, by key ID or name.")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @Argument(help: "Key ID or name.") var signer: String
            @Option(name: .long, help: "Your private identity (NAME.key): an admin, in a registry with principals.") var identity: String?

            func run() throws {
                let store = try registry.open()
                let actor = try identity.map { path in try store.principal(for: try passphraseOptions.unlockIdentity(at: path)) }
                guard try store.untrust(signer, by: actor) else { throw CLIError("no trusted signer \(signer)") }
                print("removed \(signer)")
            }
        }
    }
}

extension Coffer {
    struct Fsck: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the whole registry: database integrity, every signature, row and blob. Exit 1 if anything is wrong."
        )

        @OptionGroup var registry: RegistryOptions
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() throws {
            let report = try registry.open().fsck()
            if json {
                JSONOutput.print(
                    .object([
                        "clean": .bool(report.isClean), "versions": .number(Double(report.versions)), "blobs": .number(Double(report.blobs)),
                        "problems": .array(report.problems.map { .string($0) }), "orphan_blobs": .number(Double(report.orphanBlobs.count)),
                        "temporary_files": .number(Double(report.temporaryFiles.count)),
                    ])
                )
            } else {
                for problem in report.problems { print("problem: \(problem)") }
                print(
                    "\(report.isClean ? "clean" : "NOT CLEAN"): \(report.versions) versions, \(report.blobs) blobs, "
                        + "\(report.orphanBlobs.count) orphan blobs and \(report.temporaryFiles.count) temporary files for coffer gc"
                )
            }
            if !report.isClean { throw CLIError("fsck found \(report.problems.count) problem(s)") }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Remove blobs no version references and leftovers of interrupted pushes."
        )

        @OptionGroup var registry: RegistryOptions
        @Option(name: .long, help: "Keep files younger than this many seconds (a push in progress writes blobs first).")
        var grace: Double = 900

        func run() throws {
            let report = try registry.open().gc(grace: grace)
            print(
                "removed \(report.removedBlobs) blobs and \(report.removedTemporaryFiles) temporary files (\(ProgressBar.format(report.reclaimedBytes)))"
            )
        }
    }
}
