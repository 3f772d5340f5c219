public import CofferCrypto
import Foundation

extension Registry {
    /// The versions a recipient change applies to: one version, or (a bare `NAME`) every version not erased.
    private func recipientTargets(_ reference: ModelReference) async throws(CofferRegistryError) -> [(id: Int64, label: String)] {
        if case .latest = reference.selector {
            guard try await metadata.modelExists(reference.name) else { throw .unknownModel(reference.name) }
            let erased = try await ledgerState().erased
            return try await metadata.versionHeads(model: reference.name).filter { erased[$0.digest] == nil }.map {
                ($0.id, "\(reference.name):\($0.version)")
            }
        }
        let (id, version) = try await resolve(reference)
        return [(id, "\(reference.name):\(version)")]
    }

    /// Wraps the data key of `reference` (every version of a bare model name) for `recipient`, unwrapping it with
    /// `identity`, which must hold it (the publisher or an earlier recipient). Needs admin, or publisher on the model.
    /// Returns the versions shared.
    @discardableResult
    public func addRecipient(
        _ reference: ModelReference,
        recipient: PublicIdentity,
        identity: UnlockedIdentity
    ) async throws(CofferRegistryError) -> [String] {
        let actor = try await principal(for: identity.identity)
        if !(try await holds(.admin, on: reference.name, actor)) {
            try await require(.publisher, on: reference.name, by: actor, action: "recipient.add", target: reference.description)
        }
        try await rememberRecipients([recipient])
        var shared: [String] = []
        for target in try await recipientTargets(reference) {
            let stored = try await loadVersion(target.id)
            try stored.ensureNotErased()
            _ = try await authenticate(stored)
            let dataKey = try await unwrapDataKey(stored, identity: identity)
            let key = WrappedKeyRecord(versionID: target.id, recipientKeyID: recipient.keyID, stanza: Data(dataKey.key.wrap(for: recipient).encoded))
            try await metadata.commit(UnitOfWork(changes: [.putWrappedKeys([key])]))
            shared.append(target.label)
        }
        try await audit(
            principal: actor.name,
            action: "recipient.add",
            target: reference.description,
            outcome: .ok,
            reason: "\(recipient.name) (\(recipient.keyID)): \(shared.joined(separator: ", "))"
        )
        return shared
    }

    /// Deletes `keyID`'s wrapped data keys of `reference` (every version of a bare model name). The recipient
    /// can no longer unwrap through the registry; one who kept a decrypted copy or the data key is not affected.
    /// Returns how many keys were removed.
    @discardableResult
    public func removeRecipient(_ reference: ModelReference, keyID: String, by actor: Principal?) async throws(CofferRegistryError) -> Int {
        if !(try await holds(.admin, on: reference.name, actor)) {
            try await require(.publisher, on: reference.name, by: actor, action: "recipient.remove", target: reference.description)
        }
        guard keyID != (try await identity).keyID else { throw .refused("the registry's own key is never removed (coffer key rotate replaces it)") }
        let ids = Set(try await recipientTargets(reference).map(\.id))
        let holder = try await ledgerState().principal(keyID: keyID)
        let held = try await metadata.wrappedKeys(recipient: keyID).filter { ids.contains($0.versionID) }
        var changes = held.map { MetadataChange.removeWrappedKeys(version: $0.versionID, recipient: keyID) }
        // The sessions the removed recipient opened on these versions hold copies of the same keys: they end too.
        if let holder {
            let now = Self.now()
            for row in try await metadata.sessions() where row.session.principal == holder && ids.contains(row.session.versionID) {
                changes.append(.revokeSession(id: row.session.id, at: now))
            }
        }
        try await metadata.commit(UnitOfWork(changes: changes))
        let removed = held.count
        try await audit(
            principal: actor?.name ?? "-",
            action: "recipient.remove",
            target: reference.description,
            outcome: removed > 0 ? .ok : .failed,
            reason: "\(keyID): \(removed) keys"
        )
        return removed
    }

    /// Whether `principal` holds `role` on `model` (true everywhere in a registry without principals).
    public func holds(_ role: Role, on model: String?, _ principal: Principal?) async throws(CofferRegistryError) -> Bool {
        guard try await checksPrincipals() else { return true }
        guard let principal else { return false }
        return try await grants(of: principal.name).contains { $0.allows(role, on: model, alias: nil) }
    }
}
