import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation

extension Coffer {
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
            if let input {
                let table = try CSVTable(contentsOf: input)
                // A prediction takes one use per row, only once it has succeeded.
                let (checkpoint, predictions) = try await InferenceSession.predictOnce(registry: store, tokenText: tokenText, table: table)
                printPredictions(
                    predictions,
                    tasks: checkpoint.architecture.tasks,
                    preprocessing: checkpoint.preprocessing,
                    rows: table.rowCount,
                    json: json
                )
                return
            }
            try await InferenceSession.authorizeExport(registry: store, tokenText: tokenText)
            // An export takes one use as it opens.
            let opened = try await InferenceSession(registry: store, tokenText: tokenText, countingUse: true, auditingOpen: false)
            let paths = opened.files.map(\.path)
            guard let path = file ?? (paths.count == 1 ? paths[0] : nil) else {
                throw CLIError("the version has \(paths.count) files: choose one with --file (\(paths.joined(separator: ", ")))")
            }
            let written: Void? = try await opened.export(path, registry: store) { bytes throws(CofferCryptoError) in
                try FileDescriptorStream.standardOutput.write(bytes)
            }
            guard written != nil else { throw CLIError("no file \(path) in \(opened.info.model):\(opened.info.version)") }
        }
    }
}
