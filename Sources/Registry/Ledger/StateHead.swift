public import CofferCrypto
public import Foundation

/// A registry's signed statement of how far its ledger and audit log reach, and until when that is news: what lets
/// a client tell a fresh answer from a replayed or withheld one (docs/FORMAT.md, "State heads").
public struct StateHead: Sendable, Equatable, Codable {
    public static let payloadType = "application/vnd.coffer.head.v1+json"
    public static let type = "coffer/head/v1"

    public var registry: String
    public var ledgerSeq: Int64
    public var ledgerHash: String
    public var auditSeq: Int64
    public var auditHash: String
    public var at: String
    public var expires: String

    enum CodingKeys: String, CodingKey {
        case registry, at, expires, type
        case ledgerSeq = "ledger_seq"
        case ledgerHash = "ledger_hash"
        case auditSeq = "audit_seq"
        case auditHash = "audit_hash"
    }

    public init(registry: String, ledgerSeq: Int64, ledgerHash: String, auditSeq: Int64, auditHash: String, at: String, expires: String) {
        self.registry = registry
        self.ledgerSeq = ledgerSeq
        self.ledgerHash = ledgerHash
        self.auditSeq = auditSeq
        self.auditHash = auditHash
        self.at = at
        self.expires = expires
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        guard try container.decode(String.self, forKey: .type) == Self.type else {
            throw DecodingError.dataCorruptedError(forKey: .type, in: container, debugDescription: "not a \(Self.type) head")
        }
        registry = try container.decode(String.self, forKey: .registry)
        ledgerSeq = try container.decode(Int64.self, forKey: .ledgerSeq)
        ledgerHash = try container.decode(String.self, forKey: .ledgerHash)
        auditSeq = try container.decode(Int64.self, forKey: .auditSeq)
        auditHash = try container.decode(String.self, forKey: .auditHash)
        at = try container.decode(String.self, forKey: .at)
        expires = try container.decode(String.self, forKey: .expires)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Self.type, forKey: .type)
        try container.encode(registry, forKey: .registry)
        try container.encode(ledgerSeq, forKey: .ledgerSeq)
        try container.encode(ledgerHash, forKey: .ledgerHash)
        try container.encode(auditSeq, forKey: .auditSeq)
        try container.encode(auditHash, forKey: .auditHash)
        try container.encode(at, forKey: .at)
        try container.encode(expires, forKey: .expires)
    }

    /// A head for `state` and the audit log's last entry, signed by `key` (the registry's current key).
    static func sign(
        state: LedgerState,
        audit: (seq: Int64, hash: [UInt8])?,
        lifetime: TimeInterval,
        key: UnlockedIdentity,
        now: Date = Date()
    )
        -> DSSEEnvelope
    {
        let head = StateHead(
            registry: state.registry,
            ledgerSeq: state.seq,
            ledgerHash: state.hash,
            auditSeq: audit?.seq ?? 0,
            auditHash: audit.map { Digest.hex($0.hash) } ?? LedgerRecord.zeroHash,
            at: Registry.timestamp(now),
            expires: Registry.timestamp(now.addingTimeInterval(lifetime))
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return DSSEEnvelope.sign(payload: Array((try? encoder.encode(head)) ?? Data()), payloadType: payloadType, identity: key.identity)
    }

    /// Checks a head a server sent against the client's replayed `state` (which must reach `ledger_seq`) and what it
    /// remembers: signed by the chain's key current at `ledger_seq`, naming the replayed record's hash, not older than
    /// the last head accepted, not expired at `now`.
    public static func verify(
        _ envelope: DSSEEnvelope,
        state: LedgerState,
        hashAt: (Int64) -> String?,
        currentKeyAt: (Int64) -> PublicIdentity?,
        remembered: ClientMemory.Remembered.HeadMark?,
        now: Date = Date()
    ) throws(CofferRegistryError) -> StateHead {
        guard envelope.payloadType == payloadType else { throw .tampered("the state head is not a Coffer state head") }
        let head: StateHead
        do {
            let payload = try envelope.payloadBytes()
            if let reason = AmbiguousJSON.reason(in: payload) { throw CofferRegistryError.tampered("the state head: \(reason)") }
            head = try JSONDecoder().decode(StateHead.self, from: Data(payload))
        } catch let error as CofferRegistryError {
            throw error
        } catch {
            throw .tampered("the state head is malformed")
        }
        guard head.registry == state.registry else { throw .tampered("the state head is another registry's (\(head.registry))") }
        guard let key = currentKeyAt(head.ledgerSeq), (try? envelope.verify(trusting: [key])) != nil else {
            throw .tampered("the state head is not signed by the registry's key at ledger record \(head.ledgerSeq)")
        }
        guard head.ledgerSeq <= state.seq else {
            throw .tampered("the state head names ledger record \(head.ledgerSeq), beyond the \(state.seq) records sent (records withheld)")
        }
        guard hashAt(head.ledgerSeq) == head.ledgerHash else {
            throw .tampered("the state head names ledger record \(head.ledgerSeq) with another hash than the ledger's")
        }
        if let remembered {
            guard head.ledgerSeq >= remembered.ledgerSeq, head.at >= remembered.at else {
                throw .tampered(
                    "the registry's state head (record \(head.ledgerSeq) at \(head.at)) is older than one this client saw (record \(remembered.ledgerSeq) at \(remembered.at)): a rollback or a replayed answer"
                )
            }
        }
        guard Registry.timestamp(now) < head.expires else {
            throw .tampered("the registry's newest signed state expired at \(head.expires): the server may be withholding updates (freeze)")
        }
        return head
    }
}

extension Registry {
    /// The last state head the registry's key signed (a server re-signs it every few seconds while it runs).
    public func stateHead() async throws(CofferRegistryError) -> DSSEEnvelope? { try await storedStateHeadEnvelope() }

    func storedStateHeadEnvelope() async throws(CofferRegistryError) -> DSSEEnvelope? {
        guard let text = try await metadata.meta("state_head") else { return nil }
        return try? DSSEEnvelope(jsonBytes: Array(text.utf8))
    }

    func storedStateHead() async throws(CofferRegistryError) -> StateHead? {
        guard let envelope = try await storedStateHeadEnvelope(), let payload = try? envelope.payloadBytes() else { return nil }
        return try? JSONDecoder().decode(StateHead.self, from: Data(payload))
    }
}
