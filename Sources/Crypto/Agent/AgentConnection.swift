import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A client's connection to a `coffer agent` (docs/FORMAT.md, "Agent socket protocol").
///
/// One connection serves a whole command: requests go one at a time, under a lock, so the signing and unwrapping
/// calls of concurrent tasks share it safely. The connection is closed when the last reference goes.
///
/// ```swift
/// let agent = try AgentConnection(path: socketPath)
/// if let held = try agent.identity(for: publicIdentity, onLost: { fail($0.description) }) { /* sign with held */ }
/// ```
public final class AgentConnection: @unchecked Sendable {
    /// The environment variable naming the agent's socket.
    public static let environmentVariable = "COFFER_AGENT_SOCK"

    public let path: String
    private let fd: Int32
    // Serialises whole request-answer exchanges on the one socket.
    private let lock = NSLock()

    /// Connects to the agent at `path`.
    public init(path: String) throws(CofferCryptoError) {
        self.path = path
        self.fd = try AgentSocket.connect(path)
    }

    /// The agent named by `COFFER_AGENT_SOCK`, or `nil` when it is unset or empty.
    public static func fromEnvironment() throws(CofferCryptoError) -> AgentConnection? {
        guard let value = getenv(environmentVariable), value.pointee != 0 else { return nil }
        return try AgentConnection(path: String(cString: value))
    }

    deinit { close(fd) }

    // MARK: - Requests

    /// The identities the agent holds (none while it is locked).
    public func list() throws(CofferCryptoError) -> [AgentListing] {
        switch try exchange(Self.frame([AgentRequest.listType])) {
        case .identities(let listed): return listed
        default: throw unexpected()
        }
    }

    /// Hands `identity`'s private keys to the agent, to be wiped there after `ttl` seconds (0: when removed).
    public func add(_ identity: borrowing Identity, ttl: UInt64) throws(CofferCryptoError) {
        guard identity.agent == nil else { throw .agent("this identity is already held by an agent") }
        let name = identity.publicIdentity.name
        var writer = AgentFrameWriter(bodyLength: 1 + AgentFieldSize.string(name) + 96 + 8)
        writer.u8(AgentRequest.addType)
        writer.string(name)
        writer.bytes(secure: identity.secretBytes())
        writer.u64(ttl)
        try expectOK(try exchange(writer.finish()))
    }

    /// Removes one identity, by key ID (hex).
    public func remove(keyID: String) throws(CofferCryptoError) {
        guard let raw = Digest.bytes(fromHex: keyID), raw.count == 16 else { throw .agent("'\(keyID)' is not a key ID (32 hex digits)") }
        try expectOK(try exchange(Self.frame([AgentRequest.removeType] + raw)))
    }

    /// Removes every identity.
    public func removeAll() throws(CofferCryptoError) {
        try expectOK(try exchange(Self.frame([AgentRequest.removeAllType])))
    }

    /// Locks the agent under `passphrase`.
    public func lock(passphrase: borrowing SecureBytes) throws(CofferCryptoError) {
        try expectOK(try exchange(Self.passphraseFrame(AgentRequest.lockType, passphrase)))
    }

    /// Unlocks the agent with the passphrase it was locked with.
    public func unlock(passphrase: borrowing SecureBytes) throws(CofferCryptoError) {
        try expectOK(try exchange(Self.passphraseFrame(AgentRequest.unlockType, passphrase)))
    }

    /// Asks the agent to wipe its keys and exit.
    public func stop() throws(CofferCryptoError) {
        try expectOK(try exchange(Self.frame([AgentRequest.stopType])))
    }

    /// An ``Identity`` whose private keys stay in the agent, or `nil` when the agent does not hold `publicIdentity`.
    ///
    /// - Parameter onLost: called when a signature cannot be had (the agent went away, the key expired): signing
    ///   has no error path, so the face that owns the process decides how it ends (one line, non-zero exit).
    public func identity(
        for publicIdentity: PublicIdentity,
        onLost: @escaping @Sendable (CofferCryptoError) -> Never
    ) throws(CofferCryptoError) -> Identity? {
        guard try list().contains(where: { $0.identity == publicIdentity }) else { return nil }
        return Identity(agentHeld: publicIdentity, key: AgentKey(connection: self, onLost: onLost))
    }

    func signEd25519(keyID: [UInt8], message: [UInt8]) throws(CofferCryptoError) -> [UInt8] {
        try signature(type: AgentRequest.signEd25519Type, keyID: keyID, message: message)
    }

    func signP256(keyID: [UInt8], message: [UInt8]) throws(CofferCryptoError) -> [UInt8] {
        try signature(type: AgentRequest.signP256Type, keyID: keyID, message: message)
    }

    /// Asks the agent to open `stanza`; the data key goes from the answer frame straight into a ``SecretKey``.
    func unwrap(keyID: [UInt8], stanza: [UInt8]) throws(CofferCryptoError) -> SecretKey {
        let answer = try exchangeKeepingFrame(Self.frame([AgentRequest.unwrapType] + keyID + Self.blob(stanza)))
        switch answer.response {
        case .dataKey(let range): return SecretKey(bytes: answer.body.slice(range))
        case .failure(let failure): throw Self.error(failure)
        default: throw unexpected()
        }
    }

    private func signature(type: UInt8, keyID: [UInt8], message: [UInt8]) throws(CofferCryptoError) -> [UInt8] {
        guard message.count <= AgentSocket.maximumBody - 64 else { throw .agent("a message of \(message.count) bytes is too long for the agent") }
        switch try exchange(Self.frame([type] + keyID + Self.blob(message))) {
        case .signature(let signature): return signature
        default: throw unexpected()
        }
    }

    // MARK: - Exchanges

    private struct Answer: ~Copyable {
        let body: SecureBytes
        let response: AgentResponse
    }

    /// Sends a request and reads its answer; an `error` answer becomes the matching ``CofferCryptoError``.
    private func exchange(_ frame: consuming SecureBytes) throws(CofferCryptoError) -> AgentResponse {
        let answer = try exchangeKeepingFrame(frame)
        if case .failure(let failure) = answer.response { throw Self.error(failure) }
        return answer.response
    }

    private func exchangeKeepingFrame(_ frame: consuming SecureBytes) throws(CofferCryptoError) -> Answer {
        lock.lock()
        defer { lock.unlock() }
        // A send that fails may still have an answer waiting: an agent that refuses a connection answers, then
        // closes, possibly before the request is through.
        var sendFailure: (any Error)? = nil
        do { try AgentSocket.send(fd, frame: frame) } catch { sendFailure = error }
        let body: SecureBytes
        do {
            guard let received = try AgentSocket.receive(fd) else { throw AgentSocket.FrameError.closed("connection closed") }
            body = received
        } catch {
            throw .agent("lost the connection to the agent at \(path) (\(Self.reason(sendFailure ?? error))): was it stopped?")
        }
        let response: AgentResponse
        do throws(AgentFailure) {
            response = try body.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) throws(AgentFailure) in try AgentResponse(parsing: bytes) }
        } catch {
            throw .agent("the agent at \(path) answered something this version cannot read (\(error.message))")
        }
        return Answer(body: body, response: response)
    }

    private static func reason(_ error: any Error) -> String {
        switch error as? AgentSocket.FrameError {
        case .closed(let why): why
        case .size(let length): "an answer of \(length) bytes"
        case nil: "\(error)"
        }
    }

    private func expectOK(_ response: AgentResponse) throws(CofferCryptoError) {
        guard case .ok = response else { throw unexpected() }
    }

    private func unexpected() -> CofferCryptoError { .agent("the agent at \(path) gave an answer that does not fit the request") }

    /// The error a command reports for an agent's `error` answer.
    static func error(_ failure: AgentFailure) -> CofferCryptoError {
        switch failure.code {
        case .notARecipient: .notARecipient
        case .unwrapFailed: .unwrapFailed(failure.message)
        case .unknown: .agent("the agent refused (code \(failure.rawCode)): \(failure.message)")
        default: .agent(failure.message)
        }
    }

    // MARK: - Frames

    private static func blob(_ bytes: [UInt8]) -> [UInt8] {
        let n = UInt32(bytes.count)
        return [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 24)] + bytes
    }

    /// A frame around a body with no secret in it.
    private static func frame(_ body: [UInt8]) -> SecureBytes {
        var writer = AgentFrameWriter(bodyLength: body.count)
        writer.bytes(body)
        return writer.finish()
    }

    private static func passphraseFrame(_ type: UInt8, _ passphrase: borrowing SecureBytes) -> SecureBytes {
        var writer = AgentFrameWriter(bodyLength: 1 + 4 + passphrase.count)
        writer.u8(type)
        writer.u32(UInt32(passphrase.count))
        writer.bytes(secure: passphrase)
        return writer.finish()
    }
}

/// How an agent-held ``Identity`` reaches its private keys.
struct AgentKey: Sendable {
    let connection: AgentConnection
    let onLost: @Sendable (CofferCryptoError) -> Never
}
