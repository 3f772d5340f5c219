public import CofferCrypto
public import Foundation
import Synchronization

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

    /// Appends an entry, chained to the last one, in its own transaction.
    func audit(principal: String, action: String, target: String, outcome: AuditEntry.Outcome, reason: String) async throws(CofferRegistryError) {
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
        let lastMark = try await metadata.lastLedgerRecord(kind: "audit.head")
        let markAge = lastMark.flatMap { try? Self.parse(Array($0.envelope)) }.flatMap { Self.date($0.at) }.map { now.timeIntervalSince($0) }
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

    /// Recomputes the chain from the first entry and checks every signed head against the registry's key.
    ///
    /// - Throws: ``CofferRegistryError/tampered(_:)`` naming the first bad entry: an edited entry (its hash no longer
    ///   matches), a deleted, inserted or reordered one (a gap in the sequence or a broken link), or a chain rewritten
    ///   under a signed head.
    public func verifyAudit() async throws(CofferRegistryError) -> AuditReport {
        try await verifyAudit(continuingFrom: nil).report
    }

    /// Verifies the chain as ``verifyAudit()`` does, but from `checkpoint` on when given: the entries appended since
    /// it are walked, and what it vouches for is re-checked in a few reads instead of a walk (docs/WEB.md, "The audit
    /// page's chain check"): the entry it names still holds the hash it had, every signed head after it and the
    /// newest one verify under the registry's key chain and match the entries they cover, and so do the entries the
    /// ledger and the signed state head mark. A consistent rewrite of any verified entry changes the checkpoint's
    /// hash and is caught; an entry edited in place, its hash columns left alone, is caught only by a walk over it
    /// (``verifyAudit()``, or ``reverifyAudit(after:count:)`` a slice at a time).
    ///
    /// ```swift
    /// var last = try await registry.verifyAudit(continuingFrom: nil)          // the whole chain, once
    /// last = try await registry.verifyAudit(continuingFrom: last.checkpoint)  // then only what was appended
    /// ```
    ///
    /// - Parameter checkpoint: where an earlier verification of this registry's chain stopped; nil walks it all.
    /// - Returns: the report (its `entries` counts the whole chain) and where this verification stopped.
    /// - Throws: ``CofferRegistryError/tampered(_:)`` naming the first problem found.
    public func verifyAudit(continuingFrom checkpoint: AuditCheckpoint?) async throws(CofferRegistryError) -> AuditVerification {
        let start = checkpoint?.seq ?? 0
        var stored = try await metadata.auditHeads(after: start)
        // The newest head is checked on every call, even when it covers only entries verified before.
        if start > 0, stored.isEmpty, let newest = try await metadata.lastAuditHead() { stored.append(newest) }
        let heads = stored.map {
            (seq: $0.seq, hash: Array($0.entryHash), signature: Array($0.signature), keyID: $0.keyID, signedAt: $0.signedAt)
        }
        // The state head before the ledger: every record it names was committed with it, so the state read next
        // reaches it. Read the other way round, a head signed in between names a record beyond the state (a false
        // "records withheld" on a server that signs heads every few seconds).
        let stateHead = try await storedStateHeadEnvelope()
        // Only keys of the verified chain count; a retired key's heads count only up to its retirement.
        let state = try await ledgerState()
        for head in heads {
            let message = Self.headMessage(seq: head.seq, hash: head.hash)
            guard let key = state.key(head.keyID ?? state.keys[0].identity.keyID),
                SignatureVerifier.verifyEd25519(signature: head.signature, message: message, publicKey: key.identity.ed25519)
            else {
                throw .tampered("audit head at entry \(head.seq) is not signed by a key of the registry's chain")
            }
            if let retired = key.retiredAt, head.signedAt > retired {
                throw .tampered("audit head at entry \(head.seq) is signed by key \(key.identity.keyID) after it was retired at \(retired)")
            }
        }
        var headsBySeq = Dictionary(heads.map { ($0.seq, $0.hash) }, uniquingKeysWith: { first, _ in first })
        // Entries the ledger marked, and the last one this client saw, must still be there unchanged.
        var marks: [Int64: (hash: [UInt8], what: String)] = [:]
        if let mark = state.auditHead, let hash = Digest.bytes(fromHex: mark.hash) { marks[mark.seq] = (hash, "marked in the ledger") }
        if let seen = memory?.remembered(state.registry)?.audit, let hash = Digest.bytes(fromHex: seen.hash), marks[seen.seq] == nil {
            marks[seen.seq] = (hash, "verified before by this client")
        }
        // The newest state head the registry's key signed names an audit entry too (a server signs one every few
        // seconds): a log cut or rewritten after the ledger's last mark is caught by it.
        if let stateHead, let (seq, hash) = try await signedHeadAuditMark(stateHead, state: state), marks[seq] == nil {
            marks[seq] = (hash, "named by the registry's signed state head")
        }
        if let checkpoint {
            // What the checkpoint vouches for is looked up, not walked: each entry named below must hold its hash.
            var named: [(seq: Int64, hash: [UInt8], what: String)] = [(checkpoint.seq, checkpoint.hash, "verified before")]
            for (seq, mark) in marks where seq <= checkpoint.seq { named.append((seq, mark.hash, mark.what)) }
            for (seq, hash) in headsBySeq where seq <= checkpoint.seq { named.append((seq, hash, "covered by a signed head")) }
            var stored: [Int64: [UInt8]] = [:]
            // By entry, the checkpoint's own claim first where several name the same entry.
            for entry in named.enumerated().sorted(by: { ($0.element.seq, $0.offset) < ($1.element.seq, $1.offset) }).map(\.element) {
                if stored[entry.seq] == nil {
                    guard let row = try await metadata.auditEntries(before: entry.seq + 1, principal: nil, action: nil, limit: 1).first,
                        row.seq == entry.seq
                    else {
                        throw .tampered("audit log: entry \(entry.seq), \(entry.what), is gone (truncated or rolled back)")
                    }
                    stored[entry.seq] = Array(row.entryHash)
                }
                guard stored[entry.seq] == entry.hash else {
                    throw .tampered("audit log: entries up to \(entry.seq) were rewritten (entry \(entry.seq) was \(entry.what))")
                }
                headsBySeq.removeValue(forKey: entry.seq)
                marks.removeValue(forKey: entry.seq)
            }
        }
        var pendingMarks = marks
        var lastSeq = checkpoint?.seq ?? 0
        var lastHash = checkpoint?.hash ?? Self.genesisHash
        var problem: String? = nil
        var previous = lastHash
        var message = AuditMessage()
        try await metadata.forEachAuditEntry(after: start, through: nil) { (seq, column) throws(CofferRegistryError) -> Bool in
            let hash: [UInt8]
            switch message.check(seq, after: lastSeq, previous: previous, column) {
            case .success(let checked): hash = checked
            case .failure(let failure):
                problem = failure.why
                return false
            }
            if let signed = headsBySeq.removeValue(forKey: seq), signed != hash {
                problem = "entries up to \(seq) were rewritten under a signed head"
                return false
            }
            if let mark = pendingMarks.removeValue(forKey: seq), mark.hash != hash {
                problem = "entries up to \(seq) were rewritten (entry \(seq) was \(mark.what))"
                return false
            }
            previous = hash
            lastHash = hash
            lastSeq = seq
            return true
        }
        if let problem { throw .tampered("audit log: \(problem)") }
        if let missing = headsBySeq.keys.min() { throw .tampered("audit log: entry \(missing), covered by a signed head, is gone (truncated)") }
        if let (seq, mark) = pendingMarks.min(by: { $0.key < $1.key }) {
            throw .tampered("audit log: entry \(seq), \(mark.what), is gone (truncated or rolled back)")
        }
        if lastSeq > 0 {
            let mark = LedgerState.AuditMark(seq: lastSeq, hash: Digest.hex(lastHash))
            try await memory?.remember(state.registry) { remembered in
                guard remembered != nil, (remembered!.audit?.seq ?? 0) < mark.seq else { return }
                remembered!.audit = mark
            }
        }
        let signedThrough = max(heads.last?.seq ?? 0, checkpoint?.signedThrough ?? 0)
        return AuditVerification(
            report: AuditReport(entries: Int(lastSeq), signedThrough: signedThrough, unsigned: Int(lastSeq - signedThrough)),
            checkpoint: lastSeq > 0 ? AuditCheckpoint(seq: lastSeq, hash: lastHash, signedThrough: signedThrough) : nil,
            walked: Int(lastSeq - start)
        )
    }

    /// Walks `count` entries of the chain from the one after `seq` again: each entry's hash recomputed from its
    /// fields, each link checked against the stored hash of the entry before. A caller holding an
    /// ``AuditCheckpoint`` re-walks its prefix a slice at a time this way, so an entry edited in place (which
    /// ``verifyAudit(continuingFrom:)`` does not walk) is found within one round.
    ///
    /// - Returns: the last entry walked, or nil when no entry follows `seq` (the round is over).
    /// - Throws: ``CofferRegistryError/tampered(_:)`` naming the first bad entry.
    public func reverifyAudit(after seq: Int64, count: Int) async throws(CofferRegistryError) -> Int64? {
        var previous = Self.genesisHash
        if seq > 0 {
            guard let row = try await metadata.auditEntries(before: seq + 1, principal: nil, action: nil, limit: 1).first, row.seq == seq else {
                throw .tampered("audit log: entry \(seq), verified before, is gone (truncated or rolled back)")
            }
            previous = Array(row.entryHash)
        }
        var lastSeq = seq
        var problem: String? = nil
        var message = AuditMessage()
        try await metadata.forEachAuditEntry(after: seq, through: seq + Int64(max(1, count))) { (seq, column) throws(CofferRegistryError) -> Bool in
            let hash: [UInt8]
            switch message.check(seq, after: lastSeq, previous: previous, column) {
            case .success(let checked): hash = checked
            case .failure(let failure):
                problem = failure.why
                return false
            }
            previous = hash
            lastSeq = seq
            return true
        }
        if let problem { throw .tampered("audit log: \(problem)") }
        return lastSeq > seq ? lastSeq : nil
    }
}

/// Where a verification of the audit chain stopped: the last entry it checked, that entry's hash, and the newest
/// signed head it found valid. Kept by a caller that verifies again later (the server's audit page), it lets the
/// next verification walk only what was appended since.
public struct AuditCheckpoint: Sendable, Equatable {
    public let seq: Int64
    let hash: [UInt8]
    let signedThrough: Int64
}

/// What ``Registry/verifyAudit(continuingFrom:)`` found.
public struct AuditVerification: Sendable, Equatable {
    public var report: AuditReport
    /// Where it stopped (nil: the log is empty).
    public var checkpoint: AuditCheckpoint?
    /// How many entries it walked (the others were vouched for by the checkpoint).
    public var walked: Int
}

extension Registry {
    /// Audits a refusal decided outside the registry's own checks (the HTTP server's authentication).
    /// Whether this server is the one (among the replicas over this registry's store) that signs audit heads now.
    public func leadsAuditHeadSigning() async -> Bool { await metadata.leadsAuditHeads() }

    public func recordRefusal(action: String, target: String, reason: String, principal: String = "-") async throws(CofferRegistryError) {
        try await audit(principal: principal, action: action, target: target, outcome: .refused, reason: reason)
    }
}
