import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation
import Glibc

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
            let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            _ = question.withCString { write(fd, $0, strlen($0)) }
            var answer: [UInt8] = []
            var byte: UInt8 = 0
            while answer.count < 16, read(fd, &byte, 1) == 1, byte != 0x0a { answer.append(byte) }
            return ["y", "yes"].contains(String(decoding: answer, as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased())
        }
    }

    struct SessionCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "session",
            abstract: "Inference sessions: time-limited tokens that open one model version in memory.",
            subcommands: [Open.self, List.self, Revoke.self]
        )

        struct Open: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "open",
                abstract: "Open a session; prints its token once (cfs_...). Remotely, the server loads the model and prints the session id."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @OptionGroup var remote: RemoteOptions
            @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
            @Option(name: .long, help: "Lifetime: e.g. 90s, 15m, 2h, 7d.") var ttl: String
            @Option(name: .long, help: "Number of uses allowed: predictions (one per input row), or exports (one per --raw).") var maxUses: Int?
            @Option(
                name: .long,
                help: "With --registry: write the session's token (cfs_...) to this new file (mode 0600), for infer --session-token-file."
            )
            var saveToken: String?

            func run() async throws {
                let model = try ModelReference(parsing: reference)
                let lifetime = try Registry.duration(ttl)
                if let maxUses, maxUses < 1 { throw CLIError("--max-uses must be at least 1") }
                if let path = saveToken, FileManager.default.fileExists(atPath: path) {
                    // Checked before the server opens a session whose token would have nowhere to go.
                    throw CLIError("--save-token \(path): file exists (a token is never written over a file)")
                }
                if let client = try remote.client(over: registry) {
                    // The session lives in the server's memory; the bearer token and this id are what infer needs, and
                    // the session's token (saved with --save-token) lets another server of the registry answer too.
                    let session = try await client.openSession(model.description, ttl: lifetime, maxUses: maxUses)
                    if let path = saveToken {
                        guard let token = session.token else { throw CLIError("\(client.baseURL) sent no session token to save") }
                        try token.withUnsafeBytes { bytes throws(CofferCryptoError) in try SecretFile.write(bytes, to: path) }
                    }
                    FileDescriptorStream.standardError.writeLine(
                        "session \(session.id) on \(session.model):\(session.version) until \(session.expiresAt), held by the server; infer with --session \(session.id):"
                    )
                    print(session.id)
                    return
                }
                guard let identity = acting.resolved else { throw CLIError("--identity (or COFFER_IDENTITY) is required to open a session") }
                let store = try await registry.open()
                let opened = try await store.openSession(
                    model,
                    identity: try acting.passphraseOptions.unlockIdentity(at: identity),
                    ttl: lifetime,
                    maxUses: maxUses
                )
                FileDescriptorStream.standardError.writeLine(
                    "session \(opened.info.id) on \(opened.info.model):\(opened.info.version) until \(opened.info.expiresAt); the token is shown once:"
                )
                let text = opened.token.text()
                try text.withUnsafeBytes { try FileDescriptorStream.standardOutput.write($0) }
                try [UInt8(ascii: "\n")].withUnsafeBytes { try FileDescriptorStream.standardOutput.write($0) }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List sessions (never their tokens).")
            @OptionGroup var registry: RegistryOptions
            @Flag(name: .long, help: "Print JSON.") var json = false
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                let sessions =
                    if let client = try remote.client(over: registry) {
                        try await client.sessions()
                    } else {
                        try await registry.open().sessions()
                    }
                if json {
                    let data = try JSONEncoder().encode(sessions)
                    print(String(decoding: data, as: UTF8.self))
                    return
                }
                for s in sessions {
                    let state = s.revokedAt.map { "revoked \($0)" } ?? "until \(s.expiresAt)"
                    print("\(s.id)  \(s.principal)  \(s.model):\(s.version)  \(state)  uses \(s.uses)\(s.maxUses.map { "/\($0)" } ?? "")")
                }
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "revoke",
                abstract: "Revoke a session (its principal or an admin); its key copy is destroyed."
            )
            @OptionGroup var registry: RegistryOptions
            @OptionGroup var acting: OptionalIdentity
            @OptionGroup var remote: RemoteOptions
            @Argument(help: "Session id (from session list).") var id: String

            func run() async throws {
                if let client = try remote.client(over: registry) {
                    try await client.closeSession(id)
                } else {
                    guard let identity = acting.resolved else { throw CLIError("--identity (or COFFER_IDENTITY) is required to revoke a session") }
                    try await registry.open().revokeSession(id: id, identity: try acting.passphraseOptions.unlockIdentity(at: identity))
                }
                print("revoked session \(id)")
            }
        }
    }

    struct Infer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "infer",
            abstract: "Predict with a session's model, decrypted into locked memory only; or stream its plaintext (--raw) to a pipe."
        )
        @OptionGroup var registry: RegistryOptions
        @Option(name: .long, help: "Session token (cfs_...), or with --registry the session id; else $COFFER_SESSION.") var session: String?
        @Option(name: .long, help: "CSV with the model's feature columns.") var input: String?
        @Flag(name: .long, help: "Print JSON: one object per row, keyed by task.") var json = false
        @Flag(name: .long, help: "Write the decrypted file to stdout (for a pipe) instead of predicting.") var raw = false
        @Option(name: .long, help: "With --raw: which file of the version (default: the only one).") var file: String?
        @OptionGroup var remote: RemoteOptions
        @Option(
            name: .long,
            help: "With --registry: the session's token file (from session open --save-token), sent so any server of the registry can answer."
        )
        var sessionTokenFile: String?

        func validate() throws {
            if raw == (input != nil) { throw ValidationError("give either --input X.csv or --raw") }
            if raw && isatty(STDOUT_FILENO) == 1 { throw ValidationError("--raw writes plaintext to stdout: pipe it, do not print it to a terminal") }
        }

        func run() async throws {
            guard let text = session ?? ProcessInfo.processInfo.environment["COFFER_SESSION"] else {
                throw CLIError("no session token: pass --session or set COFFER_SESSION")
            }
            if let client = try remote.client(over: registry) {
                // The server never sends a model's plaintext: remotely there is only prediction.
                guard let input, !raw else { throw CLIError("--raw works on a local registry only: a server never releases plaintext") }
                let table = try CSVTable(contentsOf: input)
                let width = table.columns.count
                let rows: [[String: Double]] = (0..<table.rowCount).map { i in
                    Dictionary(uniqueKeysWithValues: table.columns.enumerated().map { ($1, table.values[i * width + $0]) })
                }
                let token = try sessionTokenFile.map { path throws(CofferCryptoError) in Secret(try SecretFile.read(path)) }
                return printPredictionRows(try await client.predict(session: text, rows: rows, token: token), json: json)
            }
            let tokenText = SecureBytes(count: text.utf8.count)
            tokenText.withUnsafeMutableBytes { out in out.copyBytes(from: text.utf8) }
            let store = try await registry.open()
            // Bad input and an export the session may not make are refused before a use is taken.
            let table = try input.map { path throws(CofferTrainingError) in try CSVTable(contentsOf: path) }
            if raw { try await InferenceSession.authorizeExport(registry: store, tokenText: tokenText) }
            // An export takes one use as it opens; a prediction takes one per row, only once it has succeeded.
            let opened = try await InferenceSession(registry: store, tokenText: tokenText, countingUse: raw, auditingOpen: false)
            if raw {
                let paths = opened.files.map(\.path)
                guard let path = file ?? (paths.count == 1 ? paths[0] : nil) else {
                    throw CLIError("the version has \(paths.count) files: choose one with --file (\(paths.joined(separator: ", ")))")
                }
                let written: Void? = try await opened.export(path, registry: store) { bytes throws(CofferCryptoError) in
                    try FileDescriptorStream.standardOutput.write(bytes)
                }
                guard written != nil else { throw CLIError("no file \(path) in \(opened.info.model):\(opened.info.version)") }
                return
            }
            let checkpoint: CheckpointView
            let predictions: [[Float]]
            do { (checkpoint, predictions) = try opened.predict(table!) } catch {
                try? await store.recordFailedPrediction(session: opened.info.id, principal: opened.info.principal, reason: error.description)
                throw error
            }
            // Nothing is printed unless the session had the rows to spend.
            try await store.useSession(id: opened.info.id, principal: opened.info.principal, uses: table!.rowCount)
            printPredictions(
                predictions,
                tasks: checkpoint.architecture.tasks,
                preprocessing: checkpoint.preprocessing,
                rows: table!.rowCount,
                json: json
            )
        }
    }

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
