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
        "file:\(Directories.resolved(home) ?? home)"
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

    /// - Throws: ``CofferRegistryError/io(path:reason:)`` when the newest valid copy does not decode (see ``newest(of:)``).
    public func remembered(_ root: String) throws(CofferRegistryError) -> Remembered? { try newest(of: root)?.remembered }

    /// Records what was just verified, never going back from what another process remembered meanwhile.
    public func remember(_ root: String, update: @escaping @Sendable (inout Remembered?) -> Void) async throws(CofferRegistryError) {
        try await locked { () throws(CofferRegistryError) in
            let newest = try newest(of: root)
            var current = newest?.remembered
            let before = current
            update(&current)
            guard let current, current != before else { return }
            let (generation, overflow) = (newest?.generation ?? 0).addingReportingOverflow(1)
            guard !overflow else { throw .io(path: copyPath(root, 0), reason: "cannot remember the registry's state: no generation left") }
            try writeCopy(current, of: root, slot: newest?.slot.map { 1 - $0 } ?? 0, generation: generation)
            // What the older client's file held is in the copy now (``newest(of:)`` merged it).
            unlink(olderClientsPath(root))
        }
    }

    /// What is remembered of `root`: the valid copy with the higher generation (docs/FORMAT.md, "Client memory"), merged
    /// with what an older client wrote, when there is such a file (a downgrade and an upgrade again): its state when it
    /// goes further, and each of its marks when that goes further. `slot` is the copy's, nil when there is none.
    ///
    /// A valid copy that does not decode is refused, not passed over: written by another Coffer (a later one, with a
    /// field this one reads otherwise), it may remember more than the other copy, and reading on from the older one,
    /// or from nothing, would accept a registry rolled back to it (helper-76).
    private func newest(of root: String) throws(CofferRegistryError) -> (slot: Int?, generation: UInt64, remembered: Remembered)? {
        // Headers first: only the newest valid copy's JSON is decoded (a state can be large).
        let copies = (0..<2).compactMap { slot in Self.copyHeader(copyPath(root, slot)).map { (slot, $0) } }
        var newest: (slot: Int?, generation: UInt64, remembered: Remembered)? = nil
        for (slot, copy) in copies.sorted(by: { $0.1.generation > $1.1.generation }) where Self.isWhole(copy) {
            guard let remembered = try? JSONDecoder().decode(Remembered.self, from: copy.json) else {
                throw .io(
                    path: copyPath(root, slot),
                    reason:
                        "what this client remembers of the registry does not decode (written by another version of Coffer?): use that version, or remove registries/\(root).0 and .1 to trust the registry anew, forgetting what was verified"
                )
            }
            newest = (slot, copy.generation, remembered)
            break
        }
        guard let older = Self.regularFile(olderClientsPath(root)).flatMap({ try? JSONDecoder().decode(Remembered.self, from: $0) }) else {
            return newest
        }
        guard var merged = newest?.remembered else { return (nil, 0, older) }
        if older.state.supersedes(merged.state) { merged.state = older.state }
        if let audit = older.audit, audit.seq > merged.audit?.seq ?? 0 { merged.audit = audit }
        if let head = older.head,
            head.ledgerSeq > merged.head?.ledgerSeq ?? 0 || (head.ledgerSeq == merged.head?.ledgerSeq && head.at > merged.head!.at)
        {
            merged.head = head
        }
        return (newest?.slot, newest?.generation ?? 0, merged)
    }

    /// Where a client before the two copies remembered `root`, in one file written by rename.
    private func olderClientsPath(_ root: String) -> String { "\(directory)/registries/\(root).json" }

    private func copyPath(_ root: String, _ slot: Int) -> String { "\(directory)/registries/\(root).\(slot)" }

    static let copyMagic = "coffer-memory 1"

    /// A copy's header and the JSON its length names; nil when the file is missing, not a regular file, or not a copy.
    static func copyHeader(_ path: String) -> (generation: UInt64, digest: String, json: Data)? {
        guard let data = regularFile(path), let newline = data.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let fields = String(decoding: data[..<newline], as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count == 5, "\(fields[0]) \(fields[1])" == copyMagic, let generation = UInt64(fields[2]), generation > 0,
            let length = Int(fields[3]), length >= 0, length <= data.count - newline - 1
        else { return nil }
        return (generation, String(fields[4]), data[(newline + 1)..<(newline + 1 + length)])
    }

    /// The contents of the regular file at `path`, not through a link (the writer would not write through one),
    /// without waiting on a FIFO put there, and up to 64 MiB.
    private static func regularFile(_ path: String) -> Data? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= 64 << 20 else {
            close(fd)
            return nil
        }
        let stream = FileDescriptorStream(ownedDescriptor: fd, path: path)
        var data = Data(count: Int(info.st_size))
        let n = data.withUnsafeMutableBytes { (try? stream.read(into: $0)) ?? -1 }
        guard n >= 0 else { return nil }
        return data.prefix(n)
    }

    /// Whether a copy's JSON has the digest its header names: it was not torn.
    static func isWhole(_ copy: (generation: UInt64, digest: String, json: Data)) -> Bool {
        Digest.hex(Digest.sha256(copy.json)) == copy.digest
    }

    /// A copy's contents when it is whole and they decode.
    static func decodeCopy(_ copy: (generation: UInt64, digest: String, json: Data)) -> Remembered? {
        guard isWhole(copy) else { return nil }
        return try? JSONDecoder().decode(Remembered.self, from: copy.json)
    }

    /// A copy's generation and contents; nil when it is missing, torn or not a copy.
    static func readCopy(_ path: String) -> (generation: UInt64, remembered: Remembered)? {
        copyHeader(path).flatMap { copy in decodeCopy(copy).map { (copy.generation, $0) } }
    }

    /// Overwrites copy `slot` in place and syncs it: the other copy stays whole whatever happens meanwhile. The copy's
    /// file is made only once: a file written anew and renamed took two syncs each time, and a new file's blocks and a
    /// rename for the journal to commit. The folder is synced when this makes the file, and whenever the slot held no
    /// valid copy, so that a file made by a write that then failed has its name made durable too. A link, a folder, or a
    /// file this user cannot write (made by root under `sudo` with this HOME) in a copy's place is replaced, as a rename
    /// replaced it.
    private func writeCopy(_ value: Remembered, of root: String, slot: Int, generation: UInt64) throws(CofferRegistryError) {
        let path = copyPath(root, slot)
        let failure = { (why: String) in CofferRegistryError.io(path: path, reason: "cannot remember the registry's state: \(why)") }
        let json: [UInt8]
        do { json = Array(try Self.encoder().encode(value)) } catch { throw failure("\(error)") }
        let bytes = Array("\(Self.copyMagic) \(generation) \(json.count) \(Digest.hex(Digest.sha256(json)))\n".utf8) + json
        do { try FileBytes.makePrivateDirectory(FileBytes.parentDirectory(of: path)) } catch { throw failure("\(error)") }
        let wasValid = Self.copyHeader(path).map(Self.isWhole) ?? false
        var fd = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        var info = stat()
        if fd >= 0, fstat(fd, &info) != 0 || info.st_mode & S_IFMT != S_IFREG {
            close(fd)
            fd = -1
            errno = EINVAL
        }
        let made = fd < 0
        if made {
            if errno != ENOENT, remove(path) != 0 { throw failure("cannot replace what is there: \(String(cString: strerror(errno)))") }
            fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        guard fd >= 0 else { throw failure(String(cString: strerror(errno))) }
        defer { close(fd) }
        guard bytes.withUnsafeBytes({ Directories.writeAll(fd, $0, at: 0) }), fdatasync(fd) == 0 else {
            throw failure(String(cString: strerror(errno)))
        }
        if made || !wasValid { Directories.sync(FileBytes.parentDirectory(of: path)) }
    }

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
