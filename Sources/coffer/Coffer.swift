import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import CofferRunner
import CofferTraining

#if canImport(Glibc)
import Glibc
#endif

/// The `coffer` command: a thin face over the Coffer libraries.
@main
struct Coffer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coffer",
        abstract: "An encrypted model registry and artifact store.",
        version: "0.1.0",
        subcommands: [
            Keygen.self, Seal.self, Unseal.self, Attestation.self, Init.self, Trust.self, Push.self, Pull.self, Verify.self, List.self,
            Show.self, Alias.self, Tag.self, Log.self, Fsck.self, GC.self, Privacy.self, CheckpointCommand.self, Train.self, Predict.self, Synth.self,
            Split.self,
            PrincipalCommand.self, GrantCommand.self, RevokeCommand.self, Approve.self, Share.self, Unshare.self,
            SessionCommand.self, Infer.self, Audit.self, Budget.self, Policy.self, Erase.self, Key.self, Recipient.self, Rekey.self,
            Serve.self, Token.self, Migrate.self, Export.self, Import.self, Federated.self, AgentCommand.self, RunnerGroup.self,
        ]
    )

    /// Runs the command; a library error becomes one line on stderr and exit status 1, never a trace.
    static func main() async {
        let given = RunnerProcess.serveIfAsked()?.arguments ?? commandLineArguments
        TemporaryFiles.removeOnInterrupt()
        // CommandLine.arguments replaces bytes that are not UTF-8 with U+FFFD, so `-o café.cfs` written in Latin-1 would
        // write to another name: such an argument is refused, not mended.
        var arguments: [String] = []
        for (index, bytes) in given.enumerated() {
            guard let argument = String(validating: bytes, as: UTF8.self) else {
                fail("argument \(index + 1) is not UTF-8 (\(String(decoding: bytes, as: UTF8.self))): Coffer reads names and paths as UTF-8")
            }
            arguments.append(argument)
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let error as CofferCryptoError {
            fail(error.description)
        } catch let error as CofferRegistryError {
            fail(error.description)
        } catch let error as CofferTrainingError {
            fail(error.description)
        } catch let error as CofferClientError {
            fail(error.description)
        } catch let error as CLIError {
            fail(error.description)
        } catch {
            // ArgumentParser's refusals quote what was typed ("Unknown option '--x'"): its controls are escaped, as in
            // every other line Coffer prints. Help and other clean exits go out as ArgumentParser prints them.
            let code = exitCode(for: error)
            guard code != .success else { exit(withError: error) }
            let message = fullMessage(for: error)
            if !message.isEmpty { FileDescriptorStream.standardError.writeRaw(VisibleText.of(message, lines: true) + "\n") }
            Glibc.exit(code.rawValue)
        }
    }

    static func fail(_ message: String) -> Never {
        FileDescriptorStream.standardError.writeLine("coffer: \(message)")
        Glibc.exit(1)
    }
}

/// Errors of the command line itself (arguments that parse but make no sense together).
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension FileDescriptorStream {
    /// Writes `line` and a line break, with its control characters escaped (``VisibleText/of(_:lines:)``): what a
    /// command says may carry a registry's or a server's text.
    func writeLine(_ line: String) { writeRaw(VisibleText.of(line) + "\n") }

    /// Writes `text` as it is: the progress bar's carriage returns and erase-line sequences.
    func writeRaw(_ text: String) {
        let bytes = Array(text.utf8)
        try? bytes.withUnsafeBytes { try write($0) }
    }
}
