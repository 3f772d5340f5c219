import CLinux
import CSodium
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The `coffer agent` process: holds unlocked identities in sodium memory and signs and unwraps with them for
/// clients of the same uid (docs/FORMAT.md, "Agent socket protocol"; docs/THREAT_MODEL.md, "The agent").
///
/// One thread per connection, blocking I/O: an agent has a handful of clients, and each request is a signature or
/// a sealed-box open, so there is nothing to gain from an event loop and much to lose in clarity.
///
/// ```swift
/// let server = try AgentServer(socketPath: "\(directory)/agent.sock")
/// server.serve()   // returns never: `stop` ends the process
/// ```
public final class AgentServer: @unchecked Sendable {
    /// Connections served at once; one more is answered with error 10 and closed.
    static let maximumConnections = 64
    /// Identities held at once; one more is refused with error 11. It bounds the agent's memory and keeps a `list`
    /// answer (about 150 bytes an identity) far below the largest frame.
    static let maximumKeys = 1024

    public let socketPath: String
    private let listener: Int32
    private let uid = geteuid()
    private let state = NSLock()
    // Guarded by `state`.
    private var keys: [String: HeldKey] = [:]
    private var lockSeal: LockSeal?
    private var connections = 0
    /// Taken by `lock` and `unlock` for their whole work: one Argon2id at a time, and guesses at the lock's passphrase
    /// no faster over many connections than over one.
    private let passphraseGate = NSLock()
    // Guarded by `passphraseGate`: wrong `unlock` passphrases since the last right one.
    private var wrongGuesses = 0

    /// An identity and when it is to be wiped.
    private final class HeldKey: Sendable {
        let identity: UnlockedIdentity
        /// Unix seconds, as `list` reports it; 0 for never.
        let expires: UInt64
        /// Seconds on the boot-time clock, which setting the wall clock back does not move; 0 for never.
        let deadline: UInt64
        init(identity: UnlockedIdentity, ttl: UInt64) {
            self.identity = identity
            func after(_ now: UInt64) -> UInt64 { ttl == 0 ? 0 : (now.addingReportingOverflow(ttl).overflow ? UInt64.max : now + ttl) }
            self.expires = after(UInt64(max(0, time(nil))))
            self.deadline = after(AgentServer.bootSeconds())
        }
    }

    /// The Argon2id hash of the passphrase the agent was locked with, in sodium memory.
    private final class LockSeal: @unchecked Sendable {
        // Immutable after crypto_pwhash_str fills it, before the seal is shared.
        let hash = SecureBytes(count: crypto_pwhash_strbytes())
    }

    /// Binds `socketPath` (mode 0600) and makes the process non-dumpable, so other processes of the same uid cannot
    /// read its memory through ptrace or /proc.
    public init(socketPath: String) throws(CofferCryptoError) {
        _ = Sodium.ready
        _ = coffer_forbid_dumps()
        self.socketPath = socketPath
        self.listener = try AgentSocket.listen(socketPath)
        AgentCleanup.register(socketPath: socketPath)
    }

    /// Accepts connections until a `stop` request (or SIGTERM, SIGINT, SIGHUP) ends the process.
    public func serve() -> Never {
        let sweeper = Thread { [self] in
            // Expired keys are wiped within a second even when no request comes to notice them.
            while true {
                sleep(1)
                locked { sweepExpired() }
            }
        }
        sweeper.start()
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE { continue }
                AgentCleanup.exit(status: 1)
            }
            // The agent starts no programs, but a descriptor to it must never leak into one.
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            // Another uid hears only that it is refused, whether or not the agent is busy.
            if let refusal = refusal(of: client) {
                refuse(client, refusal)
                continue
            }
            let admitted = locked {
                guard connections < Self.maximumConnections else { return false }
                connections += 1
                return true
            }
            guard admitted else {
                refuse(client, AgentFailure(.busy, "the agent is serving \(Self.maximumConnections) connections already"))
                continue
            }
            let thread = Thread { [self] in
                serveConnection(client)
                close(client)
                locked { connections -= 1 }
            }
            thread.start()
        }
    }

    // MARK: - Connections

    /// Why the peer of `fd` is refused before anything is read: it is not the agent's uid.
    ///
    /// Root is refused too unless it is the agent's own uid: the socket's mode already keeps other users out, this holds
    /// even if the socket were exposed (a wider mode, a bind mount). The uid is the one that connected (SO_PEERCRED).
    private func refusal(of fd: Int32) -> AgentFailure? {
        guard let peer = AgentSocket.peerUID(fd) else { return AgentFailure(.refusedPeer, "refused: the peer's credentials cannot be read") }
        return peer == uid ? nil : AgentFailure(.refusedPeer, "refused: the agent serves uid \(uid) only, not uid \(peer)")
    }

    private func serveConnection(_ fd: Int32) {
        while true {
            let body: SecureBytes
            do {
                guard let received = try AgentSocket.receive(fd) else { return }
                body = received
            } catch AgentSocket.FrameError.size(let length) {
                send(fd, error: AgentFailure(.frameSize, "a frame of \(length) bytes (1 to \(AgentSocket.maximumBody) allowed)"))
                return
            } catch {
                return
            }
            let next = body.withUnsafeBytes { bytes -> Next in
                do throws(AgentFailure) {
                    let reply = try handle(try AgentRequest(parsing: bytes), body: bytes)
                    do { try AgentSocket.send(fd, frame: reply.frame) } catch { return .close }
                    return reply.stops ? .stop : .serve
                } catch {
                    send(fd, error: error)
                    return error.closesConnection ? .close : .serve
                }
            }
            switch next {
            case .serve: continue
            case .close: return
            case .stop: AgentCleanup.exit(status: 0)
            }
        }
    }

    /// What a connection does after a request.
    private enum Next { case serve, close, stop }

    /// Runs `body` holding `state` (NSLock's own withLock forgets typed errors).
    private func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        state.lock()
        defer { state.unlock() }
        return try body()
    }

    /// An answer frame, and whether the agent stops once it is sent.
    private struct Reply: ~Copyable {
        let frame: SecureBytes
        var stops = false
    }

    private func handle(_ request: AgentRequest, body: UnsafeRawBufferPointer) throws(AgentFailure) -> Reply {
        switch request {
        case .list:
            let listed: [(PublicIdentity, UInt64)] = locked {
                sweepExpired()
                guard lockSeal == nil else { return [] }
                return keys.values.map { ($0.identity.publicIdentity, $0.expires) }.sorted { ($0.0.name, $0.0.keyID) < ($1.0.name, $1.0.keyID) }
            }
            let length = 1 + 2 + listed.reduce(0) { $0 + AgentFieldSize.string($1.0.name) + AgentFieldSize.listing }
            var writer = AgentFrameWriter(bodyLength: length)
            writer.u8(AgentResponse.identitiesType)
            writer.u16(UInt16(listed.count))  // at most maximumKeys
            for (identity, expires) in listed {
                writer.string(identity.name)
                writer.bytes(identity.ed25519)
                writer.bytes(identity.x25519)
                writer.bytes(identity.p256)
                writer.u64(expires)
            }
            return Reply(frame: writer.finish())
        case .add(let name, let secrets, let ttl):
            let identity: Identity
            do throws(CofferCryptoError) {
                identity = try Identity(name: name, secrets: SecureBytes(copying: UnsafeRawBufferPointer(rebasing: body[secrets])))
            } catch {
                throw AgentFailure(.invalidKey, "the secrets do not make a valid identity (\(error.description))")
            }
            let held = HeldKey(identity: UnlockedIdentity(identity), ttl: ttl)
            try locked { () throws(AgentFailure) in
                try requireUnlocked()
                let keyID = held.identity.publicIdentity.keyID
                guard keys[keyID] != nil || keys.count < Self.maximumKeys else {
                    throw AgentFailure(.noRoom, "the agent holds \(Self.maximumKeys) identities already: remove some first")
                }
                keys[keyID] = held
            }
            return Self.ok()
        case .remove(let keyID):
            let hex = Digest.hex(keyID)
            try locked { () throws(AgentFailure) in
                try requireUnlocked()
                guard keys.removeValue(forKey: hex) != nil else { throw AgentFailure(.unknownIdentity, "the agent does not hold key \(hex)") }
            }
            return Self.ok()
        case .removeAll:
            try locked { () throws(AgentFailure) in
                try requireUnlocked()
                keys.removeAll()
            }
            return Self.ok()
        case .signEd25519(let keyID, let message):
            let signature = try held(keyID).identity.identity.signEd25519(message)
            return Self.signature(signature)
        case .signP256(let keyID, let message):
            let signature = try held(keyID).identity.identity.signP256(message)
            return Self.signature(signature)
        case .unwrap(let keyID, let encoded):
            let key = try held(keyID)
            let stanza: WrappedKey
            do throws(CofferCryptoError) { stanza = try WrappedKey(encoded: encoded) } catch {
                throw AgentFailure(.unwrapFailed, "the stanza does not parse: \(error.description)")
            }
            guard case .x25519 = stanza else { throw AgentFailure(.notARecipient, "not an X25519 stanza") }
            let dataKey: SecretKey
            do throws(CofferCryptoError) {
                dataKey = try stanza.unwrap(with: key.identity.identity)
            } catch .notARecipient {
                throw AgentFailure(.notARecipient, "this identity is not a recipient of the stanza")
            } catch {
                throw AgentFailure(.unwrapFailed, error.description)
            }
            var writer = AgentFrameWriter(bodyLength: 1 + SecretKey.byteCount)
            writer.u8(AgentResponse.dataKeyType)
            writer.bytes(secure: dataKey.bytes)
            return Reply(frame: writer.finish())
        case .lock(let passphrase):
            passphraseGate.lock()
            defer { passphraseGate.unlock() }
            try locked { () throws(AgentFailure) in try requireUnlocked(already: true) }
            let seal = LockSeal()
            let status = seal.hash.withUnsafeMutableBytes { out in
                crypto_pwhash_str(
                    out.baseAddress!.assumingMemoryBound(to: CChar.self),
                    body.baseAddress!.assumingMemoryBound(to: CChar.self) + passphrase.lowerBound,
                    UInt64(passphrase.count),
                    UInt64(KDFParameters.default.opsLimit),
                    Int(KDFParameters.default.memLimit)
                )
            }
            guard status == 0 else { throw AgentFailure(.noRoom, "the agent has no memory for Argon2id (32 MiB) to lock with") }
            locked { lockSeal = seal }  // no other lock runs meanwhile: the gate is held
            return Self.ok()
        case .unlock(let passphrase):
            passphraseGate.lock()
            defer { passphraseGate.unlock() }
            guard let seal = locked({ lockSeal }) else { return Self.ok() }
            let matches = seal.hash.withUnsafeBytes { hash in
                crypto_pwhash_str_verify(
                    hash.baseAddress!.assumingMemoryBound(to: CChar.self),
                    body.baseAddress!.assumingMemoryBound(to: CChar.self) + passphrase.lowerBound,
                    UInt64(passphrase.count)
                ) == 0
            }
            guard matches else {
                // On top of Argon2id's own cost, a second more for each wrong guess in a row (up to 10), the gate held.
                wrongGuesses = min(wrongGuesses + 1, 10)
                sleep(UInt32(wrongGuesses))
                throw AgentFailure(.wrongPassphrase, "wrong passphrase: the agent stays locked")
            }
            wrongGuesses = 0
            locked { lockSeal = nil }
            return Self.ok()
        case .stop:
            locked { keys.removeAll() }
            var reply = Self.ok()
            reply.stops = true
            return reply
        }
    }

    /// The key named by `keyID`, unless the agent is locked or does not hold it (an expired key is wiped here).
    private func held(_ keyID: [UInt8]) throws(AgentFailure) -> HeldKey {
        let hex = Digest.hex(keyID)
        return try locked { () throws(AgentFailure) -> HeldKey in
            try requireUnlocked()
            sweepExpired()
            guard let key = keys[hex] else { throw AgentFailure(.unknownIdentity, "the agent does not hold key \(hex) (removed, or expired)") }
            return key
        }
    }

    /// Call with `state` held; `already` for a `lock` request.
    private func requireUnlocked(already: Bool = false) throws(AgentFailure) {
        guard lockSeal == nil else {
            throw AgentFailure(.locked, already ? "the agent is locked already" : "the agent is locked: run coffer agent unlock")
        }
    }

    /// Drops (and so wipes) every key past its expiry. Call with `state` held.
    private func sweepExpired() {
        let now = Self.bootSeconds()
        keys = keys.filter { $0.value.deadline == 0 || $0.value.deadline > now }
    }

    /// Seconds since boot, suspend included (CLOCK_BOOTTIME).
    static func bootSeconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_BOOTTIME, &now)
        return UInt64(now.tv_sec)
    }

    // MARK: - Answers

    private static func ok() -> Reply {
        var writer = AgentFrameWriter(bodyLength: 1)
        writer.u8(AgentResponse.okType)
        return Reply(frame: writer.finish())
    }

    private static func signature(_ signature: [UInt8]) -> Reply {
        var writer = AgentFrameWriter(bodyLength: 1 + 4 + signature.count)
        writer.u8(AgentResponse.signatureType)
        writer.blob(signature)
        return Reply(frame: writer.finish())
    }

    private func send(_ fd: Int32, error failure: AgentFailure) {
        var message = failure.message
        while message.utf8.count > 1024 { message.removeLast() }
        var writer = AgentFrameWriter(bodyLength: 1 + 1 + AgentFieldSize.string(message))
        writer.u8(AgentResponse.errorType)
        writer.u8(failure.rawCode)
        writer.string(message)
        try? AgentSocket.send(fd, frame: writer.finish())
    }

    private func refuse(_ fd: Int32, _ failure: AgentFailure) {
        send(fd, error: failure)
        close(fd)
    }
}

// MARK: - Cleanup

/// Removes the socket and its private directory when the agent ends, by `stop` or by a signal.
///
/// The paths are C strings made once, so the signal handler only calls async-signal-safe functions.
enum AgentCleanup {
    nonisolated(unsafe) private static var socket: UnsafeMutablePointer<CChar>?
    nonisolated(unsafe) private static var directory: UnsafeMutablePointer<CChar>?

    static func register(socketPath: String) {
        socket = strdup(socketPath)
        let parent = FileBytes.parentDirectory(of: socketPath)
        // Only a directory the agent made for itself is removed with it.
        if (parent as NSString).lastPathComponent.hasPrefix("coffer-agent.") { directory = strdup(parent) }
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            Glibc.signal(signal) { _ in
                AgentCleanup.removeFiles()
                _exit(0)
            }
        }
    }

    static func removeFiles() {
        if let socket { unlink(socket) }
        if let directory { rmdir(directory) }
    }

    /// Removes the files and exits; the process's memory, keys included, goes with it.
    static func exit(status: Int32) -> Never {
        removeFiles()
        _exit(status)
    }
}
