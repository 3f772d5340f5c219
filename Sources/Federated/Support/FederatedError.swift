/// What federated training refuses, each case carrying what the user needs; `description` is one line, fit to print
/// after `coffer: ` and exit non-zero, or to send back as an HTTP error body.
public enum FederatedError: Error, Equatable, CustomStringConvertible {
    case invalidParameter(String)
    case recipeMismatch(String)
    case malformedMessage(String)
    case signatureInvalid(String)
    case unknownSite(String)
    case staleRound(site: String, got: Int, current: Int)
    case wrongStage(site: String, got: String, current: String)
    case duplicate(String)
    case notInRound(String)
    case tampered(String)
    case malformedShare(String)
    case roundAborted(round: Int, reason: String)
    case timeout(String)
    case transport(String)
    /// TLS with the coordinator failed (an untrusted certificate, a name that does not match, a server without TLS):
    /// unlike a connection that fails, retrying cannot help.
    case tlsFailed(String)
    /// An `http` coordinator beyond loopback, not allowed: the global model sent every round would cross the network
    /// readable.
    case plainHTTPOffLoopback(host: String)
    case coordinatorRefused(String)
    case localData(String)
    case io(String)

    public var description: String {
        switch self {
        case .invalidParameter(let why): "invalid federation parameter: \(why)"
        case .recipeMismatch(let why): "recipe mismatch: \(why)"
        case .malformedMessage(let why): "malformed message: \(why)"
        case .signatureInvalid(let why): "signature does not verify: \(why)"
        case .unknownSite(let keyID): "unknown site \(keyID): not enrolled with this coordinator"
        case .staleRound(let site, let got, let current): "site \(site) sent a message for round \(got), the current round is \(current)"
        case .wrongStage(let site, let got, let current): "site \(site) sent a \(got) message during the \(current) stage"
        case .duplicate(let why): "replayed or duplicate message: \(why)"
        case .notInRound(let why): "not part of this round: \(why)"
        case .tampered(let why): "message tampered with: \(why)"
        case .malformedShare(let why): "malformed share: \(why)"
        case .roundAborted(let round, let reason): "round \(round) aborted: \(reason)"
        case .timeout(let why): "timed out: \(why)"
        case .transport(let why): "cannot reach the coordinator: \(why)"
        case .tlsFailed(let why): "cannot reach the coordinator: \(why)"
        case .plainHTTPOffLoopback(let host): "plain HTTP to \(host) would expose the global model on the network: use https, or pass --insecure"
        case .coordinatorRefused(let why): "the coordinator refused: \(why)"
        case .localData(let why): why
        case .io(let why): why
        }
    }
}
