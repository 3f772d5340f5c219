public import CofferCrypto
public import Foundation
import Synchronization

/// What a refusal is counted under when refusals are written in batches: who, doing what, to what, and why.
public struct RefusalKey: Hashable, Sendable {
    public var principal: String
    public var action: String
    public var target: String
    public var reason: String

    public init(principal: String, action: String, target: String = "-", reason: String) {
        self.principal = principal
        self.action = action
        self.target = target
        self.reason = reason
    }
}

/// One entry of the audit log.
public struct AuditEntry: Sendable, Equatable, Codable {
    public enum Outcome: String, Sendable, Codable { case ok, refused, failed }

    public var seq: Int64
    public var at: String
    public var principal: String
    public var action: String
    public var target: String
    public var outcome: Outcome
    public var reason: String

    func hash(previous: [UInt8]) -> [UInt8] {
        var message = AuditMessage()
        message.start(seq: seq)
        for field in [at, principal, action, target, outcome.rawValue, reason] { message.field(field.utf8) }
        return message.hash(previous: previous)
    }
}

/// Why a walk of the audit chain stopped, in words.
struct AuditChainProblem: Error {
    let why: String
    init(_ why: String) { self.why = why }
}

/// The bytes an entry's hash covers: "coffer/v1/audit" || u64be(seq) || each field as u32be(length) || UTF-8 ||
/// prev_hash (docs/FORMAT.md), fields in the order at, principal, action, target, outcome, reason. One buffer,
/// reused from entry to entry.
struct AuditMessage {
    private var bytes: [UInt8] = []

    mutating func start(seq: Int64) {
        bytes.removeAll(keepingCapacity: true)
        bytes.append(contentsOf: "coffer/v1/audit".utf8)
        Self.appendBigEndian(UInt64(seq), to: &bytes)
    }

    mutating func field(_ content: some Collection<UInt8>) {
        Self.appendBigEndian(UInt32(content.count), to: &bytes)
        bytes.append(contentsOf: content)
    }

    mutating func hash(previous: some Collection<UInt8>) -> [UInt8] {
        bytes.append(contentsOf: previous)
        return Digest.sha256(bytes)
    }

    /// Checks the row `seq` of a chain walk (``MetadataStore/forEachAuditEntry(after:through:_:)``'s columns) against
    /// the entry before it (`lastSeq`, whose hash is `previous`): its number follows, it links to `previous`, and its
    /// stored hash is its own. Returns its hash, or what is wrong.
    mutating func check(
        _ seq: Int64,
        after lastSeq: Int64,
        previous: [UInt8],
        _ column: (Int) -> UnsafeRawBufferPointer
    ) -> Result<[UInt8], AuditChainProblem> {
        guard seq == lastSeq + 1 else { return .failure(.init("entry \(lastSeq + 1) is missing (deleted, or entries reordered)")) }
        guard column(7).elementsEqual(previous) else {
            return .failure(.init("entry \(seq) does not link to entry \(seq - 1) (inserted, deleted or reordered)"))
        }
        start(seq: seq)
        for index in 1...6 { field(column(index)) }
        let hash = hash(previous: previous)
        guard column(8).elementsEqual(hash) else { return .failure(.init("entry \(seq) was edited (its hash does not match)")) }
        return .success(hash)
    }

    static func appendBigEndian(_ value: some FixedWidthInteger, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// What `audit verify` found.
public struct AuditReport: Sendable, Equatable {
    public var entries: Int
    /// The highest sequence number covered by a valid registry signature (0: none).
    public var signedThrough: Int64
    /// Entries after the last signed head: chained, but not yet signed.
    public var unsigned: Int
}

extension AuditDraft {
    /// An entry to append now.
    public init(principal: String, action: String, target: String, outcome: AuditEntry.Outcome, reason: String) {
        self.init(at: Registry.now(), principal: principal, action: action, target: target, outcome: outcome, reason: reason)
    }

    /// The entry as it is stored after `last` (the chain's last entry, nil for the first): its sequence number and hashes.
    func chained(after last: (seq: Int64, hash: Data)?) -> AuditEntryRecord {
        let previous = last.map { Array($0.hash) } ?? Registry.genesisHash
        let entry = AuditEntry(
            seq: (last?.seq ?? 0) + 1,
            at: at,
            principal: principal,
            action: action,
            target: target,
            outcome: outcome,
            reason: reason
        )
        return AuditEntryRecord(
            seq: entry.seq,
            at: at,
            principal: principal,
            action: action,
            target: target,
            outcome: outcome.rawValue,
            reason: reason,
            prevHash: Data(previous),
            entryHash: Data(entry.hash(previous: previous))
        )
    }
}

extension Registry {
    static let genesisHash = [UInt8](repeating: 0, count: 32)

    /// Appends an entry, chained to the last one, in its own transaction; a refusal goes to the counter a server
    /// installed (``countRefusals(with:)``) when there is one.
    func audit(principal: String, action: String, target: String, outcome: AuditEntry.Outcome, reason: String) async throws(CofferRegistryError) {
        if outcome == .refused, let count = refusalCounter.withLock({ $0 }) {
            return count(RefusalKey(principal: principal, action: action, target: target, reason: reason))
        }
        try await writeAudit(principal: principal, action: action, target: target, outcome: outcome, reason: reason)
    }

    private func writeAudit(
        principal: String,
        action: String,
        target: String,
        outcome: AuditEntry.Outcome,
        reason: String
    )
        async throws(CofferRegistryError)
    {
        try await metadata.commit(
            UnitOfWork(audit: [AuditDraft(principal: principal, action: action, target: target, outcome: outcome, reason: reason)])
        )
    }

    /// Entries at or after `since` (RFC 3339), oldest first.
    ///
    /// - Parameter since: an RFC 3339 time (any offset, fractional seconds optional); anything else is refused.
    public func auditEntries(since text: String? = nil) async throws(CofferRegistryError) -> [AuditEntry] {
        // Entries store UTC with milliseconds, so the comparison is between strings of the same shape.
        let since = try text.map { text throws(CofferRegistryError) in Self.timestamp(try Self.parseTime(text, field: "since")) }
        return try await metadata.auditEntries(since: since).map(Self.entry)
    }

    /// The message the registry signs for a chain head.
    static func headMessage(seq: Int64, hash: [UInt8]) -> [UInt8] {
        var message = Array("coffer/v1/audit-head".utf8)
        AuditMessage.appendBigEndian(UInt64(seq), to: &message)
        return message + hash
    }

    /// Signs the current chain head with the registry's current key (which the caller unlocked), and a fresh state
    /// head; with `checkpoint`, also marks the audit head in the ledger (an `audit.head` record), so that truncating
    /// the log below it breaks the ledger's chain too. Returns the entry signed through (0 for an empty log).
    @discardableResult
    public func signAuditHead(
        with key: UnlockedIdentity,
        checkpoint: Bool = true,
        headLifetime: TimeInterval = 3600
    ) async throws(CofferRegistryError)
        -> Int64
    {
        let current = try await identity
        guard key.publicIdentity.keyID == current.keyID else {
            throw .refused("audit heads are signed with the registry's current key (\(Self.identityName).key, \(current.keyID))")
        }
        return try await commitOnLedger { (start, work) async throws(CofferRegistryError) -> Int64 in
            var state = start
            // Entries appended after this read are signed by the next head: a head covers a prefix of the chain.
            let last = try await metadata.lastAuditEntry()
            if let (seq, hash) = last {
                let signature = key.identity.signEd25519(Self.headMessage(seq: seq, hash: Array(hash)))
                work.changes.append(
                    .addAuditHead(AuditHeadRecord(seq: seq, entryHash: hash, signedAt: Self.now(), signature: Data(signature), keyID: current.keyID))
                )
                if checkpoint, state.auditHead?.seq != seq {
                    (state, _) = try append(.auditHead(seq: seq, hash: Digest.hex(Array(hash))), signer: Signer(key), to: state, work: &work)
                }
            }
            let head = StateHead.sign(state: state, audit: last.map { ($0.seq, Array($0.hash)) }, lifetime: headLifetime, key: key)
            work.changes.append(.setMeta(key: "state_head", value: String(decoding: head.jsonBytes, as: UTF8.self)))
            if work.records.isEmpty { work.ledgerEnd = nil }
            return last?.seq ?? 0
        }
    }

    /// What a server calls every few seconds: signs the audit head when entries were appended since the last signed
    /// head, re-signs the state head when the ledger or log grew or half its lifetime passed, and marks the audit head
    /// in the ledger when the last mark is older than `checkpointInterval`. Returns the entry signed through, if any.
    @discardableResult
    public func signAuditHeadIfUnsigned(
        with key: UnlockedIdentity,
        headLifetime: TimeInterval = 3600,
        checkpointInterval: TimeInterval = 300,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> Int64? {
        let latest = try await metadata.lastAuditEntry()?.seq ?? 0
        let signed = try await metadata.lastAuditHeadSeq()
        let head = try await storedStateHead()
        let state = try await ledgerState()
        let stale =
            head.map { head in
                head.ledgerSeq != state.seq || head.auditSeq != latest
                    || (Self.date(head.at).map { now.timeIntervalSince($0) > headLifetime / 2 } ?? true)
            } ?? true
        guard latest > signed || stale else { return nil }
        let markAge = state.auditMarkedAt.flatMap { Self.date($0) }.map { now.timeIntervalSince($0) }
        let checkpoint = latest > (state.auditHead?.seq ?? 0) && (markAge ?? .infinity) >= checkpointInterval
        return try await signAuditHead(with: key, checkpoint: checkpoint, headLifetime: headLifetime)
    }

    /// The audit entry a stored state head names, when the head verifies under the key chain at its ledger record
    /// and names that record's hash (a head that does not is reported: it was forged or edited).
    func signedHeadAuditMark(_ envelope: DSSEEnvelope, state: LedgerState) async throws(CofferRegistryError) -> (Int64, [UInt8])? {
        // The head names one ledger record; its hash is looked up before the (synchronous) check.
        let named = (try? envelope.payloadBytes()).flatMap { try? JSONDecoder().decode(StateHead.self, from: Data($0)) }?.ledgerSeq ?? 0
        let hash = try await storedRecordHash(named)
        let head = try StateHead.verify(
            envelope,
            state: state,
            hashAt: { seq in seq == named ? hash : nil },
            currentKeyAt: { seq in state.keys.last { $0.since <= seq }?.identity },
            remembered: nil,
            now: .distantPast
        )
        guard head.auditSeq > 0, let hash = Digest.bytes(fromHex: head.auditHash) else { return nil }
        return (head.auditSeq, hash)
    }

    /// The hash of the record stored at `seq`, or nil.
    func storedRecordHash(_ seq: Int64) async throws(CofferRegistryError) -> String? {
        guard seq > 0, let row = try await metadata.ledgerRecords(after: seq - 1, limit: 1).first, row.seq == seq else { return nil }
        return try? Self.parse(Array(row.envelope)).hash
    }

    /// An RFC 3339 time as a query gives it (any offset, fractional seconds optional); anything else is refused,
    /// naming the `field`.
    public static func parseTime(_ text: String, field: String) throws(CofferRegistryError) -> Date {
        guard text.utf8.count <= 64, let date = Self.date(text) else {
            throw .invalidInput("\(field): '\(text.prefix(64))' is not an RFC 3339 time such as 2026-11-27T12:00:00Z")
        }
        return date
    }

    static func date(_ text: String) -> Date? {
        // ISO8601DateFormatter ignores what follows a time: "...Z\u{1B}]0;x" parsed (helper-40), and a change request's
        // times are shown to the admin who approves it.
        guard text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 || "TtZz:.+-".utf8.contains($0) }) else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text)
    }
}

extension Registry {
    /// Whether this server is the one (among the replicas over this registry's store) that signs audit heads now.
    public func leadsAuditHeadSigning() async -> Bool { await metadata.leadsAuditHeads() }

    /// Writes a refusal to the audit log now: one decided outside the registry's own checks, or a count of them.
    public func recordRefusal(action: String, target: String, reason: String, principal: String = "-") async throws(CofferRegistryError) {
        try await writeAudit(principal: principal, action: action, target: target, outcome: .refused, reason: reason)
    }

    /// Hands every refusal this registry's checks make to `count` instead of writing an audit entry for each, for the
    /// caller to write them in batches (``recordRefusal(action:target:reason:principal:)``): a server, where an
    /// authenticated client could otherwise make each refused request cost a synchronous write (helper-46: ~150 a
    /// second from one client).
    public func countRefusals(with count: @escaping @Sendable (RefusalKey) -> Void) {
        refusalCounter.withLock { $0 = count }
    }
}
