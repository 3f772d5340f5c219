public import CofferCrypto
public import Foundation

/// Where a client reads a served registry's ledger and state head (`GET /v1/ledger`, `GET /v1/ledger/head`).
public protocol LedgerSource {
    /// Up to `limit` record envelopes after record `seq`, in order.
    func records(after seq: Int64, limit: Int) async throws(CofferRegistryError) -> [[UInt8]]
    /// The registry's newest signed state head.
    func stateHead() async throws(CofferRegistryError) -> DSSEEnvelope
}

/// A served registry's ledger as this client replayed it against the root it pinned, with the state head that
/// shows it is current. Nothing the server says about aliases, latest versions, keys or trust is taken on its word:
/// it is all replayed here from signed records (docs/FORMAT.md, "Remote clients").
public struct RemoteLedger: Sendable {
    public let state: LedgerState
    public let head: StateHead
    /// Whether this call pinned the registry's root for the first time (trust on first use: say so).
    public let pinnedNow: Bool

    static let page = 10_000

    /// Replays what is new since this client last looked, checks the head, remembers both.
    ///
    /// - Parameters:
    ///   - location: the registry's URL, as its pin is named.
    ///   - key: a key the client was given for the registry (`--registry-key`): the chain must hold it.
    public static func sync(
        from source: any LedgerSource,
        location: String,
        key: PublicIdentity?,
        memory: ClientMemory?,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> RemoteLedger {
        let pin = memory?.pin(for: location)
        let remembered = try pin.flatMap { root throws(CofferRegistryError) in try memory?.remembered(root) }
        // The head first: every record it names was appended before it was signed, so the records read next reach it.
        let envelope = try await source.stateHead()
        var state = remembered?.state
        if let old = state, old.lacksIndexes { state = try await filledIndexes(old, from: source, location: location) }
        var after = state?.seq ?? 0
        while true {
            let batch = try await source.records(after: after, limit: page)
            for envelope in batch {
                let record = try Registry.parse(envelope)
                if state == nil {
                    guard case .genesis = record.change else {
                        throw .tampered("\(location) sent a ledger that does not start with its genesis record")
                    }
                    if let pin, pin != record.registry {
                        throw .tampered("\(location) presents root key \(record.registry), but this client pinned \(pin): it was replaced")
                    }
                    state = LedgerState(registry: record.registry)
                }
                do { try state!.apply(record) } catch {
                    throw .tampered("\(location): \(error.description) (a server rewriting or reordering the ledger)")
                }
            }
            after += Int64(batch.count)
            if batch.count < page { break }
        }
        guard let state else { throw .tampered("\(location) sent an empty ledger") }
        if let key, state.key(key.keyID) == nil {
            throw .tampered("\(location)'s key chain does not hold the registry key \(key.keyID) you gave (--registry-key)")
        }
        // The head names one record; its hash is found before the (synchronous) check.
        let named = (try? envelope.payloadBytes()).flatMap { try? JSONDecoder().decode(StateHead.self, from: Data($0)) }?.ledgerSeq ?? state.seq
        let namedHash = try? await hash(at: named, in: state, from: source)
        let head = try StateHead.verify(
            envelope,
            state: state,
            hashAt: { seq in seq == named ? namedHash ?? nil : nil },
            currentKeyAt: { seq in state.keys.last { $0.since <= seq }?.identity },
            remembered: remembered?.head,
            now: now
        )
        if pin == nil { try await memory?.setPin(state.registry, for: location) }
        try await memory?.remember(state.registry) { remembered in
            let mark = ClientMemory.Remembered.HeadMark(at: head.at, ledgerSeq: head.ledgerSeq)
            if remembered == nil {
                remembered = .init(state: state, audit: nil, head: mark)
                return
            }
            if state.supersedes(remembered!.state) { remembered!.state = state }
            if remembered!.head.map({ $0.at < mark.at }) ?? true { remembered!.head = mark }
        }
        return RemoteLedger(state: state, head: head, pinnedNow: pin == nil)
    }

    /// The hash of record `seq`, which may lie before the records just replayed: the records after it are fetched
    /// and their links walked back from the verified last one.
    static func hash(at seq: Int64, in state: LedgerState, from source: any LedgerSource) async throws(CofferRegistryError) -> String? {
        if seq == state.seq { return state.hash }
        guard seq >= 0, seq < state.seq, state.seq - seq <= Int64(page) else { return nil }
        let records = try await source.records(after: seq, limit: Int(state.seq - seq)).map { envelope throws(CofferRegistryError) in
            try Registry.parse(envelope)
        }
        guard records.count == Int(state.seq - seq), records.last?.hash == state.hash else { return nil }
        for (earlier, later) in zip(records, records.dropFirst()) where later.prev != earlier.hash { return nil }
        return records.first?.prev
    }

    /// The facts of the `version` record `envelope` (sent by a server with a package, for any read), once it is
    /// confirmed to be the record this client replayed at its place: its links are walked to the next record whose hash
    /// `state` knows (a waypoint, at most 1,023 records on, else the last). Without this, a server holding the registry
    /// key could sign a record that never entered the ledger for another statement the publisher once signed.
    public static func confirmedVersion(
        _ envelope: [UInt8],
        in state: LedgerState,
        from source: any LedgerSource
    ) async throws(CofferRegistryError) -> LedgerChange.VersionFacts {
        let record = try Registry.parse(envelope)
        guard record.registry == state.registry, record.seq >= 1, record.seq <= state.seq, case .version(let facts) = record.change else {
            throw .tampered("the server sent a ledger record that is not a version record of the ledger replayed here")
        }
        guard try await isReplayed(record, in: state, from: source) else {
            throw .tampered(
                "\(facts.label): the server sent a ledger record that is not the one replayed here at \(record.seq)"
            )
        }
        return facts
    }

    /// Whether `record`, numbered within `state`, is the record replayed at its place: its links are walked to the next
    /// record whose hash `state` knows (a waypoint, at most 1,023 records on, else the last). `visit` sees each record
    /// the walk passes, each then known to be the replayed one too.
    static func isReplayed(
        _ record: LedgerRecord,
        in state: LedgerState,
        from source: any LedgerSource,
        visit: (LedgerRecord.Link) -> Void = { _ in }
    ) async throws(CofferRegistryError) -> Bool {
        let interval = LedgerState.waypointInterval
        var end = (record.seq + interval - 1) / interval * interval
        if state.knownHash(at: end) == nil { end = state.seq }
        guard let known = state.knownHash(at: end) else { return false }
        return try await walk(after: record.seq, from: record.hash, to: end, source: source, visit: visit) == known
    }

    /// `state`, remembered before the waypoints or the recorded versions were kept, with them: the chain is read once
    /// from its genesis and must reach `state`'s hash, as verified then, naming each version once.
    static func filledIndexes(
        _ state: LedgerState,
        from source: any LedgerSource,
        location: String
    ) async throws(CofferRegistryError)
        -> LedgerState
    {
        var waypoints: [String] = []
        var versions = RecordedVersions()
        var repeated: String? = nil
        let reached = try await walk(after: 0, from: LedgerRecord.zeroHash, to: state.seq, source: source) { link in
            if link.seq % LedgerState.waypointInterval == 0 { waypoints.append(link.hash) }
            if let version = link.version, !versions.insert(version), repeated == nil { repeated = version }
        }
        guard reached == state.hash else {
            throw .tampered("\(location) sent a ledger that does not reach record \(state.seq) as verified before: rewritten or rolled back")
        }
        if let repeated { throw .tampered("\(location)'s ledger records \(repeated) a second time: a version has one record") }
        return state.withIndexes(waypoints: waypoints, versions: versions)
    }

    /// Fetches records `seq + 1 ... end` in pages and checks that each links to the one before, from `hash` (record
    /// `seq`'s); calls `visit` on each. Returns record `end`'s hash, or nil when a record is missing or a link broken.
    static func walk(
        after seq: Int64,
        from hash: String,
        to end: Int64,
        source: any LedgerSource,
        visit: (LedgerRecord.Link) -> Void = { _ in }
    ) async throws(CofferRegistryError) -> String? {
        var (at, last) = (seq, hash)
        while at < end {
            let limit = Int(min(end - at, Int64(page)))
            let records = try await source.records(after: at, limit: limit).map { envelope throws(CofferRegistryError) in
                do throws(LedgerError) { return try LedgerRecord.link(envelope: envelope) } catch { throw .tampered(error.description) }
            }
            guard records.count == limit else { return nil }
            for record in records {
                at += 1
                guard record.seq == at, record.prev == last else { return nil }
                visit(record)
                last = record.hash
            }
        }
        return last
    }

    /// The `version` record of `model:version` in the ledger `state` replayed (nil when there is none), found by reading
    /// the records from the newest back, each checked to be the one the replay saw (its hash links to the next one's).
    public static func versionRecord(
        _ model: String,
        _ version: String,
        from source: any LedgerSource,
        in state: LedgerState
    )
        async throws(CofferRegistryError) -> LedgerChange.VersionFacts?
    {
        var expected = state.hash
        var before = state.seq
        while before > 0 {
            let start = max(0, before - 100)
            let records = try await source.records(after: start, limit: Int(before - start)).map { envelope throws(CofferRegistryError) in
                try Registry.parse(envelope)
            }
            guard records.count == Int(before - start) else { throw .tampered("the server sent a ledger shorter than it was") }
            for record in records.reversed() {
                guard record.hash == expected else { throw .tampered("the server sent ledger records other than the ones replayed") }
                expected = record.prev
                if case .version(let facts) = record.change, facts.model == model, facts.version == version { return facts }
            }
            before = start
        }
        return nil
    }

    /// The version `reference` names: its name, and the digest the ledger recorded for it when the ledger says
    /// (`NAME` and `NAME@ALIAS`; an explicit version's digest comes with its record in the package).
    public func resolve(_ reference: ModelReference) throws(CofferRegistryError) -> (version: String, digest: String?) {
        switch reference.selector {
        case .version(let version): return (version, nil)
        case .latest:
            guard let latest = state.latest[reference.name] else { throw .unknownModel(reference.name) }
            return (latest.version, latest.digest)
        case .alias(let alias):
            guard let target = state.alias(alias, of: reference.name) else { throw .unknownAlias(reference.description) }
            return (target.version, target.digest)
        }
    }
}

/// A registry's own stored ledger as a ``LedgerSource``: what a server hands out, read in place.
public struct StoredLedger: LedgerSource {
    public let registry: Registry

    public init(registry: Registry) { self.registry = registry }

    public func records(after seq: Int64, limit: Int) async throws(CofferRegistryError) -> [[UInt8]] {
        try await registry.ledgerRecords(after: seq, limit: limit).map(\.envelope)
    }

    public func stateHead() async throws(CofferRegistryError) -> DSSEEnvelope {
        guard let head = try await registry.stateHead() else { throw .unavailable(engine: registry.home, reason: "it has no signed state head yet") }
        return head
    }
}

extension Registry {
    /// Up to `limit` stored records after `seq`, as a server hands them to clients (who verify them themselves).
    public func ledgerRecords(after seq: Int64, limit: Int) async throws(CofferRegistryError) -> [(seq: Int64, envelope: [UInt8])] {
        try await metadata.ledgerRecords(after: seq, limit: limit).map { ($0.seq, Array($0.envelope)) }
    }
}
