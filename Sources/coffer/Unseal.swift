import ArgumentParser
import CofferCrypto

extension Coffer {
    struct Unseal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unseal",
            abstract: "Decrypt a Coffer sealed file; nothing is written unless every chunk authenticates."
        )

        @Option(name: .long, help: "Your private identity (NAME.key) (default: $COFFER_IDENTITY, else identity in the config file).")
        var identity: String?

        @Option(name: .shortAndLong, help: "Output file, or - for stdout.")
        var output: String

        @Option(name: .long, help: "Decrypt only plaintext bytes START:END (END exclusive; either may be omitted).")
        var range: ByteRange?

        @OptionGroup var passphraseOptions: PassphraseOptions

        @Argument(help: "Sealed input file, or - for stdin.")
        var input: String

        func run() throws {
            try OutputTarget.refuseTerminal(output, for: "the plaintext")
            let source = input == "-" ? FileDescriptorStream.standardInput : try FileDescriptorStream(readingFrom: input)
            if range != nil && source.regularFileSize == nil { throw CofferCryptoError.rangeNeedsSeekableInput }
            let identity = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
            let progress = ProgressBar(label: "unsealing", total: source.regularFileSize)
            try OutputTarget.write(to: output, mode: 0o600) { sink throws(CofferCryptoError) in
                if let range {
                    _ = try SealedFile.openRange(from: range.start, to: range.end, of: source, to: sink, identity: identity.identity)
                } else {
                    _ = try SealedFile.open(from: source, to: sink, identity: identity.identity, progress: progress?.update)
                }
            }
            progress?.finish()
        }
    }
}
