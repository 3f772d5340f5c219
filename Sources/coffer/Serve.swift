import ArgumentParser
import CofferCrypto
import CofferRegistry
import CofferServer
import Foundation
import Logging

extension Coffer {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Serve the registry over HTTP (bearer tokens, ciphertext downloads with Range, inference sessions)."
        )
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @Option(name: .long, help: "HOST:PORT to listen on (port 0: a free port, printed once serving).") var listen: String = "127.0.0.1:8443"
        @Option(name: .long, help: "Largest blob an upload may grow to, in bytes (larger: 413).") var maxUploadSize: Int = 16 << 30
        @OptionGroup var listening: ListenOptions
        @Option(name: .long, help: "Predict requests per second allowed per inference session (more: 429).") var predictRate: Double = 10
        @Option(name: .long, help: "Predict requests a session may send at once after a pause.") var predictBurst: Int = 20
        @Option(name: .long, help: "Rows in one predict request (more: 413).") var maxPredictRows: Int = 1000
        @Option(name: .long, help: "Sessions one principal may hold open on this server, each a decrypted model (more: 429).")
        var maxSessionsPerPrincipal: Int = 8
        @Option(name: .long, help: "How long a signed state head is current (clients refuse an older one: a freeze); e.g. 1h.")
        var headLifetime: String = "1h"

        func run() async throws {
            let address = try listening.address(listen, exposing: "tokens")
            guard predictRate > 0, predictRate.isFinite, predictBurst >= 1, maxPredictRows >= 1, maxSessionsPerPrincipal >= 1 else {
                throw CLIError("--predict-rate must be positive, --predict-burst, --max-predict-rows and --max-sessions-per-principal at least 1")
            }
            let store = try await registry.open(serving: true)
            let unlocked = try passphraseOptions.unlockIdentity(at: "\(store.home)/registry.key", useAgent: false)
            var logger = Logger(label: "coffer.server")
            logger.logLevel = .info
            let home = store.home
            try await runServer(
                registry: store,
                registryIdentity: unlocked,
                configuration: .init(
                    host: address.host,
                    port: address.port,
                    maxUploadSize: maxUploadSize,
                    tls: address.tls,
                    predictLimits: .init(
                        rate: predictRate,
                        burst: predictBurst,
                        maxRows: maxPredictRows,
                        sessionsPerPrincipal: maxSessionsPerPrincipal
                    ),
                    headLifetime: try Registry.duration(headLifetime),
                    clientLimits: address.clientLimits
                ),
                logger: logger,
                // Once the socket takes connections: a script that waits for this line may connect at once.
                onListening: { port in FileDescriptorStream.standardError.writeLine("coffer: serving \(home) on \(address.url(port: port))") }
            )
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "token",
            abstract: "Bearer tokens for the HTTP server, minted for a principal with a scope.",
            subcommands: [Create.self, List.self, Revoke.self]
        )

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "create", abstract: "Mint a token (admins); it is printed once (cft_...).")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Option(name: .long, help: "The principal the token speaks for.") var principal: String
            @Option(name: .long, help: "read, publish, infer or admin.") var scope: String
            @Option(name: .long, help: "Lifetime: e.g. 15m, 12h, 30d.") var ttl: String

            func run() async throws {
                guard let scope = TokenScope(rawValue: scope) else {
                    throw CLIError("unknown scope '\(self.scope)': use read, publish, infer or admin")
                }
                let store = try await registry.open()
                let created = try await store.createToken(
                    principal: principal,
                    scope: scope,
                    ttl: try Registry.duration(ttl),
                    by: try acting.signer(in: store)
                )
                FileDescriptorStream.standardError.writeLine(
                    "token \(created.info.id) for \(principal) (\(scope.rawValue)) until \(created.info.expiresAt):"
                )
                let text = created.token.text()
                try text.withUnsafeBytes { try FileDescriptorStream.standardOutput.write($0) }
                try [UInt8(ascii: "\n")].withUnsafeBytes { try FileDescriptorStream.standardOutput.write($0) }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List tokens (never the tokens themselves).")
            @OptionGroup var registry: RegistryOptions
            @Flag(name: .long, help: "Print JSON.") var json = false

            func run() async throws {
                let tokens = try await registry.open().tokens()
                if json { return print(String(decoding: try JSONEncoder().encode(tokens), as: UTF8.self)) }
                for t in tokens {
                    print("\(t.id)  \(t.principal)  \(t.scope.rawValue)  \(t.revokedAt.map { "revoked \($0)" } ?? "until \(t.expiresAt)")")
                }
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a token by id.")
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @Argument(help: "Token id (from token list).") var id: String

            func run() async throws {
                let store = try await registry.open()
                try await store.revokeToken(id: id, by: try acting.signer(in: store))
                print("revoked token \(id)")
            }
        }
    }
}
