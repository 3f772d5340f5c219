import CofferCrypto
import Foundation

/// Verifying the audit chain: from the first entry, or from where a previous verification stopped.
extension Registry {
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
        if let seen = try memory?.remembered(state.registry)?.audit, let hash = Digest.bytes(fromHex: seen.hash), marks[seen.seq] == nil {
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
