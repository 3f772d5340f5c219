import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension Coffer {
    /// `coffer agent`: unlocked identities held by a per-user process, as `ssh-agent` holds SSH keys.
    struct AgentCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "agent",
            abstract: "Keep identities unlocked in a per-user agent: commands then sign and unwrap through it, with no passphrase.",
            discussion: """
                eval "$(coffer agent start)"; coffer agent add alice.key --ttl 8h; then any --identity alice.key uses the agent.
                The private keys never leave the agent; it serves only processes of your uid (docs/THREAT_MODEL.md).
                """,
            subcommands: [Start.self, Add.self, List.self, Remove.self, Lock.self, Unlock.self, Stop.self]
        )
    }
}

/// The agent named by `COFFER_AGENT_SOCK`, or the line that says how to start one.
private func connectedAgent() throws -> AgentConnection {
    guard let agent = try AgentConnection.fromEnvironment() else {
        throw CLIError("COFFER_AGENT_SOCK is not set: start an agent with eval \"$(coffer agent start)\"")
    }
    return agent
}

extension Coffer.AgentCommand {
    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "start",
            abstract: "Start an agent and print the shell lines that point commands at it: eval \"$(coffer agent start)\"."
        )

        @Flag(name: .long, help: "Stay in the foreground (the lines are printed, then the agent serves until stopped).")
        var foreground = false
        @Option(name: .long, help: "Listen at PATH (default: agent.sock in a new private directory under $XDG_RUNTIME_DIR or the temp dir).")
        var socket: String?
        @Option(name: .long, help: .hidden) var readyFd: Int32?

        func run() async throws {
            if !foreground {
                let path = try socket ?? AgentLauncher.makeSocketPath()
                let pid: Int32
                do {
                    pid = try AgentLauncher.startDetached(
                        executable: Self.executable,
                        arguments: ["agent", "start", "--foreground", "--socket", path, "--ready-fd", "3"]
                    )
                } catch {
                    if socket == nil { AgentLauncher.removeDirectory(of: path) }
                    throw error
                }
                Self.printShellLines(path: path, pid: pid)
                return
            }
            if readyFd != nil { AgentLauncher.detach() }
            let server: AgentServer
            do {
                let path = try socket ?? AgentLauncher.makeSocketPath()
                do { server = try AgentServer(socketPath: path) } catch {
                    if socket == nil { AgentLauncher.removeDirectory(of: path) }
                    throw error
                }
            } catch {
                if let readyFd { AgentLauncher.reportReady(readyFd, failure: (error as? CofferCryptoError)?.description ?? "\(error)") }
                throw error
            }
            if let readyFd {
                AgentLauncher.reportReady(readyFd)
            } else {
                Self.printShellLines(path: server.socketPath, pid: getpid())
            }
            server.serve()
        }

        /// What `eval` runs: the variables, as ssh-agent prints them.
        static func printShellLines(path: String, pid: pid_t) {
            let quoted = "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'"
            FileDescriptorStream.standardOutput.writeLine("COFFER_AGENT_SOCK=\(quoted); export COFFER_AGENT_SOCK;")
            FileDescriptorStream.standardOutput.writeLine("COFFER_AGENT_PID=\(pid); export COFFER_AGENT_PID;")
        }

        /// This binary, to start again as the agent.
        static var executable: String {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Unlock NAME.key once (its passphrase) and hand it to the agent."
        )

        @Argument(help: "The private identity (NAME.key).") var keyFile: String
        @Option(name: .long, help: "Wipe it from the agent after this long (e.g. 90s, 15m, 8h, 7d; default: until removed).")
        var ttl: String?
        @OptionGroup var passphraseOptions: PassphraseOptions

        func run() async throws {
            let seconds = try ttl.map { UInt64(try Registry.duration($0).rounded(.up)) } ?? 0
            let agent = try connectedAgent()
            let bytes = try FileBytes.read(keyFile)
            let passphrase = try passphraseOptions.passphrase(prompt: "Passphrase for \(keyFile): ")
            let identity = try Identity.decrypt(keyFile: bytes, passphrase: passphrase, path: keyFile)
            try agent.add(identity, ttl: seconds)
            let name = identity.publicIdentity.name
            let lifetime = ttl.map { "for \($0)" } ?? "until removed"
            FileDescriptorStream.standardError.writeLine("added \(name) (\(identity.publicIdentity.keyID)) to the agent \(lifetime)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the identities the agent holds, with their expiry.")

        @Flag(name: .long, help: "Print JSON: [{name, id, expires}] (expires: Unix seconds, null for never).") var json = false

        func run() async throws {
            let listed = try connectedAgent().list()
            if json {
                let rows = listed.map { entry -> [String: Any] in
                    [
                        "name": entry.identity.name, "id": entry.identity.keyID,
                        "expires": entry.expires == 0 ? NSNull() : Int(clamping: entry.expires),
                    ]
                }
                let data = try JSONSerialization.data(withJSONObject: rows, options: [.sortedKeys])
                FileDescriptorStream.standardOutput.writeLine(String(decoding: data, as: UTF8.self))
                return
            }
            let now = UInt64(max(0, time(nil)))
            for entry in listed {
                let expiry = entry.expires == 0 ? "never expires" : "expires in \(entry.expires > now ? entry.expires - now : 0)s"
                FileDescriptorStream.standardOutput.writeLine("\(entry.identity.name)  \(entry.identity.keyID)  \(expiry)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove identities from the agent (wiping them there).")

        @Argument(help: "A key file (NAME.key or NAME.pub) or a key ID.") var identity: String?
        @Flag(name: .long, help: "Remove every identity.") var all = false

        func validate() throws {
            guard (identity != nil) != all else { throw ValidationError("name one identity, or pass --all") }
        }

        func run() async throws {
            let agent = try connectedAgent()
            guard let identity else {
                try agent.removeAll()
                return
            }
            try agent.remove(keyID: try Self.keyID(of: identity))
        }

        /// The key ID named on the command line: a key ID itself, or read from a `.key` (public part) or `.pub` file.
        static func keyID(of argument: String) throws -> String {
            if argument.count == 32, argument.allSatisfy(\.isHexDigit), !FileManager.default.fileExists(atPath: argument) {
                return argument.lowercased()
            }
            let bytes = try FileBytes.read(argument)
            if let keyFile = try? Identity.publicIdentity(ofKeyFile: bytes, path: argument) { return keyFile.keyID }
            return try PublicIdentity(jsonBytes: bytes).keyID
        }
    }

    struct Lock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lock",
            abstract: "Lock the agent under a passphrase: it refuses to sign or unwrap until unlocked."
        )
        @OptionGroup var passphraseOptions: PassphraseOptions
        // A same-user process may guess at it: the strength floor of a key file's passphrase applies.
        @OptionGroup var newPassphrase: NewPassphraseOptions

        func run() async throws {
            let agent = try connectedAgent()
            let passphrase = try passphraseOptions.passphrase(prompt: "Passphrase to lock the agent with: ", confirm: true)
            try newPassphrase.check(passphrase)
            try agent.lock(passphrase: passphrase)
        }
    }

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "unlock", abstract: "Unlock the agent with the passphrase it was locked with.")
        @OptionGroup var passphraseOptions: PassphraseOptions

        func run() async throws {
            let agent = try connectedAgent()
            try agent.unlock(passphrase: try passphraseOptions.passphrase(prompt: "Passphrase of the locked agent: "))
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop the agent: it wipes its keys and removes its socket.")

        func run() async throws {
            try connectedAgent().stop()
            FileDescriptorStream.standardOutput.writeLine("unset COFFER_AGENT_SOCK COFFER_AGENT_PID;")
        }
    }
}
