import CofferCrypto
public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What this user's client remembers of the registries it has used, outside any registry directory (docs/FORMAT.md,
/// "Client memory"): the root key pinned for each location, and the last ledger state and audit head it verified,
/// so that a registry that goes back (a restored older copy, a server replaying old answers) is refused.
///
/// Nothing here is secret; it is the client's own trust anchor, as `~/.ssh/known_hosts` is, so it lives under the
/// user's state directory (mode 0700), never beside the registry a directory writer controls.
public struct ClientMemory: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// `$COFFER_STATE_DIR`, else `$XDG_STATE_HOME/coffer`, else `~/.local/state/coffer`.
    public static func standard(environment: [String: String] = ProcessInfo.processInfo.environment) -> ClientMemory {
        ClientMemory(directory: StateDirectory.path(environment: environment))
    }

    /// What is remembered of one registry, by its root key ID.
    public struct Remembered: Sendable, Codable, Equatable {
        public var state: LedgerState
        /// The newest audit entry this client saw verified.
        public var audit: LedgerState.AuditMark?
        /// The newest state head this client accepted (remote registries).
        public var head: HeadMark?

        public struct HeadMark: Sendable, Codable, Equatable {
            public var at: String
            public var ledgerSeq: Int64

            enum CodingKeys: String, CodingKey {
                case at
                case ledgerSeq = "ledger_seq"
            }
        }
    }

    /// `file:/abs/path` for a registry directory.
    public static func location(home: String) -> String {
        guard let resolved = realpath(home, nil) else { return "file:\(home)" }
        defer { free(resolved) }
        return "file:\(String(cString: resolved))"
    }

    /// The scheme, host, port and path of a served registry, as its pin is named: one name however the URL is written
    /// (scheme and host in any case, the scheme's default port given or not, a query or fragment), so that a spelling
    /// the user has not used before does not make a fresh pin on first use (helper-38).
    public static func location(url: URL) -> String {
        guard var parts = URLComponents(url: url, resolvingAgainstBaseURL: true), let scheme = parts.scheme?.lowercased() else {
            var text = url.absoluteString
            while text.hasSuffix("/") { text.removeLast() }
            return text
        }
        parts.scheme = scheme
        parts.host = parts.host?.lowercased()
        if (scheme, parts.port) == ("https", 443) || (scheme, parts.port) == ("http", 80) { parts.port = nil }
        parts.query = nil
        parts.fragment = nil
        parts.user = nil
        parts.password = nil
        while parts.percentEncodedPath.hasSuffix("/") { parts.percentEncodedPath.removeLast() }
        return parts.string ?? url.absoluteString
    }

    public func pin(for location: String) -> String? { pins()[location] }

    public func setPin(_ root: String, for location: String) async throws(CofferRegistryError) {
        try await locked { () throws(CofferRegistryError) in
            var all = pins()
            all[location] = root
            try write(all, to: "\(directory)/pins.json")
        }
    }

    /// Every pinned location and its root key ID.
    public func pins() -> [String: String] {
        guard let data = FileManager.default.contents(atPath: "\(directory)/pins.json") else { return [:] }
        return (try? JSONDecoder().decode([String: String].self, from: data)) ?? [:]
    }

    public func remembered(_ root: String) -> Remembered? {
        guard let data = FileManager.default.contents(atPath: path(root)) else { return nil }
        return try? JSONDecoder().decode(Remembered.self, from: data)
    }

    /// Records what was just verified, never going back from what another process remembered meanwhile.
    public func remember(_ root: String, update: @escaping @Sendable (inout Remembered?) -> Void) async throws(CofferRegistryError) {
        try await locked { () throws(CofferRegistryError) in
            var current = remembered(root)
            let before = current
            update(&current)
            guard let current, current != before else { return }
            try write(current, to: path(root))
        }
    }

    private func path(_ root: String) -> String { "\(directory)/registries/\(root).json" }

    /// How the memory's files are written (``ClientMemory/warmUp()`` writes the same way).
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    private func write(_ value: some Encodable, to path: String) throws(CofferRegistryError) {
        let encoder = Self.encoder()
        do {
            try FileBytes.makePrivateDirectory(FileBytes.parentDirectory(of: path))
            try FileBytes.write(Array(try encoder.encode(value)), to: path, mode: 0o600, overwrite: true)
        } catch let error as CofferCryptoError {
            throw .io(path: path, reason: "cannot remember the registry's state: \(error)")
        } catch {
            throw .io(path: path, reason: "cannot remember the registry's state: \(error)")
        }
    }

    /// Runs `body` holding an exclusive lock on the memory directory, so concurrent commands do not lose updates.
    ///
    /// On a thread of its own: the lock waits for other processes and threads, and the durable write behind it fsyncs
    /// twice. On Swift's cooperative pool (one thread a core) those waits stalled every other task: with the registry
    /// suite's tests all remembering into one directory on PostgreSQL, a test that takes 2 s alone took 60-270 s.
    private func locked(_ body: @escaping @Sendable () throws(CofferRegistryError) -> Void) async throws(CofferRegistryError) {
        let directory = directory
        try await Offload.run { () throws(CofferRegistryError) in
            do {
                try FileBytes.makePrivateDirectory(directory)
            } catch {
                throw .io(path: directory, reason: "cannot create the client state directory: \(error)")
            }
            let fd = open("\(directory)/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .io(path: directory, reason: String(cString: strerror(errno))) }
            defer { close(fd) }
            flock(fd, LOCK_EX)
            defer { flock(fd, LOCK_UN) }
            try body()
        }
    }
}
