import Foundation

extension Registry {
    /// Crypto-shreds `model` (every version) or one version of it: destroys every wrapped copy of the data key
    /// (recipients' and sessions'), removes the aliases that point at it, then deletes the blobs. The version's rows
    /// and attestation stay as a tombstone; `show` reports who erased it and when. An admin's act. Returns the
    /// versions erased.
    ///
    /// SQLite runs with `secure_delete` and its write-ahead log is checkpointed and truncated afterwards, so the
    /// deleted key stanzas do not linger in free pages or in the log.
    @discardableResult
    public func erase(model: String, version: String? = nil, by signer: Signer) async throws(CofferRegistryError) -> [String] {
        let target = version.map { "\(model):\($0)" } ?? model
        try await require(signer, .admin, on: model, action: "erase", target: target)
        guard try await metadata.modelExists(model) else { throw .unknownModel(model) }
        let heads: [VersionHead]
        if let version {
            heads = try await metadata.versionHeads(ids: [try await resolve(try ModelReference(name: model, selector: .version(version))).id])
        } else {
            heads = try await metadata.versionHeads(model: model)
        }
        var digests: [String] = []
        let erased = try await commitOnLedger { (start, work) async throws(CofferRegistryError) -> [String] in
            let pending = heads.filter { start.erased[$0.digest] == nil }
            guard !pending.isEmpty else { throw CofferRegistryError.erased("\(target) was already erased") }
            let who = try acting(signer, in: start).principal.name
            var state = start
            for head in pending {
                (state, _) = try append(.erase(model: model, version: head.version, digest: head.digest), signer: signer, to: state, work: &work)
            }
            work.changes.append(.erase(versionIDs: pending.map(\.id), at: Self.now(), by: who))
            let labels = pending.map { "\(model):\($0.version)" }
            work.audit.append(AuditDraft(principal: who, action: "erase", target: target, outcome: .ok, reason: labels.joined(separator: ", ")))
            return labels
        }
        for head in heads {
            guard let rows = try await metadata.storedVersion(id: head.id) else { continue }
            digests += rows.files.map(\.sealedSHA256) + rows.rekeyedFiles.map(\.sealedSHA256)
        }
        // The keys are gone; the blobs go next (a crash in between leaves undecryptable blobs, which gc reclaims).
        let stillHeld = Set(try await referencedBlobs())
        for digest in Set(digests) where !stillHeld.contains(digest) { try? await blobs.remove(digest) }
        return erased
    }
}
