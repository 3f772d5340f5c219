import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

/// `--registry-passphrase-file`: where the registry key's own passphrase comes from, for the commands that need both
/// an admin's key and the registry's (its key wraps or re-encrypts data keys). Without it, the acting identity's
/// passphrase source is asked again (file, `COFFER_PASSPHRASE`, or a prompt naming `registry.key`).
struct RegistryKeyOptions: ParsableArguments {
    @Option(name: .long, help: "Read the registry key's passphrase (registry.key) from FILE, when it differs from --passphrase-file.")
    var registryPassphraseFile: String?

    func unlock(in store: Registry, fallback: PassphraseOptions) throws(CofferCryptoError) -> UnlockedIdentity {
        var options = fallback
        if let registryPassphraseFile { options.passphraseFile = registryPassphraseFile }
        return try options.unlockIdentity(at: "\(store.home)/registry.key")
    }
}

extension Coffer {
    struct Share: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "share",
            abstract: "Let a principal pull (reader + decrypt) or run inference on a model or namespace, present and future versions.",
            discussion: """
                --pull wraps the data key of every version in scope for the principal now (with the registry's key), \
                and every later push wraps its own for it. An admin's act.
                """
        )
        @OptionGroup var registry: RegistryOptions
        @Argument(help: "MODEL, NS/ (a namespace) or * (every model).") var scope: String
        @Argument(help: "Principal name.") var principal: String
        @Flag(name: .long, help: "Pulling: reader and decrypt, keys included.") var pull = false
        @Flag(name: .long, help: "Inference sessions only.") var infer = false
        @Option(name: .long, help: "With --infer: the longest session the principal may open, e.g. 1d, 8h.") var ttl: String?
        @Option(name: .long, help: "With --infer: predictions (rows) its sessions may make in all.") var maxPredictions: Int?
        @OptionGroup var acting: ActingIdentity
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var registryKey: RegistryKeyOptions

        func run() async throws {
            // Checked here rather than in validate(): a mistake is one line, not a usage screen.
            guard pull != infer else { throw CLIError("give one of --pull or --infer") }
            if pull, ttl != nil || maxPredictions != nil { throw CLIError("--ttl and --max-predictions limit inference: use them with --infer") }
            if let maxPredictions, maxPredictions < 1 { throw CLIError("--max-predictions must be at least 1") }
            let store = try await registry.open()
            let admin = try acting.unlock(passphraseOptions)
            // Only pulling carries keys; the registry key is unlocked only when it will wrap some.
            let registryIdentity = pull ? try registryKey.unlock(in: store, fallback: passphraseOptions) : nil
            let seconds = try ttl.map { Int(try Registry.duration($0).rounded(.up)) }
            let result = try await store.share(
                scope,
                with: principal,
                mode: pull ? .pull : .infer,
                maxSessionSeconds: seconds,
                maxPredictions: maxPredictions,
                registryIdentity: registryIdentity,
                by: Signer(admin)
            )
            let roles = result.granted.map(\.role.rawValue).joined(separator: " and ")
            print(result.granted.isEmpty ? "\(principal) already held these roles on \(scope)" : "granted \(roles) on \(scope) to \(principal)")
            if infer, let grant = result.granted.first, grant.hasLimits {
                let lifetime = grant.maxSessionSeconds.map { "sessions of at most \($0) s" } ?? "sessions of any lifetime"
                let predictions = grant.maxPredictions.map { "\($0) predictions in all" } ?? "unlimited predictions"
                print("limits: \(lifetime), \(predictions)")
            }
            if !result.endedSessions.isEmpty {
                print(
                    "ended \(result.endedSessions.count) open session(s) opened under the old limits: \(result.endedSessions.joined(separator: ", "))"
                )
            }
            if infer { print("\(principal) opens sessions through coffer serve (--registry), which holds the registry key") }
            if pull {
                print("wrapped the data key of \(result.wrapped.count) versions for \(principal); later pushes to \(scope) wrap theirs")
                if !result.pending.isEmpty { print("not wrapped yet: \(result.pending.joined(separator: ", "))") }
            }
        }
    }

    struct Unshare: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unshare",
            abstract: "End a principal's access to one model (or namespace), or to everything: grants, keys, sessions, tokens.",
            discussion: """
                Without MODEL: every grant and bearer token of PRINCIPAL ends too. Versions it could decrypt are listed \
                for rekey (someone who kept a data key is locked out only by one); --rekey re-encrypts them now.
                """
        )
        @OptionGroup var registry: RegistryOptions
        @Argument(help: "Principal name.") var principal: String
        @Argument(help: "MODEL, NS/ or * (the grants on exactly that scope; default: everything, tokens too).") var model: String?
        @Flag(name: .long, help: "Re-encrypt every version the principal could decrypt (needs the registry key).") var rekey = false
        @OptionGroup var acting: ActingIdentity
        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var registryKey: RegistryKeyOptions

        func run() async throws {
            let store = try await registry.open()
            let admin = try acting.unlock(passphraseOptions)
            let registryIdentity = rekey ? try registryKey.unlock(in: store, fallback: passphraseOptions) : nil
            let result = try await store.unshare(principal, model: model, rekeyWith: registryIdentity, by: Signer(admin))
            let scope = model ?? "every model"
            func list(_ items: [String]) -> String { items.isEmpty ? "none" : items.joined(separator: ", ") }
            print("unshared \(scope) from \(principal):")
            print("  grants revoked: \(list(result.revoked.map(\.summaryText)))")
            if model == nil { print("  tokens revoked: \(list(result.tokens))") }
            print("  sessions ended: \(list(result.sessions))")
            print("  wrapped keys removed: \(list(result.removedKeys))")
            if !result.rekeyed.isEmpty { print("  re-encrypted: \(list(result.rekeyed)) (every session open on them was revoked)") }
            if !result.toRekey.isEmpty {
                print("  to rekey (\(principal) could decrypt them): \(list(result.toRekey)); run coffer unshare --rekey, or coffer rekey each")
            }
            if !result.kept.isEmpty {
                print("  still held on a wider scope: \(list(result.kept.map(\.summaryText))); unshare \(principal) from that scope to end it")
            }
        }
    }
}

extension Grant {
    /// `reader on icu/`, `inference on m alias prod`.
    var summaryText: String { "\(role.rawValue) on \(scope)" + (alias.map { " alias \($0)" } ?? "") }
}
