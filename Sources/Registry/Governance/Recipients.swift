public import CofferCrypto
import Foundation
import GRDB

extension Registry {
    /// The versions a recipient change applies to: one version, or (a bare `NAME`) every version not erased.
    private func recipientTargets(_ reference: ModelReference) throws(CofferRegistryError) -> [(id: Int64, label: String)] {
        if case .latest = reference.selector {
            guard try modelExists(reference.name) else { throw .unknownModel(reference.name) }
            return try database.read { db in
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT v.id, v.version FROM versions v JOIN models m ON m.id = v.model_id
                        WHERE m.name = ? AND v.id NOT IN (SELECT version_id FROM erasures) ORDER BY v.id
                        """,
                    arguments: [reference.name]
                ).map { ($0["id"], "\(reference.name):\($0["version"] as String)") }
            }
        }
        let (id, version) = try resolve(reference)
        return [(id, "\(reference.name):\(version)")]
    }

    /// Wraps the data key of `reference` (every version of a bare model name) for `recipient`, unwrapping it with
    /// `identity`, which must hold it (the publisher or an earlier recipient). Needs admin, or publisher on the model.
    /// Returns the versions shared.
    @discardableResult
    public func addRecipient(
        _ reference: ModelReference,
        recipient: PublicIdentity,
        identity: borrowing Identity
    ) throws(CofferRegistryError) -> [String] {
        let actor = try principal(for: identity)
        if !(try holds(.admin, on: reference.name, actor)) {
            try require(.publisher, on: reference.name, by: actor, action: "recipient.add", target: reference.description)
        }
        try rememberRecipients([recipient])
        var shared: [String] = []
        for target in try recipientTargets(reference) {
            let stored = try loadVersion(target.id)
            try stored.ensureNotErased()
            _ = try authenticate(stored)
            let dataKey = try unwrapDataKey(stored, identity: identity)
            try database.write { db in
                try db.execute(
                    sql: "INSERT OR REPLACE INTO wrapped_keys (version_id, recipient_key_id, stanza) VALUES (?, ?, ?)",
                    arguments: [target.id, recipient.keyID, Data(dataKey.wrap(for: recipient).encoded)]
                )
            }
            shared.append(target.label)
        }
        try audit(
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
    public func removeRecipient(_ reference: ModelReference, keyID: String, by actor: Principal?) throws(CofferRegistryError) -> Int {
        if !(try holds(.admin, on: reference.name, actor)) {
            try require(.publisher, on: reference.name, by: actor, action: "recipient.remove", target: reference.description)
        }
        guard keyID != (try identity).keyID else { throw .refused("the registry's own key is never removed (coffer key rotate replaces it)") }
        let ids = try recipientTargets(reference).map(\.id)
        let holder = try ledgerState().principal(keyID: keyID)
        let removed = try database.write { db -> Int in
            let list = ids.map(String.init).joined(separator: ",")
            try db.execute(sql: "DELETE FROM wrapped_keys WHERE recipient_key_id = ? AND version_id IN (\(list))", arguments: [keyID])
            let count = db.changesCount
            // The sessions the removed recipient opened on these versions hold copies of the same keys: they end too.
            if let holder {
                try db.execute(
                    sql:
                        "UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, ?) WHERE principal = ? AND version_id IN (\(list))",
                    arguments: [Self.now(), holder]
                )
            }
            return count
        }
        try database.checkpointAndTruncateLog()
        try audit(
            principal: actor?.name ?? "-",
            action: "recipient.remove",
            target: reference.description,
            outcome: removed > 0 ? .ok : .failed,
            reason: "\(keyID): \(removed) keys"
        )
        return removed
    }

    /// Whether `principal` holds `role` on `model` (true everywhere in a registry without principals).
    public func holds(_ role: Role, on model: String?, _ principal: Principal?) throws(CofferRegistryError) -> Bool {
        guard try checksPrincipals() else { return true }
        guard let principal else { return false }
        return try grants(of: principal.name).contains { $0.allows(role, on: model, alias: nil) }
    }
}
