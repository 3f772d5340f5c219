import ArgumentParser
import CofferClient
import CofferRegistry
import Foundation

extension Coffer {
    struct Audit: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "audit",
            abstract: "The registry's append-only, hash-chained audit log.",
            subcommands: [Show.self, Verify.self, Sign.self],
            defaultSubcommand: Show.self
        )

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "show", abstract: "Print entries, oldest first.")
            @OptionGroup var registry: RegistryOptions
            @Option(name: .long, help: "Only entries at or after this RFC 3339 time, or this long ago (90m, 1h, 7d).") var since: String?
            @Option(name: .long, help: "Only entries of this principal.") var principal: String?
            @Option(name: .long, help: "Only entries of this action (pull, push, infer, grant, unshare, ...).") var action: String?
            @Option(name: .long, help: "Only entries about this model (its versions, aliases and sessions), or a namespace NS/.") var model: String?
            @Flag(name: .long, help: "Print JSON: [{seq, at, principal, action, target, outcome, reason}].") var json = false
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                var filter = try AuditFilter(principal: principal, action: action, model: model, since: since)
                let all: [AuditEntry]
                if let client = try remote.client(over: registry) {
                    all = try await client.audit(since: filter.since)
                    if model != nil { filter = filter.including(try await client.sessions()) }
                } else {
                    let store = try await registry.open()
                    all = try await store.auditEntries(since: filter.since)
                    if model != nil { filter = filter.including(try await store.sessions()) }
                }
                let entries = all.filter(filter.matches)
                if json {
                    print(String(decoding: try JSONEncoder().encode(entries), as: UTF8.self))
                    return
                }
                for e in entries {
                    print(
                        "\(e.seq)  \(e.at)  \(e.principal)  \(e.action)  \(e.target)  \(e.outcome.rawValue)\(e.reason.isEmpty ? "" : "  \(e.reason)")"
                    )
                }
            }
        }

        struct Verify: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "verify",
                abstract: "Recompute the chain and check the registry's signed heads; names the first bad entry."
            )
            @OptionGroup var registry: RegistryOptions

            func run() async throws {
                let report = try await registry.open().verifyAudit()
                print("audit log ok: \(report.entries) entries, signed through \(report.signedThrough), \(report.unsigned) not yet signed")
            }
        }

        struct Sign: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "sign",
                abstract: "Sign the chain head with the registry's identity (its passphrase)."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions

            func run() async throws {
                let store = try await registry.open()
                let key = try passphraseOptions.unlockIdentity(at: "\(store.home)/registry.key")
                print("signed the audit log through entry \(try await store.signAuditHead(with: key))")
            }
        }
    }
}
