import ArgumentParser
import CofferCrypto

/// Where the passphrase of an identity comes from: `--passphrase-file`, `COFFER_PASSPHRASE`, or a terminal prompt.
struct PassphraseOptions: ParsableArguments {
    @Option(name: .long, help: "Read the passphrase from FILE (one trailing newline is ignored).")
    var passphraseFile: String?

    /// Resolves the passphrase in order: file, environment, no-echo prompt; never a default.
    func passphrase(prompt: String, confirm: Bool = false) throws(CofferCryptoError) -> SecureBytes {
        if let passphraseFile { return try Passphrase.fromFile(passphraseFile) }
        if let fromEnvironment = try Passphrase.fromEnvironment() { return fromEnvironment }
        if let typed = try Passphrase.prompt(prompt, confirm: confirm) { return typed }
        throw .noPassphrase
    }

    /// Reads and decrypts the identity at `path`.
    func unlockIdentity(at path: String) throws(CofferCryptoError) -> UnlockedIdentity {
        let bytes = try FileBytes.read(path)
        _ = try Identity.publicIdentity(ofKeyFile: bytes, path: path)
        let passphrase = try passphrase(prompt: "Passphrase for \(path): ")
        return UnlockedIdentity(try Identity.decrypt(keyFile: bytes, passphrase: passphrase, path: path))
    }
}
