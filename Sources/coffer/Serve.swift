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
        @Option(name: .long, help: "HOST:PORT to listen on.") var listen: String = "127.0.0.1:8443"
        @Flag(name: .long, help: "Allow plain HTTP on an address other than loopback.") var insecure = false
        @Option(name: .long, help: "Largest blob an upload may grow to, in bytes (larger: 413).") var maxUploadSize: Int = 16 << 30
        @Option(name: .long, help: "TLS certificate chain (PEM): serve HTTPS.") var tlsCert: String?
        @Option(name: .long, help: "TLS private key (PEM), with --tls-cert.") var tlsKey: String?
        @Option(name: .long, help: "Predict requests per second allowed per inference session (more: 429).") var predictRate: Double = 10
        @Option(name: .long, help: "Predict requests a session may send at once after a pause.") var predictBurst: Int = 20
        @Option(name: .long, help: "Rows in one predict request (more: 413).") var maxPredictRows: Int = 1000
        @Option(name: .long, help: "How long a signed state head is current (clients refuse an older one: a freeze); e.g. 1h.")
        var headLifetime: String = "1h"

        /// `HOST:PORT`, or `[IPV6]:PORT`.
        static func parseListen(_ text: String) throws -> (host: String, port: Int) {
            var host: Substring
            var rest: Substring
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]") else { throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'") }
                host = text[text.index(after: text.startIndex)..<close]
                rest = text[text.index(after: close)...]
            } else {
                guard let colon = text.lastIndex(of: ":") else { throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'") }
                host = text[..<colon]
                rest = text[colon...]
            }
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port), !host.isEmpty, !host.contains(" ") else {
                throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'")
            }
            if host.contains(":"), !text.hasPrefix("[") { throw CLIError("--listen: write an IPv6 address in brackets, [\(host)]:\(port)") }
            return (String(host), port)
        }

        /// Addresses that never leave the machine: 127.0.0.0/8, ::1 and the name localhost (RFC 6761).
        static func isLoopback(_ host: String) -> Bool {
            if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
            let parts = host.split(separator: ".", omittingEmptySubsequences: false)
            return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
        }

        func run() async throws {
            let (host, port) = try Self.parseListen(listen)
            if (tlsCert == nil) != (tlsKey == nil) { throw CLIError("--tls-cert and --tls-key go together") }
            let tls = tlsCert.flatMap { cert in tlsKey.map { (certificate: cert, privateKey: $0) } }
            guard Self.isLoopback(host) || insecure || tls != nil else {
                throw CLIError("plain HTTP on \(host) would expose tokens on the network: listen on 127.0.0.1, or pass --insecure")
            }
            guard predictRate > 0, predictRate.isFinite, predictBurst >= 1, maxPredictRows >= 1 else {
                throw CLIError("--predict-rate must be positive, --predict-burst and --max-predict-rows at least 1")
            }
            let store = try await registry.open()
            let unlocked = try passphraseOptions.unlockIdentity(at: "\(store.home)/registry.key", useAgent: false)
            var logger = Logger(label: "coffer.server")
            logger.logLevel = .info
            let shown = host.contains(":") ? "[\(host)]" : host
            FileDescriptorStream.standardError.writeLine("coffer: serving \(store.home) on \(tls == nil ? "http" : "https")://\(shown):\(port)")
            try await runServer(
                registry: store,
                registryIdentity: unlocked,
                configuration: .init(
                    host: host,
                    port: port,
                    maxUploadSize: maxUploadSize,
                    tls: tls,
                    predictLimits: .init(rate: predictRate, burst: predictBurst, maxRows: maxPredictRows),
                    headLifetime: try Registry.duration(headLifetime)
                ),
                logger: logger
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
