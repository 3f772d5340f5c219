public import CofferRegistry

/// Why a call of ``CofferClient`` failed, in one line.
///
/// A server's refusal keeps its HTTP status and the server's own one-line message; everything the client checks
/// itself (the ledger it replays, signatures, digests) fails as the registry error it is.
public enum CofferClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server answered `status` with an error body: `message` is its one line (or the start of whatever else a
    /// server that is not Coffer's sent).
    case server(url: String, status: Int, message: String)
    /// No answer: the connection was refused, timed out, failed TLS, or broke off.
    case unreachable(url: String, reason: String)
    /// An answer that is not the API's: JSON that does not decode, a missing header, a blob of another size.
    case badAnswer(url: String, reason: String)
    /// A base URL, certificate file or argument the client cannot use (no request was made).
    case invalidInput(String)
    /// A check of the client's own failed: the ledger replay, a signature, a digest, the pull's placing of files.
    case registry(CofferRegistryError)

    /// The HTTP status of a server's refusal; nil for every other failure.
    public var status: Int? {
        if case .server(_, let status, _) = self { return status }
        return nil
    }

    public var description: String {
        switch self {
        case .server(let url, let status, let message): "\(url) answered \(status): \(message)"
        case .unreachable(let url, let reason): "cannot reach \(url): \(reason)"
        case .badAnswer(let url, let reason): "\(url) answered with something that is not Coffer's API: \(reason)"
        case .invalidInput(let reason): reason
        case .registry(let error): error.description
        }
    }
}
