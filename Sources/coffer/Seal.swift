import ArgumentParser
import CofferCrypto

extension Coffer {
    struct Seal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "seal",
            abstract: "Encrypt a file to one or more recipients in the Coffer sealed-file format."
        )

        @Option(name: .long, help: "A recipient's public identity (NAME.pub); repeat for several.")
        var to: [String] = []

        @Option(name: .shortAndLong, help: "Output file, or - for stdout.")
        var output: String

        @Option(name: .long, help: "Plaintext bytes per chunk: a power of two from 4K to 16M (e.g. 64K, 1M).")
        var chunkSize: ByteCount = ByteCount(SealedFile.defaultChunkSize)

        @Argument(help: "Input file, or - for stdin.")
        var input: String

        func validate() throws {
            guard !to.isEmpty else { throw ValidationError("at least one --to recipient is required") }
        }

        func run() throws {
            try OutputTarget.refuseTerminal(output, for: "the sealed file (binary)")
            let recipients = try to.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
            let source = input == "-" ? FileDescriptorStream.standardInput : try FileDescriptorStream(readingFrom: input)
            let progress = ProgressBar(label: "sealing", total: source.regularFileSize)
            try OutputTarget.write(to: output, mode: 0o644) { sink throws(CofferCryptoError) in
                _ = try SealedFile.seal(
                    from: source,
                    to: sink,
                    recipients: recipients,
                    chunkSize: chunkSize.bytes,
                    progress: progress?.update
                )
            }
            progress?.finish()
        }
    }
}
