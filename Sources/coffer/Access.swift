import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

/// `--identity KEY`: who acts, proven by unlocking the key.
struct ActingIdentity: ParsableArguments {
    @Option(name: .long, help: "Your private identity (NAME.key): who is acting (default: $COFFER_IDENTITY, else identity in the config file).")
    var identity: String?

    func unlock(_ passphraseOptions: PassphraseOptions) throws -> UnlockedIdentity {
        try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
    }
}

/// `--identity KEY` where acting is optional: who makes (and signs) a change. Without it, the registry's own key
/// (`registry.key` in the registry directory, under its passphrase) signs it: the way to act in a registry without
/// principals.
struct OptionalIdentity: ParsableArguments {
    @Option(
        name: .long,
        help:
            "Your private identity (NAME.key): who makes and signs the change (default: $COFFER_IDENTITY, else identity in the config file, else the registry's own key, registry.key)."
    )
    var identity: String?

    /// `--identity`, else the user's default identity; `nil` when neither is set (the registry's key acts).
    var resolved: String? { UserConfig.identity(identity) }
    @OptionGroup var passphraseOptions: PassphraseOptions

    /// The principal acting, for what is checked but not recorded in the ledger (tokens, sessions, recipients).
    func principal(in store: Registry) async throws -> Principal? {
        guard let identity = resolved else { return nil }
        return try await store.principal(for: try passphraseOptions.unlockIdentity(at: identity).identity)
    }

    /// The signer of a change recorded in the ledger.
    func signer(in store: Registry) throws -> Signer {
        Signer(try passphraseOptions.unlockIdentity(at: resolved ?? "\(store.home)/registry.key"))
    }
}

func parseRole(_ text: String) throws -> Role {
    guard let role = Role(rawValue: text) else {
        throw CLIError("unknown role '\(text)': use \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return role
}

extension Coffer {
    struct PrincipalCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "principal",
            abstract: "Manage the identities the registry knows, and their roles on every model.",
            subcommands: [Add.self, Remove.self, List.self]
        )

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "add",
                abstract: "Add a principal (admin only; the registry's first principal is its owner)."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var passphraseOptions: PassphraseOptions
            @Argument(help: "Principal name.") var name: String
            @Argument(help: "Its public identity (NAME.pub).") var publicIdentity: String
            @Option(name: .long, help: "A role on every model: admin, publisher, reader, decrypt, inference. Repeat for several.") var role:
                [String] = []
            @Option(
                name: .long,
                help:
                    "Your private identity (NAME.key): an admin's (default: $COFFER_IDENTITY, else identity in the config file, else the registry's own key, registry.key)."
            )
            var identity: String?

            func run() async throws {
                let store = try await registry.open()
                let roles = try role.map(parseRole)
                let signer = Signer(try passphraseOptions.unlockIdentity(at: UserConfig.identity(identity) ?? "\(store.home)/registry.key"))
                try await store.addPrincipal(name: name, identity: try PublicIdentity(contentsOf: publicIdentity), roles: roles, by: signer)
                print("added principal \(name)")
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "remove",
                abstract: "Remove a principal: its grants, bearer tokens and sessions end at once (admin only)."
            )
            @OptionGroup var registry: RegistryOptions
            @Argument(help: "Principal name.") var name: String
            @OptionGroup var acting: OptionalIdentity

            func run() async throws {
                let store = try await registry.open()
                try await store.removePrincipal(name, by: try acting.signer(in: store))
                print("removed principal \(name): its grants, tokens and sessions have ended")
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List principals and their grants.")
            @OptionGroup var registry: RegistryOptions
            @Flag(name: .long, help: "Print JSON: [{name, key_id, grants: [{role, scope, alias, max_session_seconds, max_predictions}]}].")
            var json = false

            func run() async throws {
                let principals = try await registry.open().principals()
                if json {
                    JSONOutput.print(
                        .array(
                            principals.map { p in
                                .object([
                                    "name": .string(p.name), "key_id": .string(p.keyID),
                                    "grants": .array(
                                        p.grants.map {
                                            .object([
                                                "role": .string($0.role.rawValue), "scope": .string($0.scope),
                                                "alias": $0.alias.map(JSONValue.string) ?? .null,
                                                "max_session_seconds": $0.maxSessionSeconds.map { .number(Double($0)) } ?? .null,
                                                "max_predictions": $0.maxPredictions.map { .number(Double($0)) } ?? .null,
                                            ])
                                        }
                                    ),
                                ])
                            }
                        )
                    )
                    return
                }
                for p in principals {
                    let grants = p.grants.map { grant in
                        var limits: [String] = []
                        if let seconds = grant.maxSessionSeconds { limits.append("sessions <= \(seconds) s") }
                        if let predictions = grant.maxPredictions { limits.append("<= \(predictions) predictions") }
                        return "\(grant.role.rawValue) on \(grant.scope)" + (grant.alias.map { "@\($0)" } ?? "")
                            + (limits.isEmpty ? "" : " (\(limits.joined(separator: ", ")))")
                    }.joined(separator: ", ")
                    print("\(p.name)  \(p.keyID)  \(grants)")
                }
            }
        }
    }

    /// What names a grant, for `grant` and `revoke` alike.
    struct GrantArguments: ParsableArguments {
        @Argument(help: "Principal name.") var principal: String
        @Argument(help: "Role: admin, publisher, reader, decrypt, inference.") var role: String
        @Option(name: .long, help: "Scope: * (every model), NS/ (a namespace) or a model name.") var on: String = "*"
        @Option(name: .long, help: "Only through this alias (inference).") var alias: String?

        func grant() throws -> Grant { Grant(principal: principal, role: try parseRole(role), scope: on, alias: alias) }
        var summary: String { "\(role) on \(on)\(alias.map { " alias \($0)" } ?? "")" }
    }

    struct GrantCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "grant", abstract: "Grant a principal a role on models (admin only).")
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var acting: ActingIdentity
        @OptionGroup var granted: GrantArguments
        @Flag(name: .long, help: "For decrypt or admin: wrap the data key of every version in scope for the principal now (unlocks registry.key).")
        var withRegistryKey = false
        @OptionGroup var registryKey: RegistryKeyOptions

        func run() async throws {
            let store = try await registry.open()
            let signer = Signer(try acting.unlock(passphraseOptions))
            let registryIdentity = withRegistryKey ? try registryKey.unlock(in: store, fallback: passphraseOptions) : nil
            try await store.grant(try granted.grant(), registryIdentity: registryIdentity, by: signer)
            print("granted \(granted.summary) to \(granted.principal)")
        }
    }

    struct RevokeCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a principal's role, as granted (admin only).")
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var acting: ActingIdentity
        @OptionGroup var granted: GrantArguments

        func run() async throws {
            let store = try await registry.open()
            guard let removed = try await store.revokeReporting(try granted.grant(), by: Signer(try acting.unlock(passphraseOptions))) else {
                throw CLIError("\(granted.principal) holds no \(granted.summary) grant")
            }
            print("revoked \(granted.summary) from \(granted.principal)")
            if !removed.isEmpty {
                print("removed \(granted.principal)'s wrapped keys of \(removed.joined(separator: ", ")); rekey them if it may have kept a data key")
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "approve",
            abstract: "Approve a change request filed on the web pages (a token, a grant, a revocation) with your own key (admins).",
            discussion: """
                The request's text comes from the server, which also wrote the page describing it: read what this command \
                prints, not the page. It asks on the terminal before it unlocks your key; --yes approves without asking.
                """
        )
        @OptionGroup var registry: RegistryOptions
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var acting: ActingIdentity
        @Argument(help: "The request (cfr1. ...) as the page showed it, or - to read it from standard input.") var request: String
        @Flag(name: .long, help: "Print what the request asks and sign nothing.") var show = false
        @Flag(name: .long, help: "Approve without asking on the terminal (after reading --show).") var yes = false
        @Flag(name: .long, help: "For a decrypt or admin grant: wrap the data key of every version in scope now (unlocks registry.key).")
        var withRegistryKey = false
        @OptionGroup var registryKey: RegistryKeyOptions

        func run() async throws {
            let text = request == "-" ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) : request
            let parsed = try ChangeRequest(text: text)
            let asked = "\(parsed.summary), filed by \(parsed.filedBy) at \(parsed.filedAt) (request \(parsed.id), expires \(parsed.expires))"
            if show { return print(asked) }
            // Before any key is unlocked: the page that handed over this command may say something else than the request.
            guard yes || Self.confirm("This request asks: \(VisibleText.of(asked))\nSign it with your key? [y/N] ") else {
                throw CLIError("not approved: nothing was signed (run it in a terminal to be asked, or give --yes after --show)")
            }
            let store = try await registry.open()
            let signer = Signer(try acting.unlock(passphraseOptions))
            let registryIdentity = withRegistryKey ? try registryKey.unlock(in: store, fallback: passphraseOptions) : nil
            let toRekey = try await store.approve(parsed, registryIdentity: registryIdentity, by: signer)
            print("approved: \(asked)")
            if !toRekey.isEmpty {
                print("removed the wrapped keys of \(toRekey.joined(separator: ", ")); rekey them if the principal may have kept a data key")
            }
        }

        /// Asks `question` on the controlling terminal; false without one, or for any answer but y or yes.
        static func confirm(_ question: String) -> Bool {
            guard isatty(STDIN_FILENO) == 1 else { return false }
            let fd = Terminal.open()
            guard fd >= 0 else { return false }
            defer { close(fd) }
            _ = question.withCString { write(fd, $0, strlen($0)) }
            var answer: [UInt8] = []
            var byte: UInt8 = 0
            while answer.count < 16, Terminal.readByte(fd, into: &byte), byte != 0x0a { answer.append(byte) }
            return ["y", "yes"].contains(String(decoding: answer, as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased())
        }
    }
}
