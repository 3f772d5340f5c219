/// Everything that can go wrong in the crypto module, each case carrying what the user needs to act.
///
/// `description` is one line, fit to print after `coffer: ` and exit non-zero.
public enum CofferCryptoError: Error, Equatable, CustomStringConvertible {
    case notACofferFile
    case unsupportedVersion(Int)
    case unsupportedSuite(Int)
    case malformedHeader(String)
    case malformedChunk(String)
    case notARecipient
    case headerAuthenticationFailed
    case authenticationFailed(chunk: Int)
    case truncated(String)
    case trailingData(chunk: Int)
    case rangeOutOfBounds(start: Int, end: Int, length: Int)
    case rangeNeedsSeekableInput
    case notAnIdentityFile(String)
    case malformedIdentity(String)
    case wrongPassphrase
    case noPassphrase
    case emptyPassphrase
    case passphraseTooLong(Int)
    case invalidName(String)
    case io(path: String, reason: String)
    case malformedEnvelope(String)
    case malformedStatement(String)
    case signatureInvalid(keyID: String)
    case untrustedSigner(keyID: String)
    case unwrapFailed(String)
    case invalidKey(String)
    case invalidChunkSize(Int)
    case subjectMismatch(String)
    case agent(String)

    public var description: String {
        switch self {
        case .notACofferFile: "not a Coffer sealed file (bad magic)"
        case .unsupportedVersion(let v): "unsupported sealed-file version \(v) (this build reads version 1)"
        case .unsupportedSuite(let s): "unsupported cipher suite \(s) (this build reads suite 1)"
        case .malformedHeader(let why): "malformed sealed-file header: \(why)"
        case .malformedChunk(let why): "malformed sealed file: \(why)"
        case .notARecipient: "this identity is not a recipient of the file"
        case .headerAuthenticationFailed: "header authentication failed: the header was modified or the key is wrong"
        case .authenticationFailed(let chunk): "authentication failed at chunk \(chunk): the file was modified"
        case .truncated(let why): "truncated file: \(why)"
        case .trailingData(let chunk): "unexpected data after the final chunk (chunk \(chunk))"
        case .rangeOutOfBounds(let start, let end, let length): "range \(start):\(end) out of bounds for \(length) plaintext bytes"
        case .rangeNeedsSeekableInput: "--range needs a regular file as input, not a pipe"
        case .notAnIdentityFile(let path): "\(path) is not a Coffer identity file"
        case .malformedIdentity(let why): "malformed identity: \(why)"
        case .wrongPassphrase: "wrong passphrase (or the identity file was modified)"
        case .noPassphrase: "no passphrase: set COFFER_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal"
        case .emptyPassphrase: "the passphrase is empty"
        case .passphraseTooLong(let limit): "the passphrase is longer than \(limit) bytes"
        case .invalidName(let name): "invalid name '\(name)': use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        case .io(let path, let reason): "\(path): \(reason)"
        case .malformedEnvelope(let why): "malformed DSSE envelope: \(why)"
        case .malformedStatement(let why): "malformed in-toto statement: \(why)"
        case .signatureInvalid(let keyID): "signature by \(keyID) does not verify"
        case .untrustedSigner(let keyID): "signer \(keyID) is not trusted"
        case .unwrapFailed(let why): "cannot unwrap the data key: \(why)"
        case .invalidKey(let why): "invalid key: \(why)"
        case .invalidChunkSize(let size): "invalid chunk size \(size): use a power of two from 4 KiB to 16 MiB"
        case .subjectMismatch(let why): "attestation subject mismatch: \(why)"
        case .agent(let why): "agent: \(why)"
        }
    }
}
