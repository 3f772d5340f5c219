import ArgumentParser
import CofferCrypto

#if canImport(Glibc)
import Glibc
#endif

extension Coffer {
    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "keygen",
            abstract: "Create an identity: NAME.key (encrypted private keys), NAME.pub and NAME.pem (public)."
        )

        @Option(name: .long, help: "Path prefix DIR/NAME of the files to write; NAME is the identity's name.")
        var out: String

        @OptionGroup var passphraseOptions: PassphraseOptions
        @OptionGroup var newPassphrase: NewPassphraseOptions

        @Flag(name: .long, help: "Replace existing files.")
        var force = false

        @Option(name: .long, help: "Argon2id memory in KiB (8 to 4194304).")
        var kdfMemory: UInt64 = KDFParameters.default.memLimit >> 10

        @Option(name: .long, help: "Argon2id passes (1 to 64).")
        var kdfOps: UInt64 = KDFParameters.default.opsLimit

        func validate() throws {
            guard KDFParameters.acceptable(KDFParameters(opsLimit: kdfOps, memLimit: kdfMemory << 10)) else {
                throw ValidationError("--kdf-memory must be 8 to 4194304 KiB and --kdf-ops 1 to 64")
            }
        }

        func run() throws {
            let slash = out.lastIndex(of: "/")
            let name = slash.map { String(out[out.index(after: $0)...]) } ?? out
            let directory = slash.map { String(out[..<$0]) } ?? "."
            try PublicIdentity.validate(name: name)
            if !directory.isEmpty, access(directory, F_OK) != 0, mkdir(directory, 0o700) != 0 {
                throw CofferCryptoError.io(path: directory, reason: String(cString: strerror(errno)))
            }
            let paths = (key: out + ".key", pub: out + ".pub", pem: out + ".pem")
            if !force {
                for path in [paths.key, paths.pub, paths.pem] where access(path, F_OK) == 0 {
                    throw CLIError("\(path) already exists (use --force to replace it)")
                }
            }
            let passphrase = try passphraseOptions.passphrase(prompt: "Passphrase for the new identity: ", confirm: true)
            try newPassphrase.check(passphrase)
            let identity = try Identity.generate(name: name)
            let keyFile = try identity.encrypt(passphrase: passphrase, parameters: KDFParameters(opsLimit: kdfOps, memLimit: kdfMemory << 10))
            let pem = try SignatureVerifier.p256PEM(publicKey: identity.publicIdentity.p256)
            // The three together or none: a new private key beside an old public one would lose the old key for nothing.
            try FileBytes.writeTogether(
                [(paths.key, keyFile, 0o600), (paths.pub, identity.publicIdentity.jsonBytes, 0o644), (paths.pem, Array(pem.utf8), 0o644)],
                overwrite: force
            )
            print("identity \(name) \(identity.publicIdentity.keyID)")
            print("  private: \(paths.key)")
            print("  public:  \(paths.pub)")
            print("  P-256:   \(paths.pem)")
        }
    }
}
