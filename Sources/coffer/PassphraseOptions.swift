import ArgumentParser
import CofferCrypto

/// Where the passphrase of an identity comes from: `--passphrase-file`, `COFFER_PASSPHRASE`, or a terminal prompt;
/// or no passphrase at all when the `coffer agent` at `COFFER_AGENT_SOCK` holds the identity.
struct PassphraseOptions: ParsableArguments {
    @Option(name: .long, help: "Read the passphrase from FILE (one trailing newline is ignored).")
    var passphraseFile: String?

    @Flag(name: .long, help: "Say where each identity's private keys come from (the agent, or the key file and its passphrase).")
    var verbose = false

    /// Resolves the passphrase in order: file, environment, no-echo prompt; never a default.
    func passphrase(prompt: String, confirm: Bool = false) throws(CofferCryptoError) -> SecureBytes {
        if let passphraseFile {
            UserConfig.warnIfOthersCanRead(passphraseFile, what: "passphrase file")
            return try Passphrase.fromFile(passphraseFile)
        }
        if let fromEnvironment = try Passphrase.fromEnvironment() { return fromEnvironment }
        if let typed = try Passphrase.prompt(prompt, confirm: confirm) { return typed }
        throw .noPassphrase
    }

    /// The identity at `path`: held by the agent when it holds it (no passphrase asked), else decrypted here.
    ///
    /// - Parameter useAgent: `false` for processes that outlive a key's TTL (`serve`, `federated`), which keep a
    ///   copy of their own rather than stop when the agent's copy expires.
    func unlockIdentity(at path: String, useAgent: Bool = true) throws(CofferCryptoError) -> UnlockedIdentity {
        let bytes = try FileBytes.read(path)
        let publicIdentity = try Identity.publicIdentity(ofKeyFile: bytes, path: path)
        if useAgent, let held = agentIdentity(publicIdentity, path: path) { return UnlockedIdentity(held) }
        let passphrase = try passphrase(prompt: "Passphrase for \(path): ")
        if verbose { note("\(publicIdentity.name) (\(publicIdentity.keyID)): unlocked from \(path) with its passphrase") }
        return UnlockedIdentity(try Identity.decrypt(keyFile: bytes, passphrase: passphrase, path: path))
    }

    /// The agent's handle on `publicIdentity`, or `nil` (no agent, an agent that cannot be reached or does not hold it:
    /// the passphrase is asked then, as without an agent).
    private func agentIdentity(_ publicIdentity: PublicIdentity, path: String) -> Identity? {
        let agent: AgentConnection
        do {
            guard let connected = try AgentConnection.fromEnvironment() else { return nil }
            agent = connected
        } catch {
            if verbose { note("\(error.description); asking for the passphrase of \(path)") }
            return nil
        }
        do {
            // A lost agent mid-command ends it with one line; the registry's crash guarantees cover what was under way.
            guard let held = try agent.identity(for: publicIdentity, onLost: { Coffer.fail($0.description) }) else {
                if verbose {
                    let who = "\(publicIdentity.name) (\(publicIdentity.keyID))"
                    note("the agent at \(agent.path) does not hold \(who): not added, expired, or the agent is locked")
                }
                return nil
            }
            if verbose { note("\(publicIdentity.name) (\(publicIdentity.keyID)): using the agent at \(agent.path), no passphrase") }
            return held
        } catch {
            if verbose { note("\(error.description); asking for the passphrase of \(path)") }
            return nil
        }
    }

    private func note(_ line: String) {
        FileDescriptorStream.standardError.writeLine("coffer: \(line)")
    }
}

/// `--accept-weak-passphrase`, on the commands that choose a passphrase for a key file (`keygen`, `init`, `key rotate`).
struct NewPassphraseOptions: ParsableArguments {
    @Flag(name: .long, help: "Accept a passphrase under the strength floor (12 characters, 6 different, about 48 bits); a warning is printed.")
    var acceptWeakPassphrase = false

    /// Refuses a weak `passphrase` (one line naming the rule it breaks) unless accepted, then warns.
    func check(_ passphrase: borrowing SecureBytes) throws(CLIError) {
        guard let weakness = Passphrase.weakness(passphrase) else { return }
        guard acceptWeakPassphrase else {
            throw CLIError("the new passphrase is weak (\(weakness)): choose a longer one, or pass --accept-weak-passphrase")
        }
        FileDescriptorStream.standardError.writeLine("coffer: warning: the new passphrase is weak (\(weakness)); accepted as asked")
    }
}
