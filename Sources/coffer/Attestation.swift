import ArgumentParser
import CofferCrypto

extension Coffer {
    struct Attestation: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "attestation",
            abstract: "Sign and verify in-toto statements about files (DSSE envelopes).",
            subcommands: [Sign.self, Verify.self]
        )

        struct Sign: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "sign",
                abstract: "Sign a statement whose subjects are FILEs with their SHA-256."
            )

            @Option(name: .long, help: "Your private identity (NAME.key) (default: $COFFER_IDENTITY, else identity in the config file).")
            var identity: String?

            @Option(name: .shortAndLong, help: "Where to write the DSSE envelope (JSON), or - for stdout.")
            var output: String

            @OptionGroup var passphraseOptions: PassphraseOptions

            @Argument(help: "Files to attest.")
            var files: [String]

            func validate() throws {
                guard !files.isEmpty else { throw ValidationError("name at least one file to attest") }
            }

            func run() throws {
                let signer = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
                let envelope = try FileAttestation.sign(files: files, identity: signer.identity)
                try OutputTarget.write(to: output, mode: 0o644) { sink throws(CofferCryptoError) in
                    try (envelope.jsonBytes + [0x0a]).withUnsafeBytes { buffer in
                        Result { () throws(CofferCryptoError) in try sink.write(buffer) }
                    }.get()
                }
            }
        }

        struct Verify: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "verify",
                abstract: "Verify an envelope against trusted public identities, and FILEs against its subjects."
            )

            @Option(name: .long, help: "A trusted signer's public identity (NAME.pub); repeat for several.")
            var trust: [String] = []

            @Argument(help: "The DSSE envelope.")
            var envelope: String

            @Argument(help: "Files that must match the statement's subjects.")
            var files: [String] = []

            func validate() throws {
                guard !trust.isEmpty else { throw ValidationError("at least one --trust identity is required") }
            }

            func run() throws {
                let trusted = try trust.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
                let parsed = try DSSEEnvelope(jsonBytes: try FileBytes.read(envelope))
                let (signer, statement) = try FileAttestation.verify(parsed, trusting: trusted, files: files)
                print("verified: signed by \(signer.name) (\(signer.keyID)); \(statement.subject.count) subject(s), \(files.count) file(s) checked")
            }
        }
    }
}
