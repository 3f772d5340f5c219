public import CofferCrypto

/// Everything the registry refuses, each with a one-line message naming what is wrong.
public enum CofferRegistryError: Error, Equatable, CustomStringConvertible {
    case notARegistry(String)
    case registryExists(String)
    case invalidName(String)
    case invalidVersion(String)
    case invalidReference(String)
    case invalidDataset(String)
    case unknownModel(String)
    case unknownVersion(String)
    case unknownAlias(String)
    case versionExists(String)
    case invalidPath(String, reason: String)
    case duplicatePath(String)
    case noFiles
    case invalidPrivacy(String)
    case invalidFilter(String)
    case untrustedSigner(keyID: String)
    case notARecipient(String)
    case tampered(String)
    case destinationExists(String)
    case refused(String)
    case principalExists(String)
    case unknownPrincipal(String)
    case sessionRefused(String)
    case unknownSession(String)
    case unauthenticated(String)
    case invalidInput(String)
    case noBudget(String)
    case budgetExceeded(String)
    case policyViolation(String)
    case erased(String)
    case registryKeyRetired(held: String, current: String)
    case databaseBusy
    /// Another writer appended to the ledger while a change was prepared on the older end: prepare it again.
    case ledgerMoved
    case unknownUpload(String)
    /// A resumable upload appended at another offset than where it stands.
    case uploadOffset(current: Int, asked: Int)
    /// The blob store no longer reaches the upload where its record says it stands (distribution refuses a `Location`
    /// older than its last accepted `PATCH`, and only that newer one reaches the session): the bytes it had are lost.
    case uploadSessionLost(engine: String, reason: String)
    /// The upload's session was lost and a new one started: the client sends the blob again from byte 0.
    case uploadRestarted(String)
    case tooManyUploads(String)
    case uploadTooLarge(limit: Int)
    /// A storage engine could not be used (unreachable, refused credentials, answered wrongly).
    case unavailable(engine: String, reason: String)
    case database(String)
    case io(path: String, reason: String)
    case crypto(CofferCryptoError)

    public var description: String {
        switch self {
        case .notARegistry(let path): "\(path) is not a Coffer registry (run coffer init)"
        case .registryExists(let path): "\(path) already holds a Coffer registry"
        case .invalidName(let name): "invalid model name '\(name)': use A-Z a-z 0-9 . _ - and / between namespace parts"
        case .invalidVersion(let version): "invalid version '\(version)': use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        case .invalidReference(let text): "invalid reference '\(text)': use NAME, NAME:VERSION or NAME@ALIAS"
        case .invalidDataset(let id):
            "invalid dataset id '\(id)': use up to 200 characters from A-Z a-z 0-9 . _ : / @ + -, starting with a letter or digit"
        case .unknownModel(let name): "unknown model \(name)"
        case .unknownVersion(let ref): "unknown version \(ref)"
        case .unknownAlias(let ref): "unknown alias \(ref)"
        case .versionExists(let ref): "version \(ref) already exists (versions are immutable)"
        case .invalidPath(let path, let reason): "\(path): \(reason)"
        case .duplicatePath(let path): "two inputs map to the same path \(path)"
        case .noFiles: "nothing to push: the paths hold no files"
        case .invalidPrivacy(let why): "invalid privacy metadata: \(why)"
        case .invalidFilter(let why): "invalid --where expression: \(why)"
        case .untrustedSigner(let keyID): "version signed by \(keyID), which is not a trusted signer (coffer trust add)"
        case .notARecipient(let ref): "this identity holds no key for \(ref)"
        case .tampered(let what): "integrity check failed: \(what)"
        case .destinationExists(let path): "\(path) already exists; pull into an empty directory"
        case .refused(let why): "refused: \(why)"
        case .principalExists(let name): "principal \(name) already exists (or its key is already registered)"
        case .unknownPrincipal(let name): "unknown principal \(name)"
        case .sessionRefused(let why): "session refused: \(why)"
        case .unknownSession(let id): "unknown session \(id)"
        case .unauthenticated(let why): "unauthenticated: \(why)"
        case .invalidInput(let why): "\(why)"
        case .noBudget(let dataset): "dataset \(dataset) has no budget (coffer budget set)"
        case .budgetExceeded(let why): "privacy budget exceeded: \(why)"
        case .policyViolation(let why): "policy refused: \(why)"
        case .erased(let what): "\(what)"
        case .registryKeyRetired(let held, let current):
            "this server holds the registry key \(held), which was retired: the registry's key is now \(current) (restart coffer serve with it)"
        case .databaseBusy: "the registry database is locked by another process (busy timeout expired); try again"
        case .ledgerMoved: "the registry changed while this change was prepared; try again"
        case .unknownUpload(let id): "no such upload \(id) (finished, expired, or collected by gc)"
        case .uploadOffset(let current, let asked): "the upload is at offset \(current), not \(asked): resume from \(current)"
        case .uploadSessionLost(let engine, let reason): "\(engine): \(reason)"
        case .uploadRestarted(let why): "\(why): the upload starts again at byte 0"
        case .tooManyUploads(let why): why
        case .uploadTooLarge(let limit): "an upload may not exceed \(limit) bytes"
        case .unavailable(let engine, let reason): "\(engine): \(reason)"
        case .database(let why): "registry database error: \(why)"
        case .io(let path, let reason): "\(path): \(reason)"
        case .crypto(let error): error.description
        }
    }
}
